"""The low-level stage in use: SDXL-VAE latents, img2img from ``--init``, the pixel blend."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import nfstore
from nfrecon.decode import decode_ridge
from nfrecon.pipeline import ReconConfig, image_seed
from nfrecon.reconstruct import read_reconstructions, reconstruct
from nfrecon.report import chosen_images
from nfrecon.tiny import write_tiny_models
from nfstore.lowlevel import embed_pixels, embed_vae_latents

CFG = ReconConfig(steps=4, size=32, samples=1, batch=2, strength=0.5)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def store(train_store_ro: Path, tmp_path: Path, models: dict[str, Path]) -> Path:
    path = Path(shutil.copytree(train_store_ro, tmp_path / "nf.zarr"))
    embed_pixels(path, size=16)
    embed_vae_latents(path, models["sdxl"], latent_size=16)  # tiny VAE: 32 px -> 4x16x16
    decode_ridge(path, "nsd/subj01", "ridge")
    decode_ridge(path, "nsd/subj01", "blurry", embedding="pixels", rescale=True, image_size=32)
    return path


def _vae(models: dict[str, Path]):  # noqa: ANN202
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(models["sdxl"]), subfolder="vae").eval()


def _direct_img2img(models: dict[str, Path], image: torch.Tensor, emb: np.ndarray, seed: int
                    ) -> np.ndarray:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(str(models["sdxl"]),
                                                            local_files_only=True)
    pipe.load_ip_adapter(str(models["ip_adapter"]), subfolder="sdxl_models",
                         weight_name="ip-adapter_sdxl.safetensors", image_encoder_folder=None)
    e = torch.from_numpy(np.asarray(emb, np.float32))[None, None]
    out = pipe(prompt="", image=image, strength=0.5, num_inference_steps=4, guidance_scale=5.0,
               ip_adapter_image_embeds=[torch.cat([torch.zeros_like(e), e])], output_type="np",
               generator=torch.Generator().manual_seed(seed)).images
    return np.clip(np.rint(out[0] * 255), 0, 255).astype(np.uint8)


def test_latent_cache_equals_the_vae_called_directly(store: Path, models: dict[str, Path]
                                                     ) -> None:
    st = nfstore.open_store(store)
    e = st.embeddings("sdxl-vae", stimuli=["nsd/00003"])
    vae = _vae(models)
    px = np.asarray(st.images(["nsd/00003"], size=(32, 32)).values)
    x = torch.from_numpy(px).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        want = vae.encode(x).latent_dist.mean.numpy().reshape(1, -1)
    np.testing.assert_allclose(e.values, want, rtol=0, atol=1e-5)  # batch rounding
    assert e.attrs["latent_shape"] == [4, 16, 16] and e.attrs["image_size"] == 32
    assert e.attrs["scaling_factor"] == vae.config.scaling_factor != 1  # raw latents stored
    from nfstore.schema import validate_store

    assert validate_store(st) == []


def test_img2img_from_the_blurry_set_equals_a_direct_diffusers_call(
        store: Path, models: dict[str, Path]) -> None:
    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "i2i", CFG, limit=2,
                init="blurry")
    r = read_reconstructions(store, "i2i", "nsd/subj01")
    blurry, stim = chosen_images(store, "blurry", "nsd/subj01")
    d = nfstore.open_store(store).decoded("ridge", "nsd/subj01")
    rows = np.flatnonzero(d.split.values == "test")[:2]
    assert list(r["stimulus"]) == list(stim[:2]) == list(d.stimulus.values[rows])
    for k, row in enumerate(rows):
        image = torch.from_numpy(blurry[k]).permute(2, 0, 1)[None].float() / 255
        direct = _direct_img2img(models, image, d.values[row], image_seed(0, int(row), 0, 1))
        np.testing.assert_array_equal(np.asarray(r["images"][k, 0]), direct)
    assert r["attrs"]["init"] == "blurry" and r["attrs"]["strength"] == 0.5
    plain = reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "plain", CFG,
                        limit=2)
    assert plain.images == 2
    assert not np.array_equal(np.asarray(read_reconstructions(store, "plain", "nsd/subj01")[
        "images"]), np.asarray(r["images"]))


def test_predicted_latents_are_scaled_exactly_once(store: Path, models: dict[str, Path]
                                                   ) -> None:
    decode_ridge(store, "nsd/subj01", "lat", embedding="sdxl-vae", image_size=32)
    st = nfstore.open_store(store)
    d = st.decoded("lat", "nsd/subj01")
    rows = np.flatnonzero(d.split.values == "test")[:1]
    raw = torch.from_numpy(np.asarray(d.values[rows], np.float32).reshape(1, 4, 16, 16))
    # the blurry set of the latents target is the VAE's decode of the raw predictions
    with torch.no_grad():
        dec = _vae(models).decode(raw).sample
    want = ((dec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    got, _ = chosen_images(store, "lat", "nsd/subj01")
    np.testing.assert_array_equal(got[:1], want)

    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "from-lat", CFG,
                limit=1, init="lat")
    ours = np.asarray(read_reconstructions(store, "from-lat", "nsd/subj01")["images"][0, 0])
    emb = st.decoded("ridge", "nsd/subj01").values[rows[0]]
    sf = float(st.embeddings("sdxl-vae").attrs["scaling_factor"])
    seed = image_seed(0, int(rows[0]), 0, 1)
    np.testing.assert_array_equal(ours, _direct_img2img(models, raw * sf, emb, seed))
    for wrong in (raw, raw * sf * sf):  # unscaled, or scaled twice: other images
        assert np.abs(ours.astype(int) - _direct_img2img(models, wrong, emb, seed)).max() > 10


def test_blend_is_its_own_labelled_set(store: Path, models: dict[str, Path]) -> None:
    from click.testing import CliRunner
    from nf.main import _register, cli

    _register()
    args = ["reconstruct", str(store), "--decoded", "ridge", "--sdxl", str(models["sdxl"]),
            "--ip-adapter", str(models["ip_adapter"]), "--steps", "4", "--size", "32",
            "--limit", "2", "--no-progress"]
    res = CliRunner().invoke(cli, args + ["--name", "i2i", "--init", "blurry", "--strength",
                                          "0.5", "--blend", "0.25"])
    assert res.exit_code == 0, res.output
    main = np.asarray(read_reconstructions(store, "i2i", "nsd/subj01")["images"])
    b = read_reconstructions(store, "i2i-blend0.25", "nsd/subj01")
    blurry, _ = chosen_images(store, "blurry", "nsd/subj01")
    want = np.clip(np.rint(0.75 * main[:, 0] + 0.25 * blurry[:2]), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(b["images"])[:, 0], want)
    assert b["attrs"]["blend"] == 0.25 and "pixel blend" in b["attrs"]["source"]
    assert "blend" not in read_reconstructions(store, "i2i", "nsd/subj01")["attrs"]
    for extra, msg in ((["--blend", "0.25"], "--blend: blends with the images of the init set"),
                       (["--init", "lat-missing"], "--init: expected a reconstruction set or a "
                                                   "decoded set of sdxl-vae latents with rows"),
                       (["--init", "ridge"], "--init: expected 'sdxl-vae' latents or a "
                                             "reconstruction set; found decoded set 'ridge'")):
        before = sorted(p.name for p in (store / "reconstructions").iterdir())
        res = CliRunner().invoke(cli, args + ["--name", "x", *extra])
        assert res.exit_code == 1 and msg in res.output and res.output.count("\n") == 1, \
            res.output
        assert sorted(p.name for p in (store / "reconstructions").iterdir()) == before


def test_latent_ridge_never_reads_test_rows(store: Path) -> None:
    decode_ridge(store, "nsd/subj01", "lat", embedding="sdxl-vae", split="train")
    before = np.asarray(nfstore.open_store(store).decoded("lat", "nsd/subj01").values)
    st = nfstore.open_store(store)
    rows = np.flatnonzero(st.dataset("nsd/subj01").split.values != "train")
    zarr.open_array(str(store / "nsd/subj01/betas"), mode="r+")[rows, :] = np.nan
    decode_ridge(store, "nsd/subj01", "lat2", embedding="sdxl-vae", split="train")
    after = np.asarray(nfstore.open_store(store).decoded("lat2", "nsd/subj01").values)
    np.testing.assert_array_equal(before, after)
    assert np.isfinite(after).all() and before.shape[1] == 1024


def test_latent_cache_resumes_after_an_interruption(train_store_ro: Path, tmp_path: Path,
                                                    models: dict[str, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import nfstore.lowlevel as L

    clean = Path(shutil.copytree(train_store_ro, tmp_path / "clean.zarr"))
    embed_vae_latents(clean, models["sdxl"], latent_size=16, batch=8)
    path = Path(shutil.copytree(train_store_ro, tmp_path / "nf.zarr"))
    real, calls = L.vae_latents, []

    def dies_at_the_third_batch(vae, images):  # noqa: ANN001, ANN202
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the process were killed here
        return real(vae, images)

    monkeypatch.setattr(L, "vae_latents", dies_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        embed_vae_latents(path, models["sdxl"], latent_size=16, batch=8)
    assert not (path / "embeddings" / "sdxl-vae").exists()  # nothing half-written in place
    calls.clear()
    monkeypatch.setattr(L, "vae_latents", lambda vae, images: calls.append(1) or real(vae,
                                                                                     images))
    r = embed_vae_latents(path, models["sdxl"], latent_size=16, batch=8)
    assert r["resumed"] == 16 and len(calls) == len(L._stimuli_with_images(
        nfstore.open_store(path), 8)) - 2  # the two finished batches are not redone
    a = nfstore.open_store(path).embeddings("sdxl-vae")
    b = nfstore.open_store(clean).embeddings("sdxl-vae")
    np.testing.assert_array_equal(a.values, b.values)
    assert "rows_done" not in a.attrs and a.attrs["weights_sha256"] == b.attrs["weights_sha256"]
