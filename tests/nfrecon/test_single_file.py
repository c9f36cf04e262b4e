"""SDXL from one original-layout ``.safetensors`` file (`nf reconstruct --sdxl FILE`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from nfrecon.decode import decode_ridge
from nfrecon.reconstruct import ReconConfig, read_reconstructions, reconstruct
from nfrecon.tiny import write_tiny_models

CFG = ReconConfig(steps=2, size=32, samples=1, batch=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("models")
    paths = write_tiny_models(out)
    cfg = out / "config-only"  # the configs and tokenizers, no weights: these come from the file
    for f in paths["sdxl"].rglob("*"):
        if f.is_file() and not f.name.endswith(".safetensors"):
            (cfg / f.relative_to(paths["sdxl"])).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, cfg / f.relative_to(paths["sdxl"]))
    return {**paths, "config": cfg}


def test_the_file_has_the_original_key_layout(models: dict[str, Path]) -> None:
    with safe_open(str(models["sdxl_single"]), "pt") as f:
        keys = set(f.keys())
        q = f.get_tensor("first_stage_model.encoder.mid.attn_1.q.weight")
        qkv = f.get_tensor("conditioner.embedders.1.model.transformer.resblocks.0.attn."
                           "in_proj_weight")
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert ("conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight"
            in keys)
    ldm = [k for k in keys if not k.startswith("conditioner.embedders.0.")]  # HF names there
    assert not any(w in k for k in ldm for w in ("down_blocks", "resnets", "q_proj", "group_norm"))
    assert q.ndim == 4 and qkv.shape == (3 * 48, 48)


def test_components_equal_the_folders(models: dict[str, Path]) -> None:
    from diffusers import StableDiffusionXLPipeline

    a = StableDiffusionXLPipeline.from_pretrained(str(models["sdxl"]), local_files_only=True)
    b = StableDiffusionXLPipeline.from_single_file(str(models["sdxl_single"]),
                                                   config=str(models["config"]),
                                                   local_files_only=True)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_reconstruct_from_the_file_equals_the_folder(train_store_ro: Path, tmp_path: Path,
                                                     models: dict[str, Path]) -> None:
    from click.testing import CliRunner
    from nf.main import _register, cli

    store = Path(shutil.copytree(train_store_ro, tmp_path / "nf.zarr"))
    decode_ridge(store, "nsd/subj01", "ridge")
    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "folder", CFG, limit=3)
    _register()
    res = CliRunner().invoke(cli, [
        "reconstruct", str(store), "--decoded", "ridge", "--name", "file", "--sdxl",
        str(models["sdxl_single"]), "--sdxl-config", str(models["config"]), "--ip-adapter",
        str(models["ip_adapter"]), "--steps", "2", "--size", "32", "--batch", "2", "--limit",
        "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    a = read_reconstructions(store, "folder", "nsd/subj01")
    b = read_reconstructions(store, "file", "nsd/subj01")
    np.testing.assert_array_equal(np.asarray(a["images"]), np.asarray(b["images"]))
    assert b["attrs"]["weights_sha256"]["sdxl"] != a["attrs"]["weights_sha256"]["sdxl"]

    # without the config folder: one line naming the option, nothing written
    res = CliRunner().invoke(cli, [
        "reconstruct", str(store), "--decoded", "ridge", "--name", "x", "--sdxl",
        str(models["sdxl_single"]), "--ip-adapter", str(models["ip_adapter"])])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.startswith("Error: --sdxl-config:") and res.output.count("\n") == 1
    broken = tmp_path / "broken"
    shutil.copytree(models["config"], broken)
    shutil.rmtree(broken / "tokenizer_2")
    res = CliRunner().invoke(cli, [
        "reconstruct", str(store), "--decoded", "ridge", "--name", "x", "--sdxl",
        str(models["sdxl_single"]), "--sdxl-config", str(broken), "--ip-adapter",
        str(models["ip_adapter"])])
    assert res.exit_code == 1 and "missing tokenizer_2" in res.output
    assert not (store / "reconstructions" / "x").exists()


def test_vae_baseline_reads_the_file(models: dict[str, Path]) -> None:
    from nfrecon.report import vae_roundtrip

    img = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    a = vae_roundtrip(models["sdxl"], "cpu")(img)
    b = vae_roundtrip(models["sdxl_single"], "cpu", models["config"])(img)
    np.testing.assert_array_equal(a, b)
    assert a.shape == img.shape and not np.array_equal(a, img)
