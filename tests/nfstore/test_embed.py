"""`nf embed`: both weight layouts, preprocessing, cache semantics, resume, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import nfstore
from nfstore import encoders
from nfstore.embeddings import embed_store, register_pool
from nfstore.readers.nsd import STIMULI
from nfstore.schema import validate_store
from nfstore.tiny import write_tiny_encoder

SPEC = encoders.MODELS["ip-adapter-sdxl"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random encoder (embed_dim 1280) in the HF and open_clip layouts."""
    return write_tiny_encoder(tmp_path_factory.mktemp("encoder"))


def _encode(weights: Path, pixels: np.ndarray, tokens: bool = False) -> np.ndarray:
    enc = encoders.load_encoder(encoders.locate_weights(weights, SPEC), SPEC, tokens=tokens)
    return enc(torch.from_numpy(pixels), tokens=tokens).numpy()


def _pixels(images: list[Image.Image]) -> np.ndarray:
    proc = encoders.processor()
    return np.stack([encoders.preprocess(i, proc) for i in images])


def _brick_images(raw: Path, ids: list[str]) -> list[Image.Image]:
    with h5py.File(raw / STIMULI) as f:
        return [Image.fromarray(f["imgBrick"][int(s.split("/")[1])]) for s in ids]


def test_layouts_give_identical_embeddings(tiny: dict[str, Path], monkeypatch) -> None:
    import open_clip

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 224, 224)).astype(np.float32)
    hf, oc = _encode(tiny["hf"], x), _encode(tiny["open_clip"], x)
    assert hf.shape == (4, 1280)
    np.testing.assert_allclose(hf, oc, atol=1e-5)
    # a bare open_clip weights file is read with the model's architecture
    cfg = json.loads((tiny["open_clip"] / "open_clip_config.json").read_text())["model_cfg"]
    cfg_file = tiny["file"].parent / "nf-tiny-vit.json"
    cfg_file.write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_file)
    monkeypatch.setitem(encoders.MODELS, "ip-adapter-sdxl",
                        encoders.ModelSpec("ip-adapter-sdxl", "nf-tiny-vit", 1280, "x"))
    spec = encoders.MODELS["ip-adapter-sdxl"]
    enc = encoders.load_encoder(encoders.locate_weights(tiny["file"], spec), spec)
    np.testing.assert_allclose(enc(torch.from_numpy(x)).numpy(), hf, atol=1e-5)


def test_preprocessing_equals_open_clip_and_clip_processor(tiny: dict[str, Path]) -> None:
    import open_clip
    import transformers

    _, _, transform = open_clip.create_model_and_transforms(f"local-dir:{tiny['open_clip']}")
    reference = transformers.CLIPImageProcessorPil(size=224, crop_size=224)
    rng = np.random.default_rng(1)
    for h, w in ((300, 400), (425, 425), (500, 333)):
        img = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
        ours = encoders.preprocess(img, encoders.processor())
        assert ours.shape == (3, 224, 224)
        np.testing.assert_array_equal(ours, transform(img).numpy())
        np.testing.assert_allclose(ours, reference(img, return_tensors="np")["pixel_values"][0],
                                   atol=1e-6)


@pytest.fixture
def store(nsd_store: Path) -> Path:
    return nsd_store


def test_stored_values_equal_a_direct_call(store: Path, nsd_raw: Path, tiny) -> None:
    summary = embed_store(store, "ip-adapter-sdxl", tiny["hf"], workers=0, batch_size=50)
    st = nfstore.open_store(store)
    n_images = st.stimuli("nsd").sizes["stimulus"]
    assert summary.embedded == n_images and summary.cached == 0
    x = st.betas("nsd/subj02", split="test")  # repeated stimuli, query order
    e = st.embeddings("ip-adapter-sdxl", stimuli=x.stimulus)
    assert e.dims == ("stimulus", "feature") and e.shape == (x.sizes["trial"], 1280)
    ids = x.stimulus.values[:6].tolist()
    direct = _encode(tiny["hf"], _pixels(_brick_images(nsd_raw, ids)))
    np.testing.assert_allclose(e.values[:6], direct, rtol=1e-5, atol=1e-5)  # batch sizes differ
    attrs = st.embeddings("ip-adapter-sdxl").attrs
    assert attrs["weights"]["layout"] == "hf" and len(attrs["weights_sha256"]) == 64
    assert attrs["preprocessing"]["shortest_edge"] == 224 and attrs["dtype"] == "float32"
    assert validate_store(st) == []
    again = embed_store(store, "ip-adapter-sdxl", tiny["hf"], workers=0)
    assert again.embedded == 0 and again.cached == n_images
    with pytest.raises(nfstore.QueryError, match="have no ip-adapter-sdxl embedding"):
        st.embeddings("ip-adapter-sdxl", stimuli=["nsd/00000", "bold5000/x"])


KILL = textwrap.dedent("""
    import os, signal, sys
    from nfstore.embeddings import embed_store

    def on_batch(count):
        if count >= 40:
            os.kill(os.getpid(), signal.SIGKILL)

    embed_store(sys.argv[1], "ip-adapter-sdxl", sys.argv[2], batch_size=20, workers=0,
                on_batch=on_batch)
""")


def test_kill_9_then_resume_embeds_only_the_rest(store: Path, tiny, tmp_path: Path) -> None:
    ref = tmp_path / "ref.zarr"
    shutil.copytree(store, ref)
    proc = subprocess.run([sys.executable, "-c", KILL, str(store), str(tiny["hf"])],
                          cwd=Path(__file__).parents[2], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    st = nfstore.open_store(store)
    assert validate_store(st) == []
    assert "ip-adapter-sdxl" not in st.embedding_models()  # a new cache is committed complete
    rest = embed_store(store, "ip-adapter-sdxl", tiny["hf"], workers=0, batch_size=64)
    total = st.stimuli("nsd").sizes["stimulus"]
    assert rest.cached == 40 and rest.embedded == total - 40
    embed_store(ref, "ip-adapter-sdxl", tiny["hf"], workers=0, batch_size=64)
    a = nfstore.open_store(store).embeddings("ip-adapter-sdxl")
    b = nfstore.open_store(ref).embeddings("ip-adapter-sdxl", stimuli=a.stimulus)
    np.testing.assert_allclose(a.values, b.values, atol=1e-6)
    assert len(set(a.stimulus.values.tolist())) == total  # no duplicated rows


def test_pool_tokens_float16_and_skip_bad(store: Path, tiny, tmp_path: Path) -> None:
    pool = tmp_path / "imagenet_subset"
    rng = np.random.default_rng(2)
    for rel in ("a/x1.JPEG", "a/x2.png", "b/y.jpg"):
        (pool / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)).save(pool / rel)
    (pool / "b" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(nfstore.ReaderError, match=r"broken.jpg: expected an image PIL can "
                       r"decode.*1 of 4 pool images unreadable; skip_bad"):
        register_pool(store, pool, "imnet")
    assert register_pool(store, pool, "imnet", skip_bad=True) == 4
    with pytest.raises(nfstore.ReaderError, match=r"broken.jpg: .*skip_bad goes on"):
        embed_store(store, "ip-adapter-sdxl", tiny["hf"], stimuli="imnet", workers=0)
    s = embed_store(store, "ip-adapter-sdxl", tiny["hf"], stimuli="pool", workers=1,
                    skip_bad=True, tokens=True, dtype="float16")
    assert s.embedded == 3 and len(s.skipped) == 1 and "broken.jpg" in s.skipped[0]
    st = nfstore.open_store(store)
    tok = st.embeddings("ip-adapter-sdxl-tokens", stimuli=["imnet/a/x1", "imnet/b/y"])
    assert tok.dims == ("stimulus", "token", "feature") and tok.shape == (2, 50, 64)
    assert tok.dtype == np.float16
    img = Image.open(pool / "b/y.jpg")
    want = _encode(tiny["hf"], _pixels([img]), tokens=True)[0]
    np.testing.assert_allclose(tok.values[1], want, rtol=2e-3, atol=2e-3)
    assert validate_store(st) == []


def _empty(tmp: Path, tiny) -> tuple[Path, str]:
    (tmp / "w").mkdir()
    return tmp / "w", "weights: expected a Hugging Face image encoder folder (config.json + " \
                      "model.safetensors or pytorch_model.bin"


def _incomplete(tmp: Path, tiny) -> tuple[Path, str]:
    (tmp / "w").mkdir()
    shutil.copy(tiny["hf"] / "config.json", tmp / "w")
    return tmp / "w", "weights: expected model.safetensors or pytorch_model.bin beside " \
                      "config.json; found an incomplete encoder at"


def _wrong_width(tmp: Path, tiny) -> tuple[Path, str]:
    return write_tiny_encoder(tmp / "w", embed_dim=768)["hf"], \
        "weights: expected 1280-d embeddings (ip-adapter-sdxl, ViT-bigG-14); found 768-d"


def _corrupt(tmp: Path, tiny) -> tuple[Path, str]:
    shutil.copytree(tiny["hf"], tmp / "w")
    (tmp / "w" / "model.safetensors").write_bytes(b"\0" * 100)
    return tmp / "w", "cannot read as image encoder weights ("


@pytest.mark.parametrize("make", [_empty, _incomplete, _wrong_width, _corrupt],
                         ids=lambda f: f.__name__.strip("_"))
def test_weight_errors_are_one_line(store: Path, tiny, tmp_path: Path, make) -> None:
    weights, message = make(tmp_path, tiny)
    with pytest.raises(nfstore.NFError) as err:
        embed_store(store, "ip-adapter-sdxl", weights, workers=0)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(weights) in str(err.value)
    assert "embeddings" not in nfstore.open_store(store).embedding_models()


def test_other_weights_need_overwrite(store: Path, tiny, tmp_path: Path) -> None:
    embed_store(store, "ip-adapter-sdxl", tiny["hf"], workers=0)
    other = write_tiny_encoder(tmp_path / "other", seed=1)["hf"]
    with pytest.raises(nfstore.StoreError, match="cached with other weights_sha256"):
        embed_store(store, "ip-adapter-sdxl", other, workers=0)
    s = embed_store(store, "ip-adapter-sdxl", other, workers=0, overwrite=True)
    assert s.cached == 0 and s.embedded > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="clip-vit-l"), r"^model: expected one of \[.*'pixels'.*\]; found 'clip-vit-l'$"),
    (dict(stimuli="god"), r"^stimuli: expected all, pool or a table of .*found 'god'"),
    (dict(device="cuda"), "^device: expected cpu or an available CUDA device; found cuda "
                          r"\(CUDA is not available\)"),
    (dict(dtype="float64"), "^dtype: expected float32 or float16; found 'float64'"),
])
def test_option_errors(store: Path, tiny, kwargs: dict, message: str, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # same answer on any machine
    args = {"model": "ip-adapter-sdxl", **kwargs}
    with pytest.raises(nfstore.OptionError, match=message):
        embed_store(store, args.pop("model"), tiny["hf"], workers=0, **args)


def test_pool_name_may_not_be_a_dataset(store: Path, tmp_path: Path) -> None:
    with pytest.raises(nfstore.OptionError, match="^pool_name: expected a name"):
        register_pool(store, tmp_path, "nsd")


def test_vit_h_model_takes_1024_d_encoders(store: Path, tiny, tmp_path: Path) -> None:
    vit_h = write_tiny_encoder(tmp_path / "vith", embed_dim=1024)["hf"]
    s = embed_store(store, "ip-adapter-sdxl-vit-h", vit_h, workers=0, stimuli="nsd")
    e = nfstore.open_store(store).embeddings("ip-adapter-sdxl-vit-h")
    assert s.embedded == e.sizes["stimulus"] and e.sizes["feature"] == 1024
    with pytest.raises(nfstore.ReaderError, match=r"^weights: expected 1024-d embeddings "
                                                  r"\(ip-adapter-sdxl-vit-h, ViT-H-14\); "
                                                  "found 1280-d"):
        embed_store(store, "ip-adapter-sdxl-vit-h", tiny["hf"], workers=0, overwrite=True)
