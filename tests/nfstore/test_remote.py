"""A store on object storage (moto's S3 server on 127.0.0.1): every read path gives what the
local folder gives -- queries, embeddings, decoded sets, pixels from the pixel cache,
validation with its chunk check, the trainer's loader, evaluation, metrics, nf serve and the
CLI with --storage-option or environment variables."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import nfstore
from nfstore.errors import MissingFileError, OptionError, SchemaError
from nfstore.pixels import cache_pixels
from nfstore.schema import validate_store


def _upload(s3: dict[str, Any], local: Path, name: str) -> str:
    s3["fs"].put(str(local), f"{s3['bucket']}/{name}", recursive=True)
    return f"s3://{s3['bucket']}/{name}"


@pytest.fixture(scope="module")
def pair(served: dict[str, Path], s3: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
         ) -> dict[str, Any]:
    """The served store with a pixel cache of every table, locally and uploaded."""
    local = Path(shutil.copytree(served["store"], tmp_path_factory.mktemp("remote") / "nf.zarr"))
    summary = cache_pixels(local, ["nsd", "novel"])
    st = nfstore.open_store(local)
    with_image = {t: int((st.stimuli(t)["file"].values != "").sum()) for t in ("nsd", "novel")}
    assert summary.tables == with_image and with_image["novel"] == 60
    assert cache_pixels(local, ["nsd"]).tables == {"nsd": 0}  # a rerun adds nothing
    cache_pixels(local, ["god"], pixel_size=32)
    url = _upload(s3, local, "nf.zarr")
    return {"local": local, "url": url, "remote": nfstore.open_store(url,
                                                                     storage_options=s3["options"]),
            **served}


def test_queries_embeddings_and_decoded_sets_equal_the_local_folder(pair: dict[str, Any]
                                                                     ) -> None:
    loc, rem = nfstore.open_store(pair["local"]), pair["remote"]
    assert rem.remote and not loc.remote
    assert rem.subjects() == loc.subjects() == ["nsd/subj01", "nsd/subj02", "god/sub-01"]
    assert rem.rois("nsd/subj01") == loc.rois("nsd/subj01")
    for kw in ({}, {"roi": "V1", "split": "test", "average_repeats": True},
               {"synthetic": True, "split": "train"}):
        a, b = loc.betas("nsd/subj01", **kw), rem.betas("nsd/subj01", **kw)
        np.testing.assert_array_equal(a.values, b.values)
        assert list(a.stimulus.values) == list(b.stimulus.values)
    x = rem.betas("god/sub-01", split="test", average_repeats=True)
    np.testing.assert_array_equal(rem.embeddings("ip-adapter-sdxl", stimuli=x.stimulus).values,
                                  loc.embeddings("ip-adapter-sdxl", stimuli=x.stimulus).values)
    np.testing.assert_array_equal(rem.decoded("ridge", "nsd/subj01").values,
                                  loc.decoded("ridge", "nsd/subj01").values)
    assert rem.reconstruction_sets() == loc.reconstruction_sets()
    assert rem.incomplete() == {} and rem.info() == loc.info()


def test_images_come_from_the_pixel_cache(pair: dict[str, Any]) -> None:
    loc, rem = nfstore.open_store(pair["local"]), pair["remote"]
    ids = loc.betas("nsd/subj02", split="test").stimulus.values[::-3]  # repeats, any order
    raw = loc.stimuli("nsd")
    np.testing.assert_array_equal(rem.images(ids).values, loc.images(ids).values)
    # the cache holds exactly the raw pixels (read here from the raw HDF5 brick)
    from nfstore.stimuli import read_brick_rows

    pos = [raw["stimulus"].values.tolist().index(s) for s in ids]
    brick = loc.raw_root("nsd") / raw["file"].values[pos[0]]
    np.testing.assert_array_equal(rem.images(ids).values,
                                  read_brick_rows(raw["index"].values[pos], str(brick),
                                                  "imgBrick"))
    god = rem.betas("god/sub-01", split="test").stimulus.values[:3]
    assert rem.images(god).shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(rem.images(god).values,
                                  loc.images(god, size=(32, 32)).values)
    pool = [f"novel/{i}" for i in (5, 0)]
    np.testing.assert_array_equal(rem.images(pool).values, loc.images(pool).values)


def test_without_a_pixel_cache_the_error_names_the_flag(pair: dict[str, Any], s3: dict,
                                                        tmp_path: Path) -> None:
    store = Path(shutil.copytree(pair["store"], tmp_path / "nf.zarr"))
    g = zarr.open_group(str(store / "stimuli/god"), mode="r+")
    g.attrs["raw_root"] = str(tmp_path / "moved-away")
    rem = nfstore.open_store(_upload(s3, store, "nocache.zarr"), storage_options=s3["options"])
    sid = rem.betas("god/sub-01", split="test").stimulus.values[:1]
    with pytest.raises(MissingFileError, match="--cache-pixels"):
        rem.images(sid, size=(32, 32)).values


def test_a_cache_survives_a_reingest_and_is_not_used_for_other_files(pair: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    from nfstore.readers.base import StimulusTable
    from nfstore.stimuli import commit_stimulus_table

    store = Path(shutil.copytree(pair["local"], tmp_path / "nf.zarr"))
    st = nfstore.open_store(store)
    tab = st.stimuli("novel")
    ids = list(tab["stimulus"].values)
    files = list(tab["file"].values)
    files[0], files[1] = files[1], files[0]  # two rows now come from other files
    commit_stimulus_table(store, StimulusTable("novel", ids, files, list(tab["index"].values),
                                               root=st.raw_root("novel")))
    st = nfstore.open_store(store)
    assert st.has("stimuli/novel/pixels")  # moved with the rewritten table
    np.testing.assert_array_equal(st.images(ids[:2]).values,
                                  pair["remote"].images(ids[1::-1]).values)


def test_validate_on_a_url_and_its_chunk_check(pair: dict[str, Any], s3: dict) -> None:
    assert validate_store(pair["remote"]) == []
    url = _upload(s3, pair["local"], "holes.zarr")
    chunks = s3["fs"].find(f"{url[5:]}/nsd/subj01/betas/c")
    s3["fs"].rm(chunks[0])
    problems = validate_store(nfstore.open_store(url, storage_options=s3["options"]))
    assert any(f"expected {len(chunks)} chunks; found {len(chunks) - 1}" in p for p in problems)


def test_training_and_evaluation_read_the_url(pair: dict[str, Any], tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    from nftrain.config import build
    from nftrain.evaluate import evaluate
    from nftrain.train import train

    weights = {}
    for name, where in (("local", pair["local"]), ("remote", pair["remote"])):
        cfg = build(dict(subjects=["nsd/subj01", "god/sub-01"], adapter_dim=16, width=16,
                         depth=1, batch_size=16, epochs=2, cache_mb=1, ridge_init=False,
                         output_dir=str(tmp_path / name)))
        run = train(where, cfg)
        weights[name] = load_file(str(run.output_dir / "last" / "model.safetensors"))
    assert weights["local"].keys() == weights["remote"].keys()
    for k in weights["local"]:
        np.testing.assert_array_equal(weights["local"][k], weights["remote"][k])
    ckpt = tmp_path / "local" / "best"
    a = evaluate(pair["local"], ckpt)
    b = evaluate(pair["remote"], ckpt)
    assert a["subjects"] == b["subjects"]


def test_metrics_read_the_url_and_store_nothing(pair: dict[str, Any], tmp_path: Path) -> None:
    from nfrecon.report import metrics_report
    from nfrecon.tiny import write_metric_weights

    w = write_metric_weights(tmp_path / "metrics")
    rem = metrics_report(pair["remote"], "recon", w["weights"], w["clip"], subjects=["nsd/subj01"])
    loc = metrics_report(pair["local"], "recon", w["weights"], w["clip"], subjects=["nsd/subj01"])
    for m in ("pixcorr", "ssim", "alexnet2", "clip"):
        assert rem["subjects"]["nsd/subj01"][m]["mean"] == pytest.approx(
            loc["subjects"]["nsd/subj01"][m]["mean"], abs=1e-9)
    assert rem["per_image_values"].startswith("not stored")
    assert not pair["remote"].has("reconstructions/recon/nsd/subj01/metrics")


def test_nf_serve_pages_and_images_from_the_url(pair: dict[str, Any]) -> None:
    from fastapi.testclient import TestClient

    from nfserve.app import ServeConfig, create_app

    remote = TestClient(create_app(ServeConfig(pair["remote"])), base_url="http://127.0.0.1")
    local = TestClient(create_app(ServeConfig(pair["local"])), base_url="http://127.0.0.1")
    over = remote.get("/api/overview").json()
    assert [s["key"] if isinstance(s, dict) else s for s in over["subjects"]] == [
        s["key"] if isinstance(s, dict) else s for s in local.get("/api/overview").json()[
            "subjects"]]
    assert remote.get("/gallery/recon").status_code == 200
    for route in ("/image/recon/recon/nsd/subj01/0/0", "/image/stimulus?id=nsd/00003"):
        r = remote.get(route)
        assert r.status_code == 200 and r.content == local.get(route).content
    assert remote.get("/subject/nsd/subj01").status_code == 200
    assert remote.get("/image/recon/recon/nsd/subj01/999/0").status_code == 404


def test_cli_storage_options_and_environment(pair: dict[str, Any], s3: dict) -> None:
    opts = [f"--storage-option=endpoint_url={s3['endpoint']}", "--storage-option=key=testing",
            "--storage-option=secret=testing",
            "--storage-option=client_kwargs.region_name=us-east-1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    nf = [sys.executable, "-m", "nf"]

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*nf, *args], capture_output=True, text=True,
                              env={**env, **extra}, timeout=120)

    local = run("info", str(pair["local"]))
    with_opts = run("info", pair["url"], *opts)
    assert with_opts.returncode == 0, with_opts.stderr
    assert with_opts.stdout.split("\n", 1)[1] == local.stdout.split("\n", 1)[1]
    by_env = run("validate", pair["url"], FSSPEC_S3_ENDPOINT_URL=s3["endpoint"],
                 AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                 AWS_DEFAULT_REGION="us-east-1")
    assert by_env.returncode == 0 and "valid" in by_env.stdout.lower(), by_env.stderr
    bad = run("info", pair["url"], "--storage-option", "endpoint_url")
    assert bad.returncode == 1 and "expected KEY=VALUE" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = run("info", f"s3://{s3['bucket']}/nothing.zarr", *opts)
    assert missing.returncode == 1 and "expected a NeuroFusion store" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    local_opt = run("info", str(pair["local"]), "--storage-option", "anon=true")
    assert local_opt.returncode == 1 and "not a URL" in local_opt.stderr


def test_errors_at_the_boundary(pair: dict[str, Any], s3: dict) -> None:
    with pytest.raises(SchemaError, match="expected a NeuroFusion store"):
        nfstore.open_store(f"s3://{s3['bucket']}/none.zarr", storage_options=s3["options"])
    from nfserve.server import run

    with pytest.raises(OptionError, match=r"allow_jobs: .* is a URL"):
        run(pair["remote"], "127.0.0.1", 0, True, None, None, [], None, 256, echo=lambda _: None)
    with pytest.raises(OptionError, match="holds a plain copy of a store, which is read-only"):
        cache_pixels(pair["url"], storage_options=s3["options"])


def test_cli_cache_pixels_flags(pair: dict[str, Any], tmp_path: Path) -> None:
    from click.testing import CliRunner
    from nf.main import _register, cli

    _register()
    from PIL import Image

    from nfstore.embeddings import register_pool

    store = Path(shutil.copytree(pair["store"], tmp_path / "nf.zarr"))
    (tmp_path / "mixed").mkdir()
    for n, side in enumerate((20, 30)):  # a pool of images of two sizes
        Image.new("RGB", (side, side), (n * 90, 10, 10)).save(tmp_path / "mixed" / f"{n}.png")
    register_pool(store, tmp_path / "mixed", "mixed")
    r = CliRunner().invoke(cli, ["embed", str(store), "--cache-pixels", "--stimuli", "mixed"])
    assert r.exit_code == 1 and "--pixel-size: the mixed images differ in size" in r.output
    r = CliRunner().invoke(cli, ["embed", str(store), "--cache-pixels", "--pixel-size", "16",
                                 "--stimuli", "god", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "cached pixels of" in r.output and "god:" in r.output
    g = zarr.open_group(str(store / "stimuli/god/pixels"), mode="r")
    assert tuple(g.attrs["size"]) == (16, 16) and g["images"].chunks == (1, 16, 16, 3)
    r = CliRunner().invoke(cli, ["embed", str(store), "--cache-pixels", "--pixel-size", "24",
                                 "--stimuli", "god", "--no-progress"])
    assert r.exit_code == 1 and "holds 16x16 pixels; asked for 24x24" in r.output
