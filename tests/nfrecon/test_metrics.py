"""Image metrics against direct computations; the networks with random weights saved under the
real file names; nf metrics on a reconstruction set."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

import nfstore
from nfrecon import metrics as M
from nfrecon.tiny import write_metric_weights
from nfstore.decoding import brain_retrieval, two_way


def _photo(n: int = 6, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        img = np.asarray(Image.open(f).convert("RGB"))
    rng = np.random.default_rng(0)
    gt = np.stack([np.asarray(Image.fromarray(img[y:y + 300, x:x + 300]).resize((size, size)))
                   for y, x in rng.integers(0, 200, (n, 2))])
    rec = np.clip(gt.astype(int) + rng.integers(-60, 60, gt.shape), 0, 255).astype(np.uint8)
    return gt, rec


def test_two_way_matches_a_brute_force_double_loop() -> None:
    rng = np.random.default_rng(1)
    gt = rng.standard_normal((7, 20))
    rec = gt + rng.standard_normal((7, 20)) * 1.5
    got = two_way(gt, rec)
    want = []
    for j in range(7):
        right = np.corrcoef(gt[j], rec[j])[0, 1]
        want.append(sum(np.corrcoef(gt[i], rec[j])[0, 1] < right for i in range(7) if i != j) / 6)
    np.testing.assert_allclose(got, want)
    assert (two_way(gt, gt) == 1).all()
    with pytest.raises(nfstore.OptionError, match=r"^gt: expected at least 2 images"):
        two_way(gt[:1], rec[:1])


def test_pixcorr_and_ssim_match_numpy_and_skimage() -> None:
    gt, rec = _photo()
    g, r = gt / 255.0, rec / 255.0
    np.testing.assert_allclose(M.pixcorr(g, r), [np.corrcoef(a.ravel(), b.ravel())[0, 1]
                                                  for a, b in zip(g, r)])
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    np.testing.assert_allclose(M.ssim(g, r), [structural_similarity(rgb2gray(b), rgb2gray(a),
                                                                    **kw) for a, b in zip(g, r)])
    col = M.ssim(g, r, columnwise=True)  # Brain-Diffuser: columns taken as channels
    assert np.isfinite(col).all() and not np.allclose(col, M.ssim(g, r))
    assert M.pixcorr(g, g) == pytest.approx(1) and M.ssim(g, g) == pytest.approx(1)


def test_mindeye2_resize_is_bilinear_without_antialias() -> None:
    import torch.nn.functional as F

    x = torch.rand(2, 3, 512, 512)
    np.testing.assert_allclose(M.resize_tensor(x, 256).numpy(),
                               F.interpolate(x, size=(256, 256), mode="bilinear",
                                             align_corners=False).numpy(), atol=1e-6)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_metric_weights(tmp_path_factory.mktemp("metricw"))


@pytest.mark.parametrize("variant", M.VARIANTS)
def test_networks_with_random_weights(weights: dict[str, Path], variant: str) -> None:
    nets = M.load_networks(M.weight_paths(weights["weights"], variant), weights["clip"], "cpu")
    gt, rec = _photo()
    m = M.image_metrics(gt, rec, nets, variant)
    assert set(m) == set(M.METRICS)
    for k, v in m.items():
        assert v.shape == (6,) and np.isfinite(v).all(), k
    for k in ("alexnet2", "alexnet5", "inception", "clip"):
        assert ((0 <= m[k]) & (m[k] <= 1)).all()
    assert ((0 <= m["swav"]) & (m["swav"] <= 2)).all()
    same = M.image_metrics(gt, gt, nets, variant)
    assert same["pixcorr"] == pytest.approx(1) and same["ssim"] == pytest.approx(1)
    for k in ("alexnet2", "alexnet5", "clip"):
        assert (same[k] == 1).all(), k
    assert same["swav"] == pytest.approx(0, abs=1e-6)
    feats = M.features(nets[0], gt, variant, "cpu")
    assert feats["alexnet2"].shape[1] == (192 * 31 * 31 if variant == "mindeye2" else 192 * 27 * 27)


def test_missing_and_wrong_weights_are_one_line_errors(weights: dict[str, Path],
                                                       tmp_path: Path) -> None:
    with pytest.raises(nfstore.MissingFileError) as err:
        M.weight_paths(tmp_path, "mindeye2")
    text = str(err.value)
    assert "\n" not in text and all(f in text for f in (
        "alexnet-owt-7be5be79.pth", "inception_v3_google-0cc3c7bd.pth",
        "efficientnet_b1-c27df63c.pth", "swav_800ep_pretrain.pth.tar"))
    bad = Path(shutil.copytree(weights["weights"], tmp_path / "w"))
    torch.save({"x": torch.zeros(1)}, bad / M.WEIGHT_FILES["alexnet"])
    with pytest.raises(nfstore.ReaderError,
                       match=r"^weights: expected the network's weights in .*alexnet-owt"):
        M.load_networks(M.weight_paths(bad, "mindeye2"), weights["clip"], "cpu")
    torch.save({"module.conv1.weight": torch.zeros(64, 3, 7, 7)}, bad / M.WEIGHT_FILES["swav"])
    shutil.copy(weights["weights"] / M.WEIGHT_FILES["alexnet"], bad / M.WEIGHT_FILES["alexnet"])
    with pytest.raises(nfstore.ReaderError, match="expected a SwAV ResNet-50 checkpoint"):
        M.load_networks(M.weight_paths(bad, "mindeye2"), weights["clip"], "cpu")
    torch.save(Path("x"), bad / M.WEIGHT_FILES["alexnet"])  # a pickled object: refused
    with pytest.raises(nfstore.ReaderError, match="cannot read as torch weights"):
        M.load_networks(M.weight_paths(bad, "mindeye2"), weights["clip"], "cpu")
    with pytest.raises(nfstore.MissingFileError, match="^clip: expected"):
        M.load_clip(tmp_path / "none", "cpu")


def test_nf_metrics_on_a_reconstruction_set(weights: dict[str, Path], train_store_ro: Path,
                                            tmp_path: Path) -> None:
    import zarr

    from nfrecon.decode import decode_ridge
    from nfrecon.reconstruct import ReconConfig, reconstruct
    from nfrecon.report import metrics_report, write_tables
    from nfrecon.tiny import write_tiny_models

    store = Path(shutil.copytree(train_store_ro, tmp_path / "nf.zarr"))
    decode_ridge(store, "nsd/subj01", "ridge")
    models = write_tiny_models(tmp_path / "models")
    cfg = ReconConfig(steps=2, size=32)
    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "r", cfg, limit=4)
    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "oracle", cfg, limit=4,
                from_embeddings=True)
    rep = metrics_report(store, "r", weights["weights"], weights["clip"], oracle="oracle")
    row = rep["subjects"]["nsd/subj01"]
    assert row["n_images"] == 4 and set(rep["baselines"]) == {
        "shuffled reconstructions", "mean train image", "oracle (true embeddings)"}
    lo, hi = row["pixcorr"]["ci95"]
    assert lo <= row["pixcorr"]["mean"] <= hi
    per = zarr.open_group(str(store / "reconstructions/r/nsd/subj01/metrics/mindeye2"), mode="r")
    np.testing.assert_allclose(per["pixcorr"][:].mean(), row["pixcorr"]["mean"])
    assert rep["overall"]["ssim"] == pytest.approx(row["ssim"]["mean"])
    assert rep["ci95"]["overall"]["ssim"][0] <= rep["overall"]["ssim"] <= \
        rep["ci95"]["overall"]["ssim"][1]
    assert set(rep["ci95"]) == {"nsd", "overall"}
    t = write_tables(rep, tmp_path / "tables", "ours")
    assert "| MindEye | .309 |" in t["markdown"] and "ours [nsd, mindeye2]" in t["markdown"]
    assert (tmp_path / "tables/metrics_table.html").read_text().count("<table>") == 1


def test_semantic_top1_against_a_direct_count() -> None:
    from nfrecon.semantic import semantic_top1

    rng = np.random.default_rng(3)
    pg = rng.dirichlet(np.ones(100), 5)
    pr = rng.dirichlet(np.ones(100), 5)
    got = semantic_top1(pg, pr, trials=200, seed=7)
    rng2 = np.random.default_rng(7)  # the same draws, counted directly
    for i in range(5):
        c = pg[i].argmax()
        others = np.delete(np.arange(100), c)
        hits = 0
        for _ in range(200):
            pick = rng2.choice(others, 49, replace=False)
            hits += pr[i, c] > pr[i, pick].max()
        assert got[i] == pytest.approx(hits / 200)
    assert (semantic_top1(pg, pg, trials=50) == 1).all()  # its own probabilities: always top


def test_brain_retrieval_with_mindeye2_subsets() -> None:
    rng = np.random.default_rng(0)
    t = rng.standard_normal((320, 16))
    r = brain_retrieval(t + 0.5 * rng.standard_normal((320, 16)), t)
    assert r["n_candidates"] == 320 and r["mindeye2_300"]["subsets"] == 30
    assert 0 < r["mindeye2_300"]["top1_brain_to_image"] <= 1
    assert "mindeye2_300" not in brain_retrieval(t[:50], t[:50])


def test_classifier_and_vae_baseline_in_the_report(weights: dict[str, Path], train_store_ro: Path,
                                                   tmp_path: Path) -> None:
    from nfrecon.decode import decode_ridge
    from nfrecon.reconstruct import ReconConfig, reconstruct
    from nfrecon.report import metrics_report, vae_roundtrip
    from nfrecon.tiny import write_tiny_models

    store = Path(shutil.copytree(train_store_ro, tmp_path / "nf.zarr"))
    decode_ridge(store, "nsd/subj01", "ridge")
    models = write_tiny_models(tmp_path / "models")
    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "r",
                ReconConfig(steps=2, size=32), limit=3)

    def tiny_classifier(images: np.ndarray) -> np.ndarray:  # injected: mean colour -> 60 classes
        logits = images.reshape(len(images), -1, 3).mean(1) @ np.linspace(-1, 1, 180).reshape(
            3, 60)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    rep = metrics_report(store, "r", weights["weights"], weights["clip"],
                         classifier=tiny_classifier, sdxl=models["sdxl"])
    row = rep["subjects"]["nsd/subj01"]
    assert 0 <= row["top1"]["mean"] <= 1
    assert "VAE round trip (low-level ceiling)" in rep["baselines"]
    assert rep["retrieval"]["nsd/subj01"]["n_candidates"] == 10
    # the VAE row is the VAE called directly
    gt = nfstore.open_store(store).images(["nsd/00000"]).values
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(models["sdxl"]), subfolder="vae")
    x = torch.from_numpy(np.asarray(gt)).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
    want = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(vae_roundtrip(models["sdxl"], "cpu")(np.asarray(gt)), want)


def test_clip_from_an_openai_file_equals_the_model(tmp_path: Path) -> None:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(
        "ViT-L-14-quickgelu", pretrained=None, embed_dim=768,
        vision_cfg=dict(image_size=224, layers=2, width=64, head_width=64, patch_size=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1)).eval()
    torch.save(model.state_dict(), tmp_path / "ViT-L-14.pt")  # OpenAI's key layout
    fn = M.load_clip(tmp_path / "ViT-L-14.pt", "cpu")
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        want = model.encode_image(x)
    got = fn(x)
    assert got.shape == (2, 768)
    # open_clip rebuilds the OpenAI architecture (its own attention modules): ~1e-3 apart
    torch.testing.assert_close(got, want, atol=5e-3, rtol=1e-2)


# --------------------------------------------------------------------------- native ground truth
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
          "hubble_deep_field", "colorwheel", "coins", "text", "page")


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]


def _documented(gt: list[np.ndarray], rec: np.ndarray, variant: str) -> dict[str, np.ndarray]:
    """PixCorr and SSIM as the published code computes them, written out with torch's
    ``interpolate``, PIL and scikit-image: each ground-truth image from its native size."""
    import torch.nn.functional as F
    from PIL import Image

    def mindeye2(a: np.ndarray, clamp: bool) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255
        for side in (256, 425):  # Resize((256, 256)), then Resize(425)
            t = F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)
        t = t.clamp(0, 1) if clamp else t
        return t[0].permute(1, 2, 0).double().numpy()

    def bicubic(a: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(a).resize((425, 425), Image.Resampling.BICUBIC)) / 255

    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
              channel_axis=-1 if variant == "brain-diffuser" else None)
    pix, ssim = [], []
    for g, r in zip(gt, rec):
        G, R = (mindeye2(g, False), mindeye2(r, True)) if variant == "mindeye2" else (
            bicubic(g), bicubic(r))
        pix.append(np.corrcoef(G.ravel(), R.ravel())[0, 1])
        ssim.append(structural_similarity(rgb2gray(R), rgb2gray(G), **kw))
    return {"pixcorr": np.array(pix), "ssim": np.array(ssim)}


@pytest.fixture(scope="module")
def photo_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A GOD store whose test pictures are real photographs of ten sizes (none 425 px), with a
    reconstruction set ``r`` of them at 64 px (the photographs shrunk, plus noise)."""
    from PIL import Image

    from nfrecon.reconstruct import create_group
    from nfstore.synth import synthesize
    from tests.realdata import skimage_photos

    base = tmp_path_factory.mktemp("photos")
    synthesize("god", base / "god", subjects=(1,), seed=2)
    photos = skimage_photos()
    files = sorted((base / "god/images/test").glob("*.JPEG"))
    for f, n in zip(files, PHOTOS):
        Image.fromarray(_rgb(photos[n])).save(f, format="JPEG", quality=95)
    store = base / "nf.zarr"
    nfstore.ingest("god", base / "god", store)
    st = nfstore.open_store(store)
    ds = st.dataset("god/sub-01")
    stim = np.unique(ds.stimulus.values[ds.split.values == "test"]).astype(object)
    tab = st.stimuli("god")
    file_of = dict(zip(tab.stimulus.values, tab["file"].values))
    gt = [np.asarray(Image.open(st.raw_root("god") / file_of[s]).convert("RGB")) for s in stim]
    assert len(gt) == 10 and len({g.shape for g in gt}) == 9  # ten photographs, nine sizes
    assert all(g.shape[0] != 425 for g in gt)
    rng = np.random.default_rng(0)
    rec = np.stack([np.clip(np.asarray(Image.fromarray(g).resize((64, 64))).astype(int)
                            + rng.integers(-40, 40, (64, 64, 3)), 0, 255) for g in gt]
                   ).astype(np.uint8)
    key = "reconstructions/r/god/sub-01"
    with nfstore.transaction(store, "test") as tx:
        staged, _, _ = tx.stage(key, create=False)
        g = create_group(staged, stim, 1, 64)
        g["images"][:] = rec[:, None]
        g["chosen"][:] = 0
        g.attrs["subject"] = "god/sub-01"
        tx.commit(key)
    return {"store": store, "gt": gt, "rec": rec, "stim": stim}


@pytest.mark.parametrize("variant", M.VARIANTS)
def test_ground_truth_enters_at_its_native_size(variant: str, photo_store: dict, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import zarr
    from PIL import Image

    from nfrecon.report import ground_truth, metrics_report

    store = Path(shutil.copytree(photo_store["store"], tmp_path / "nf.zarr"))
    got = ground_truth(nfstore.open_store(store), photo_store["stim"])
    for a, b in zip(got, photo_store["gt"]):
        np.testing.assert_array_equal(a, b)  # each photograph as its file holds it
    # PixCorr and SSIM only: the feature networks take the same inputs (the next test)
    monkeypatch.setattr(M, "weight_paths", lambda folder, variant: {})
    monkeypatch.setattr(M, "load_networks", lambda paths, clip, device: [])
    rep = metrics_report(store, "r", tmp_path, tmp_path, variant=variant)
    per = zarr.open_group(str(store / f"reconstructions/r/god/sub-01/metrics/{variant}"),
                          mode="r")
    want = _documented(photo_store["gt"], photo_store["rec"], variant)
    for k in ("pixcorr", "ssim"):
        np.testing.assert_allclose(per[k][:], want[k], rtol=1e-6, atol=1e-6, err_msg=k)
        assert rep["subjects"]["god/sub-01"][k]["mean"] == pytest.approx(want[k].mean())
    # what scoring a ground truth first shrunk to the reconstructions' 64 px gives instead
    small = [np.asarray(Image.fromarray(g).resize((64, 64), Image.Resampling.BICUBIC))
             for g in photo_store["gt"]]
    shrunk = _documented(small, photo_store["rec"], variant)
    assert abs(shrunk["ssim"].mean() - want["ssim"].mean()) > 0.01


@pytest.mark.parametrize("variant", M.VARIANTS)
def test_networks_take_each_image_at_its_own_size(variant: str, photo_store: dict) -> None:
    import torchvision.models as tvm
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    alex = create_feature_extractor(tvm.alexnet(weights=None).eval(),
                                    return_nodes={"features.4": "alexnet2"})
    net = M.Network("alexnet", alex, "alexnet", M.IMAGENET)
    gt = photo_store["gt"][:3]  # three sizes
    both = M.features(net, gt, variant, "cpu")
    for i, img in enumerate(gt):  # one image per call: no other image's size involved
        alone = M.features(net, img[None], variant, "cpu")
        np.testing.assert_allclose(both["alexnet2"][i], alone["alexnet2"][0], rtol=1e-5,
                                   atol=1e-5)
    # AlexNet's input is 256 px (mindeye2) or 224 px (brain-diffuser), whatever the photo
    assert both["alexnet2"].shape == (3, 192 * 31 * 31 if variant == "mindeye2"
                                      else 192 * 27 * 27)


# --------------------------------------------------------------------------- open_clip folders
TINY_CLIP = {"embed_dim": 768, "quick_gelu": True,
             "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32,
                            "patch_size": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                          "layers": 1}}


def _open_clip_folder(out: Path, weights: str) -> torch.nn.Module:
    """A tiny random open_clip model in the model-hub layout: ``open_clip_config.json``
    (``model_cfg`` + ``preprocess_cfg``) and the weights under ``weights``."""
    import json

    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    out.mkdir(parents=True)
    (out / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": list(M.CLIP_NORM[0]),
                                                   "std": list(M.CLIP_NORM[1])}}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights.endswith(".safetensors"):
        save_file(state, str(out / weights))
    else:
        torch.save(state, out / weights)
    return model


@pytest.mark.parametrize("weights_file", ["open_clip_pytorch_model.bin",
                                          "open_clip_model.safetensors"])
def test_clip_from_an_open_clip_folder_equals_the_model(tmp_path: Path, weights_file: str
                                                        ) -> None:
    model = _open_clip_folder(tmp_path / "clip", weights_file)
    fn = M.load_clip(tmp_path / "clip", "cpu")  # the architecture comes from model_cfg
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        want = model.encode_image(x)
    got = fn(x)
    assert got.shape == (2, 768)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_open_clip_folder_errors_are_one_line(tmp_path: Path) -> None:
    import json

    _open_clip_folder(tmp_path / "c", "open_clip_pytorch_model.bin")
    (tmp_path / "c/open_clip_pytorch_model.bin").rename(tmp_path / "c/other.bin")
    with pytest.raises(nfstore.MissingFileError) as err:
        M.load_clip(tmp_path / "c", "cpu")
    assert "expected open_clip_model.safetensors or open_clip_pytorch_model.bin" in str(
        err.value) and "\n" not in str(err.value)
    (tmp_path / "c/other.bin").rename(tmp_path / "c/open_clip_pytorch_model.bin")
    cfg = json.loads((tmp_path / "c/open_clip_config.json").read_text())
    cfg["model_cfg"]["vision_cfg"]["layers"] = 3  # weights of another architecture
    (tmp_path / "c/open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(nfstore.ReaderError, match="^clip: expected open_clip_pytorch_model.bin "
                       "to fit the model_cfg") as err:
        M.load_clip(tmp_path / "c", "cpu")
    assert "\n" not in str(err.value)
    (tmp_path / "c/open_clip_config.json").write_text(json.dumps({"preprocess_cfg": {}}))
    with pytest.raises(nfstore.ReaderError, match="expected an object with 'model_cfg'"):
        M.load_clip(tmp_path / "c", "cpu")
