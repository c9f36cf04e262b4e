"""Reconstruction with a tiny SDXL + IP-Adapter saved in the real layouts (CPU)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import nfstore
from nfrecon.decode import decode_ridge
from nfrecon.pipeline import ReconConfig, choose, embed_images, image_seed, load_image_encoder
from nfrecon.reconstruct import read_reconstructions, reconstruct
from nfrecon.tiny import write_tiny_models
from tests.conftest import tree_state

ROOT = Path(__file__).parents[2]
CFG = ReconConfig(steps=2, size=32, samples=1, batch=3)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def store(train_store_ro: Path, tmp_path: Path) -> Path:
    path = Path(shutil.copytree(train_store_ro, tmp_path / "nf.zarr"))
    decode_ridge(path, "nsd/subj01", "ridge")
    return path


def _encoder(train_store_ro: Path) -> Path:
    return train_store_ro.parent / "enc" / "hf"  # the encoder the store was embedded with


def test_equals_a_direct_diffusers_call(store: Path, models: dict[str, Path]) -> None:
    from dataclasses import replace

    from diffusers import StableDiffusionXLPipeline

    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "r", replace(CFG, batch=1),
                limit=2)
    r = read_reconstructions(store, "r", "nsd/subj01")
    d = nfstore.open_store(store).decoded("ridge", "nsd/subj01")
    rows = np.flatnonzero(d.split.values == "test")[:2]
    assert list(r["stimulus"]) == list(d.stimulus.values[rows])
    pipe = StableDiffusionXLPipeline.from_pretrained(str(models["sdxl"]), local_files_only=True)
    pipe.load_ip_adapter(str(models["ip_adapter"]), subfolder="sdxl_models",
                         weight_name="ip-adapter_sdxl.safetensors", image_encoder_folder=None)
    for k, row in enumerate(rows):
        e = torch.from_numpy(np.asarray(d.values[row], np.float32))[None, None]
        out = pipe(prompt="", ip_adapter_image_embeds=[torch.cat([torch.zeros_like(e), e])],
                   num_inference_steps=2, guidance_scale=5.0, height=32, width=32,
                   output_type="np",
                   generator=torch.Generator().manual_seed(image_seed(0, int(row), 0, 1))).images
        direct = np.clip(np.rint(out[0] * 255), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(r["images"][k, 0]), direct)
    assert r["attrs"]["params"]["steps"] == 2 and r["attrs"]["weights_sha256"]["sdxl"]


def test_batched_equals_one_trial_per_call(store: Path, models: dict[str, Path]) -> None:
    from dataclasses import replace

    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "b", CFG, limit=5)
    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "one",
                replace(CFG, batch=1), limit=5)
    a = np.asarray(read_reconstructions(store, "b", "nsd/subj01")["images"]).astype(int)
    b = np.asarray(read_reconstructions(store, "one", "nsd/subj01")["images"]).astype(int)
    # batched float kernels may round a pixel to the next uint8 level; mixed trials (bug
    # #9813) move pixels by many levels (~0.03 of the range, about 8 levels)
    assert np.abs(a - b).max() <= 1 and np.abs(a - b).mean() < 0.01
    assert len({a[i].tobytes() for i in range(5)}) == 5  # trials are not mixed into one


def test_best_of_n_is_chosen_by_the_decoded_embedding(train_store_ro: Path, store: Path,
                                                      models: dict[str, Path]) -> None:
    from dataclasses import replace

    enc = load_image_encoder(_encoder(train_store_ro), "ip-adapter-sdxl", "cpu")
    cfg = replace(CFG, samples=3)
    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "n3", cfg, limit=3,
                encoder=_encoder(train_store_ro))
    r = read_reconstructions(store, "n3", "nsd/subj01")
    imgs = np.asarray(r["images"])
    d = nfstore.open_store(store).decoded("ridge", "nsd/subj01")
    dec = np.asarray(d.values[d.split.values == "test"][:3], np.float32)
    e = embed_images(enc, imgs.reshape(9, 32, 32, 3)).reshape(3, 3, -1)
    cos = np.einsum("bnd,bd->bn", e / np.linalg.norm(e, axis=2, keepdims=True),
                    dec / np.linalg.norm(dec, axis=1, keepdims=True))
    np.testing.assert_allclose(r["scores"], cos, atol=1e-5)
    np.testing.assert_array_equal(r["chosen"], cos.argmax(1))
    # planted: the decoded vector is sample 2's embedding, the ground truth sample 0's
    planted_decoded, planted_truth = e[:, 2], e[:, 0]
    chosen, _ = choose(imgs, planted_decoded, enc)
    assert (chosen == 2).all()
    by_truth, _ = choose(imgs, planted_truth, enc)
    assert (by_truth == 0).all()  # what choosing against the ground truth would have given


KILL = textwrap.dedent("""
    import json, os, signal, sys
    from nfrecon.reconstruct import ReconConfig, reconstruct

    def on_row(done):
        if done >= 2:
            os.kill(os.getpid(), signal.SIGKILL)
    reconstruct(sys.argv[1], "ridge", sys.argv[2], sys.argv[3], "k",
                ReconConfig(**json.loads(sys.argv[4])), limit=5, on_row=on_row)
""")


def test_resume_after_kill_9_gives_the_same_images(store: Path, models: dict[str, Path]
                                                   ) -> None:
    from dataclasses import replace

    cfg = replace(CFG, batch=1)
    proc = subprocess.run([sys.executable, "-c", KILL, str(store), str(models["sdxl"]),
                           str(models["ip_adapter"]), json.dumps(asdict(cfg))], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (store / "reconstructions/k").exists()  # invisible until complete
    s = reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "k", cfg, limit=5)
    assert s.resumed == 2 and s.images == 3
    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "ref", cfg, limit=5)
    np.testing.assert_array_equal(np.asarray(read_reconstructions(store, "k", "nsd/subj01")
                                             ["images"]),
                                  np.asarray(read_reconstructions(store, "ref", "nsd/subj01")
                                             ["images"]))


def test_errors_are_one_line_and_leave_the_store_unchanged(store: Path, models: dict[str, Path],
                                                           tmp_path: Path) -> None:
    before = tree_state(store)
    bad = tmp_path / "sdxl"
    shutil.copytree(models["sdxl"], bad)
    shutil.rmtree(bad / "vae")
    cases = [
        (dict(sdxl=bad), nfstore.MissingFileError, "missing vae/config.json"),
        (dict(ip_adapter=tmp_path), nfstore.MissingFileError,
         "expected sdxl_models/ip-adapter_sdxl.safetensors or"),
        (dict(decoded="nope"), nfstore.QueryError, "no decoded set 'nope'"),
        (dict(subjects=["god/sub-01"]), nfstore.StoreError,
         "expected subjects with rows in decoded set"),
    ]
    for kw, err, text in cases:
        args = dict(decoded="ridge", sdxl=models["sdxl"], ip_adapter=models["ip_adapter"])
        args.update(kw)
        subjects = args.pop("subjects", None)
        with pytest.raises(err) as info:
            reconstruct(store, args["decoded"], args["sdxl"], args["ip_adapter"], "x", CFG,
                        subjects=subjects)
        assert text in str(info.value) and "\n" not in str(info.value)
    assert tree_state(store) == before


def test_cli_and_export(store: Path, models: dict[str, Path], tmp_path: Path) -> None:
    from click.testing import CliRunner
    from nf.main import _register, cli

    _register()
    run = CliRunner().invoke
    res = run(cli, ["reconstruct", str(store), "--decoded", "ridge", "--sdxl",
                    str(models["sdxl"]), "--ip-adapter", str(models["ip_adapter"]), "--steps",
                    "2", "--size", "32", "--limit", "2", "--no-progress", "--from-embeddings"])
    assert res.exit_code == 0, res.output
    assert "reconstructed 2 images into /reconstructions/ridge-oracle" in res.output
    r = read_reconstructions(store, "ridge-oracle", "nsd/subj01")
    assert r["attrs"]["source"] == "true embeddings (oracle)"
    res = run(cli, ["export-images", str(store), str(tmp_path / "png"), "--reconstructions",
                    "ridge-oracle"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "png/nsd_subj01_grid.png").is_file()
    assert len(list((tmp_path / "png/nsd_subj01").glob("*.png"))) == 2
    res = run(cli, ["reconstruct", str(store), "--decoded", "ridge", "--sdxl", str(tmp_path),
                    "--ip-adapter", str(models["ip_adapter"])])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "expected a diffusers SDXL folder" in res.output


def test_nf_synth_models_writes_the_real_layouts(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from nf.main import _register, cli

    from nfrecon.pipeline import ReconConfig, load_pipeline, locate_ip_adapter, locate_sdxl

    _register()
    res = CliRunner().invoke(cli, ["synth", "models", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert locate_sdxl(tmp_path / "m/sdxl") == tmp_path / "m/sdxl"
    assert locate_ip_adapter(tmp_path / "m/ip-adapter").name == "ip-adapter_sdxl.safetensors"
    assert (tmp_path / "m/encoder/hf/config.json").is_file()
    pipe = load_pipeline(tmp_path / "m/sdxl", tmp_path / "m/ip-adapter", ReconConfig())
    assert pipe.unet.config.encoder_hid_dim_type == "ip_image_proj"
