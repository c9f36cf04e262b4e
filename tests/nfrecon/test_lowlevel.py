"""Low-level stage (part): the pixels target and the blurry reconstruction set."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nfstore
from nfrecon.decode import decode_ridge
from nfrecon.metrics import pixel_metrics
from nfrecon.report import chosen_images, derangement, ground_truth, mean_train_image
from nfstore.lowlevel import embed_pixels


@pytest.fixture
def store(train_store_ro: Path, tmp_path: Path) -> Path:
    path = Path(shutil.copytree(train_store_ro, tmp_path / "nf.zarr"))
    embed_pixels(path, size=16)
    return path


def test_pixel_cache_equals_a_direct_downsample(store: Path) -> None:
    st = nfstore.open_store(store)
    e = st.embeddings("pixels", stimuli=["nsd/00003", "god/" + st.stimuli("god").stimulus.values[0]
                                         .split("/", 1)[1]])
    assert e.shape == (2, 16 * 16 * 3) and e.attrs["size"] == 16
    px = np.asarray(st.images(["nsd/00003"]).values[0])
    want = np.asarray(Image.fromarray(px).resize((16, 16), Image.Resampling.BOX)) / 255.0
    np.testing.assert_allclose(e.values[0], want.ravel(), atol=1e-6)
    from nfstore.schema import validate_store

    assert validate_store(st) == []


def test_blurry_stage_beats_the_mean_image_and_shuffled_baselines(store: Path) -> None:
    decode_ridge(store, "nsd/subj01", "blurry", embedding="pixels", rescale=True, image_size=32)
    st = nfstore.open_store(store)
    rec, stim = chosen_images(store, "blurry", "nsd/subj01")
    test = st.betas("nsd/subj01", split="test", average_repeats=True)
    assert list(stim) == list(test.stimulus.values) and rec.shape[1:] == (32, 32, 3)
    gt = ground_truth(st, stim, 32)
    got = {k: v.mean() for k, v in pixel_metrics(gt, rec, "mindeye2").items()}
    shuffled = {k: v.mean() for k, v in pixel_metrics(
        gt, rec[derangement(len(rec), 0)], "mindeye2").items()}
    mean = {k: v.mean() for k, v in pixel_metrics(
        gt, np.broadcast_to(mean_train_image(st, "nsd/subj01", 32), rec.shape).copy(),
        "mindeye2").items()}
    # planted images are smooth functions of the latent the voxels encode
    assert got["pixcorr"] > max(shuffled["pixcorr"], mean["pixcorr"]) + 0.3, (got, shuffled,
                                                                               mean)
    assert got["ssim"] > max(shuffled["ssim"], mean["ssim"]) + 0.01, (got, shuffled, mean)
