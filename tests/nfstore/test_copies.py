"""Copy detection on real photos (crops, uncropped originals, mirrors, grey, brightness,
re-encoding, RGBA), transparency, decompression bombs, and `nf embed --pool` failing cleanly."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

import nfstore
from nfstore import copies
from nfstore.embeddings import embed_store, register_pool
from nfstore.imagefile import BACKGROUND, open_rgb
from nfstore.leakage import find_leakage

sys.path.insert(0, str(Path(__file__).parents[1]))
import realdata  # noqa: E402

from tests.conftest import tree_state  # noqa: E402

PHOTOS = ("Dune.jpg", "LadyBird.jpg", "Garden.jpg", "Storm.jpg")


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """A handful of real photos (Debian wallpapers), long side 400 px."""
    files = {p.name: p for p in realdata.debian_photos()}
    out = []
    for name in PHOTOS:
        im = open_rgb(files[name], draft=400)
        im.thumbnail((400, 400))
        out.append(im)
    return out


def _square(im: Image.Image, t: float, side: int = 200) -> Image.Image:
    s = min(im.size)
    x = round((im.width - s) * t)
    return im.crop((x, 0, x + s, s)).resize((side, side), Image.Resampling.BICUBIC)


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(buf).convert("RGB")


def _copies(test: Image.Image, original: Image.Image) -> dict[str, Image.Image]:
    w = test.width
    flip = Image.Transpose.FLIP_LEFT_RIGHT
    return {"jpeg_q20": _jpeg(test, 20), "grey": test.convert("L"),
            "resized": test.resize((w // 2, w // 2), Image.Resampling.BICUBIC),
            "brighter": ImageEnhance.Brightness(test).enhance(1.2),
            "crop_centre": test.crop((w // 12, w // 12, w - w // 12, w - w // 12)),
            "crop_corner": test.crop((3, 2, 3 + int(0.82 * w), 2 + int(0.82 * w))),
            "uncropped": original, "flip": test.transpose(flip),
            "rgba_opaque": test.convert("RGBA")}


def _print(im: Image.Image, crops: bool) -> str:
    from nfstore.imagefile import to_rgb

    return copies.fingerprint(np.asarray(to_rgb(im)), crops)


def test_every_kind_of_copy_is_found_and_distinct_photos_never(photos) -> None:
    tests = [_square(im, t) for im, t in zip(photos, (0.3, 0.7, 0.5, 0.1))]
    held = [_print(t, True) for t in tests]
    pool, truth = [], []
    for k, (t, original) in enumerate(zip(tests, photos)):
        for kind, im in _copies(t, original).items():
            pool.append(_print(im, False))
            truth.append((k, kind))
    pairs = set(copies.copy_pairs(held, pool))
    missed = [truth[j] for j in range(len(pool)) if (truth[j][0], j) not in pairs]
    assert missed == []
    assert all(truth[j][0] == i for i, j in pairs)  # nothing but the planted copies


def test_distinct_photos_illustrations_faces_and_flat_images_never_match(photos) -> None:
    from skimage import data

    pics = [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea()),
            Image.fromarray(data.coffee()), Image.fromarray(data.camera()),
            Image.fromarray(data.text()), *photos]
    pics += [Image.fromarray((f * 255).astype(np.uint8)).resize((100, 100))
             for f in data.lfw_subset()[:30]]
    flats = [Image.new("RGB", (120, 90), c) for c in ((0, 0, 0), (255, 255, 255), (90, 40, 7))]
    ramp = np.broadcast_to(np.linspace(20, 230, 128)[None, :], (128, 128)).astype(np.uint8)
    flats += [Image.fromarray(ramp), Image.fromarray(ramp.T.copy())]
    prints_held = [_print(p, True) for p in pics + flats]
    prints_used = [_print(p, False) for p in pics + flats]
    pairs = [(i, j) for i, j in copies.copy_pairs(prints_held, prints_used) if i != j]
    assert pairs == []
    for p in prints_used[len(pics):]:  # flat images hash nothing, so they match nothing
        assert set(p[len(copies.PREFIX):].replace(":", "")[::16]) <= {"8"}
    assert [j for i, j in copies.copy_pairs(prints_held, prints_used) if i == j
            ] == list(range(len(pics)))


def test_legacy_prints_match_only_each_other_and_are_recomputed(nsd_store: Path, tmp_path: Path,
                                                                photos) -> None:
    import imagehash

    old = str(imagehash.phash(photos[0]))
    assert copies.copy_pairs([old], [old, _print(photos[0], False)]) == [(0, 0)]
    assert copies.legacy_count([old, "", _print(photos[0], False)]) == 1
    pool = tmp_path / "pool"
    pool.mkdir()
    photos[0].save(pool / "a.jpg")
    store = nsd_store
    register_pool(store, pool, "imnet")
    tab = store / "stimuli" / "imnet"
    import xarray as xr
    import zarr

    ds = xr.open_zarr(str(tab), consolidated=False, zarr_format=3).load()
    assert copies.is_current(ds["fingerprint"].values[0])
    zarr.open_group(str(tab), mode="r+")["fingerprint"][:] = np.array([old], dtype=object)
    report = find_leakage(nfstore.open_store(store))
    assert report.legacy == 1 and "earlier version" in report.lines()[-1]
    register_pool(store, pool, "imnet")  # the next registration recomputes it
    ds = xr.open_zarr(str(tab), consolidated=False, zarr_format=3).load()
    assert copies.is_current(ds["fingerprint"].values[0])


def test_alpha_pictures_are_composited_not_dropped(photos) -> None:
    files = {p.name: p for p in realdata.debian_photos()}
    arc = open_rgb(files["Arc-Colors-Transparent-Wallpaper.png"])
    with Image.open(files["Arc-Colors-Transparent-Wallpaper.png"]) as raw:
        assert raw.mode == "RGBA"
        assert np.asarray(arc).std() > 5  # the picture, not a blank
    grey = np.asarray(photos[1].convert("L").resize((200, 150)))
    white_logo = np.dstack([np.full_like(grey, 255)] * 3 + [grey])  # shape only in alpha
    black_ink = np.dstack([np.zeros_like(grey)] * 3 + [255 - grey])
    for a in (white_logo, black_ink):
        im = Image.fromarray(a, "RGBA")
        assert np.asarray(im.convert("RGB")).std() == 0  # what dropping alpha saw: blank
        rgb = np.asarray(open_rgb(_save(im)))
        assert rgb.std() > 10
        p = copies.fingerprint(rgb)
        assert copies.copy_pairs([p], [_print(photos[1].resize((200, 150)), False)]) == [(0, 0)]
    assert open_rgb(_save(Image.new("RGBA", (8, 8), (0, 0, 0, 0)))).getpixel((0, 0)) == \
        BACKGROUND


def _save(im: Image.Image) -> io.BytesIO:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    buf.seek(0)
    return buf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nfstore.tiny import write_tiny_encoder

    return write_tiny_encoder(tmp_path_factory.mktemp("enc"))["hf"]


def test_decompression_bomb_is_one_line_or_skipped(nsd_store: Path, tiny: Path,
                                                   tmp_path: Path) -> None:
    pool = tmp_path / "bp"
    pool.mkdir()
    Image.new("L", (20000, 20000)).save(pool / "bomb.png")
    Image.new("RGB", (40, 30), (10, 200, 30)).save(pool / "ok.png")
    before = tree_state(nsd_store)
    with pytest.raises(nfstore.ReaderError) as err:
        embed_store(nsd_store, "ip-adapter-sdxl", tiny, pool=pool, pool_name="bad", workers=0)
    assert "bomb.png: expected an image of at most" in str(err.value)
    assert "\n" not in str(err.value)
    assert tree_state(nsd_store) == before
    s = embed_store(nsd_store, "ip-adapter-sdxl", tiny, pool=pool, pool_name="bad", workers=0,
                    skip_bad=True)
    assert s.registered == 2 and s.embedded == 1
    assert len(s.skipped) == 1 and "bomb.png: expected an image of at most" in s.skipped[0]


def test_wrong_weights_leave_the_store_unchanged(nsd_store: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner
    from nf.main import _register, cli

    pool = tmp_path / "pool"
    pool.mkdir()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(pool / "a.png")
    (tmp_path / "w").mkdir()
    before = tree_state(nsd_store)
    _register()
    res = CliRunner().invoke(cli, ["embed", str(nsd_store), "--weights", str(tmp_path / "w"),
                                   "--pool", str(pool), "--pool-name", "novel",
                                   "--no-progress"])
    assert res.exit_code == 1 and "expected a Hugging Face image encoder" in res.output
    assert "registered" not in res.output
    assert tree_state(nsd_store) == before
    assert "novel" not in nfstore.open_store(nsd_store).stimulus_tables()


def test_leakage_reports_a_flipped_copy_and_the_uncropped_original(
        nsd_store: Path, tmp_path: Path, photos) -> None:
    st = nfstore.open_store(nsd_store)
    test_id = st.betas("nsd/subj01", split="test").stimulus.values[0]
    img = Image.fromarray(st.images([test_id]).values[0]).resize((128, 128),
                                                                   Image.Resampling.BICUBIC)
    side = photos[2].resize((64, 128))  # the rest of the "original" photo
    original = Image.new("RGB", (192, 128))
    original.paste(side, (0, 0))
    original.paste(img, (64, 0))
    pool = tmp_path / "pool"
    pool.mkdir()
    img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(pool / "mirrored.jpg", quality=90)
    original.save(pool / "original.jpg", quality=90)
    photos[3].save(pool / "other.jpg")
    register_pool(nsd_store, pool, "web")
    report = find_leakage(nfstore.open_store(nsd_store))
    got = {d.duplicate for d in report.duplicates if d.held_out == test_id}
    assert got == {"web/mirrored", "web/original"}
    assert all(d.by == "fingerprint" for d in report.duplicates
               if d.duplicate.startswith("web/"))
