"""Image bricks in every source format, and stimulus tables merged from two sources."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import skimage.data
from PIL import Image

import nfstore
from nfstore.bricks import Brick, brick_shape, read_brick_rows
from nfstore.errors import MissingFileError, QueryError, ReaderError
from nfstore.readers.base import StimulusTable
from nfstore.stimuli import commit_stimulus_table, lazy_pixels


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Three real photographs (scikit-image), 40 x 48 uint8 RGB, shape (3, 40, 48, 3)."""
    ims = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
    return np.stack([np.asarray(Image.fromarray(im).resize((48, 40))) for im in ims])


def _nsd(path: Path, photos: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f["imgBrick"] = photos
    return path


def _mindeye2(path: Path, photos: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:  # (N, 3, H, W) float16 in [0, 1], as the bundle stores it
        f.create_dataset("images", data=(np.moveaxis(photos, -1, 1) / 255).astype(np.float16),
                         chunks=(1, 3, 40, 48))
    return path


def _brain_diffuser(path: Path, photos: np.ndarray) -> Path:
    np.save(path, photos.astype(np.float64))  # uint8 values held in float64
    return path


@pytest.mark.parametrize("make", [_nsd, _mindeye2, _brain_diffuser])
def test_every_format_gives_the_photos(tmp_path: Path, photos: np.ndarray, make) -> None:
    path = make(tmp_path / ("b.npy" if make is _brain_diffuser else "b.hdf5"), photos)
    assert brick_shape(path) == (3, 40, 48, 3)
    got = read_brick_rows(np.array([2, 0, 2]), path)
    assert got.dtype == np.uint8 and got.shape == (3, 40, 48, 3)
    # float16 in [0, 1] keeps every uint8 value: round(x * 255) is exact
    np.testing.assert_array_equal(got, photos[[2, 0, 2]])


def test_mindeye2_rounding_matches_the_peers_conversion(tmp_path: Path, photos: np.ndarray
                                                        ) -> None:
    """Pixels are round(x * 255) of the stored float16, transposed to HWC."""
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 5, 7)).astype(np.float16)
    with h5py.File(tmp_path / "i.hdf5", "w") as f:
        f["images"] = x
    want = np.round(np.moveaxis(x.astype(np.float64), 1, -1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_brick_rows(np.array([0, 1]), tmp_path / "i.hdf5"), want)


def test_bad_bricks_are_one_line_errors(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f["pixels"] = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ReaderError, match=r"other.hdf5: expected an HDF5 dataset imgBrick or "
                                          r"images; found \['pixels'\]"):
        Brick(tmp_path / "other.hdf5")
    np.save(tmp_path / "gray.npy", np.zeros((2, 4, 4), np.float64))
    with pytest.raises(ReaderError, match=r"gray.npy: expected images of shape \(N, H, W, 3\); "
                                          r"found \(2, 4, 4\)"):
        brick_shape(tmp_path / "gray.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ReaderError, match="obj.npy: expected an image brick"):
        brick_shape(tmp_path / "obj.npy")
    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(ReaderError, match="text.hdf5: expected an image brick"):
        brick_shape(tmp_path / "text.hdf5")
    with pytest.raises(MissingFileError, match="gone.npy: missing stimulus file"):
        brick_shape(tmp_path / "gone.npy")
    _nsd(tmp_path / "n.hdf5", np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ReaderError, match=r"n.hdf5: expected rows 0..1; found 0..5"):
        read_brick_rows(np.array([0, 5]), tmp_path / "n.hdf5")


def test_rows_of_bricks_of_two_sizes_need_a_size(tmp_path: Path, photos: np.ndarray) -> None:
    """One table can hold rows of two bricks (Brain-Diffuser's train and test stim arrays,
    or two sources of NSD at 425 and 224 px)."""
    _nsd(tmp_path / "a.hdf5", photos)
    _brain_diffuser(tmp_path / "b.npy", photos[:, :20, :24])
    files, index = np.array(["a.hdf5", "b.npy", "a.hdf5"]), np.array([0, 1, 2])
    with pytest.raises(QueryError, match="different sizes"):
        lazy_pixels(files, index, tmp_path)
    got = lazy_pixels(files, index, tmp_path, size=(40, 48)).compute()
    np.testing.assert_array_equal(got[[0, 2]], photos[[0, 2]])  # already that size: unchanged
    want = np.asarray(Image.fromarray(photos[1, :20, :24]).resize(
        (48, 40), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(got[1], want)
    same = lazy_pixels(np.array(["a.hdf5", "a.hdf5"]), np.array([1, 0]), tmp_path,
                       size=(8, 8)).compute()  # one-size bricks keep their size
    np.testing.assert_array_equal(same, photos[[1, 0]])


def test_a_table_from_a_second_source_keeps_the_first_sources_rows(
        tmp_path: Path, photos: np.ndarray) -> None:
    """Two sources of one dataset (two roots): the second table's rows are added, the first
    table's rows keep their pixels (absolute paths) and their COCO identity."""
    a, b = tmp_path / "release", tmp_path / "bundle"
    a.mkdir(), b.mkdir()
    _nsd(a / "brick.hdf5", photos)
    _mindeye2(b / "imgs.hdf5", photos)
    store = tmp_path / "nf.zarr"
    nfstore.open_store(store, mode="a")
    first = StimulusTable("nsd", np.array(["nsd/00001", "nsd/00002"]),
                          np.array(["brick.hdf5"] * 2), np.array([0, 1]), a.resolve(),
                          coco_ids={"nsd/00001": 532481, "nsd/00002": 245})
    commit_stimulus_table(store, first)
    second = StimulusTable("nsd", np.array(["nsd/00002", "nsd/00003"]),
                           np.array(["imgs.hdf5"] * 2), np.array([1, 2]), b.resolve())
    commit_stimulus_table(store, second)
    st = nfstore.open_store(store)
    tab = st.stimuli("nsd")
    rows = dict(zip(tab["stimulus"].values.tolist(), zip(
        tab["file"].values.tolist(), tab["identity"].values.tolist())))
    assert rows["nsd/00001"] == (str(a.resolve() / "brick.hdf5"), "coco/532481")
    assert rows["nsd/00002"] == ("imgs.hdf5", "coco/245")  # new pixels, the known identity
    assert rows["nsd/00003"][0] == "imgs.hdf5"
    got = st.images(["nsd/00001", "nsd/00003"]).values
    np.testing.assert_array_equal(got, photos[[0, 2]])
