"""A small store for trainer tests: 2 NSD + 1 GOD subjects, embeddings, one synthetic set."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import nfstore
from nfstore.augment import AugmentConfig, augment
from nfstore.embeddings import embed_store, register_pool
from nfstore.synth import _signal, synthesize
from nfstore.synth._images import write_images
from nfstore.tiny import write_tiny_encoder
from nftrain.config import build

SUBJECTS = ["nsd/subj01", "nsd/subj02", "god/sub-01"]


@pytest.fixture(scope="session")
def train_store_ro(tmp_path_factory: pytest.TempPathFactory) -> Path:
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


@pytest.fixture
def train_store(train_store_ro: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(train_store_ro, tmp_path / "nf.zarr"))


@pytest.fixture
def small_cfg(tmp_path: Path):
    def make(**kw: object):
        values = dict(subjects=SUBJECTS, adapter_dim=32, width=32, depth=1, batch_size=16,
                      epochs=2, lr=1e-3, output_dir=str(tmp_path / "run"), cache_mb=1,
                      patience=0, val_fraction=0.2)
        values.update(kw)
        return build(values)
    return make
