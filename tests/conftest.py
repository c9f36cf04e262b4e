"""Shared fixtures: a small synthetic NSD tree and its store (built once per session)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nfstore.synth import synthesize

SMALL = dict(subjects=(1, 2), sessions=3, trials_per_session=40, runs_per_session=3,
             images_per_subject=60, shared=10, image_size=32, grid=(14, 16, 14), seed=3)


@pytest.fixture(scope="session")
def nsd_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic NSD tree (2 subjects x 3 sessions x 40 trials). Read-only for tests."""
    out = tmp_path_factory.mktemp("raw") / "nsd"
    synthesize("nsd", out, **SMALL)
    return out


@pytest.fixture(scope="session")
def nsd_store_ro(nsd_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding both synthetic subjects. Read-only for tests."""
    import nfstore

    path = tmp_path_factory.mktemp("store") / "nf.zarr"
    nfstore.ingest("nsd", nsd_raw, path)
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def nsd_store(nsd_store_ro: Path, tmp_path: Path) -> Path:
    """A private copy of the store, free to modify."""
    return _copy(nsd_store_ro, tmp_path / "nf.zarr")


@pytest.fixture
def raw_copy(nsd_raw: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic NSD tree, free to damage."""
    return _copy(nsd_raw, tmp_path / "nsd")


def tree_state(path: Path) -> dict[str, tuple[int, int]]:
    """Relative file path -> (size, mtime_ns) of every file under ``path``."""
    if not path.exists():
        return {}
    return {p.relative_to(path).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def bold_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic BOLD5000 tree (CSI1: 3 sessions, CSI4: 2). Read-only for tests."""
    out = tmp_path_factory.mktemp("raw") / "bold5000"
    synthesize("bold5000", out, seed=5)
    return out


@pytest.fixture(scope="session")
def god_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic GOD tree (Subject1, Subject2). Read-only for tests."""
    out = tmp_path_factory.mktemp("raw") / "god"
    synthesize("god", out, seed=7)
    return out


@pytest.fixture
def bold_copy(bold_raw: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic BOLD5000 tree, free to damage."""
    return _copy(bold_raw, tmp_path / "bold5000")


@pytest.fixture
def god_copy(god_raw: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic GOD tree, free to damage."""
    return _copy(god_raw, tmp_path / "god")


def assert_fails_cleanly(dataset: str, raw: Path, store: Path, message: str,
                         **kwargs: object) -> None:
    """Ingest must raise a one-line NFError containing ``message`` and leave ``store`` as it was."""
    import nfstore

    before = tree_state(store)
    with pytest.raises(nfstore.NFError) as err:
        nfstore.ingest(dataset, raw, store, **kwargs)  # type: ignore[arg-type]
    text = str(err.value)
    assert message in text and "\n" not in text, text
    assert str(raw) in text, text  # names the file with its path
    assert tree_state(store) == before


@pytest.fixture(scope="session")
def train_store_ro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 NSD + 1 GOD subjects, embedded with a tiny encoder, a pool and one synthetic set."""
    import nfstore
    from nfstore.augment import AugmentConfig, augment
    from nfstore.embeddings import embed_store, register_pool
    from nfstore.synth import _signal
    from nfstore.synth.images import write_images
    from nfstore.tiny import write_tiny_encoder

    base = tmp_path_factory.mktemp("trainstore")
    store = base / "nf.zarr"
    synthesize("nsd", base / "nsd", subjects=(1, 2), sessions=2, trials_per_session=60,
               images_per_subject=80, shared=10, image_size=32, grid=(12, 14, 12), seed=1)
    synthesize("god", base / "god", subjects=(1,), seed=2)
    nfstore.ingest("nsd", base / "nsd", store)
    nfstore.ingest("god", base / "god", store)
    rng = np.random.default_rng(0)
    write_images([base / "pool" / f"{i}.png" for i in range(60)],
                 _signal.render_images(_signal.latents(60, rng), 32, rng))
    register_pool(store, base / "pool", "novel")
    embed_store(store, "ip-adapter-sdxl", write_tiny_encoder(base / "enc")["hf"], workers=0,
                batch_size=128)
    augment(store, "nsd/subj01", AugmentConfig(pool="novel", n=40, alpha=100.0, name="syn"))
    return store


@pytest.fixture(scope="session")
def world_ro(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """NSD, BOLD5000 and GOD trees sharing pictures as the real data do, an ImageNet pool
    repeating GOD test images, and one store of all of it (embedded with a tiny encoder)."""
    import nfstore
    from nfstore.embeddings import embed_store, register_pool
    from nfstore.tiny import write_tiny_encoder

    base = tmp_path_factory.mktemp("world")
    synthesize("nsd", base / "nsd", subjects=(1,), sessions=2, trials_per_session=40,
               images_per_subject=60, shared=10, image_size=32, grid=(12, 14, 12), seed=1)
    synthesize("bold5000", base / "bold5000", subjects=(1,), seed=5)
    synthesize("god", base / "god", subjects=(1,), seed=2)
    synthesize("pool", base / "pool", god=str(base / "god"), n=40)
    store = base / "nf.zarr"
    for dataset in ("nsd", "bold5000", "god"):
        nfstore.ingest(dataset, base / dataset, store)
    register_pool(store, base / "pool", "imnet")
    enc = write_tiny_encoder(base / "enc")["hf"]
    embed_store(store, "ip-adapter-sdxl", enc, workers=0, batch_size=128)
    return {"base": base, "store": store, "encoder": Path(enc)}


@pytest.fixture
def world(world_ro: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """A private copy of the world store, free to modify."""
    return {**world_ro, "store": _copy(world_ro["store"], tmp_path / "nf.zarr")}


@pytest.fixture(scope="session")
def served(train_store_ro: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The train store with decoded, blurry and reconstruction sets, a checkpoint and the tiny
    models (nf serve, remote-store tests)."""
    from nfrecon.decode import decode_ridge
    from nfrecon.reconstruct import ReconConfig, reconstruct
    from nfrecon.tiny import write_tiny_models
    from nfstore.lowlevel import embed_pixels
    from nftrain.config import build
    from nftrain.train import train

    base = tmp_path_factory.mktemp("served")
    store = Path(shutil.copytree(train_store_ro, base / "nf.zarr"))
    models = write_tiny_models(base / "models")
    decode_ridge(store, "nsd/subj01", "ridge")
    embed_pixels(store, size=16)
    decode_ridge(store, "nsd/subj01", "blurry", embedding="pixels", rescale=True, image_size=32)
    cfg = ReconConfig(steps=2, size=32, batch=4)
    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "recon", cfg)
    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "recon-i2i", cfg,
                init="blurry")
    ckpt = train(store, build(dict(subjects=["nsd/subj01"], adapter_dim=32, width=32, depth=1,
                                   batch_size=16, epochs=1, output_dir=str(base / "run"))))
    return {"store": store, "checkpoint": ckpt.output_dir / "best", **models}


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, Any]]:
    """An S3-compatible server (moto's) on 127.0.0.1, stopped after the session; yields the
    endpoint, a bucket, fsspec storage options and an s3fs filesystem."""
    import s3fs

    from nfstore.testing import local_s3

    with local_s3("nf-test") as server:
        yield {**server, "fs": s3fs.S3FileSystem(**server["options"])}
