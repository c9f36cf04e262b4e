"""GOD: generated BData opens with the official bdpy; ingest against bdpy + scikit-learn."""

from __future__ import annotations

from pathlib import Path

import bdpy
import h5py
import numpy as np
import pytest
from sklearn.preprocessing import scale

import nfstore
from nfstore.readers.god import Options, decode_stimulus
from nfstore.synth import synthesize
from tests.conftest import assert_fails_cleanly


def test_bdpy_opens_generated_files(god_raw: Path) -> None:
    b = bdpy.BData(str(god_raw / "Subject1.h5"))
    vc = b.select("ROI_VC")
    assert vc.shape == (98, b.select("VoxelData").shape[1])
    assert set(np.unique(b.select("DataType")).tolist()) == {1.0, 2.0, 3.0}
    x = b.get_metadata("voxel_x", where="VoxelData")
    assert np.isfinite(x).all() and np.allclose(np.mod(x, 3.0), 0)
    assert b.select("ROI_V1").shape[1] < vc.shape[1]


@pytest.mark.parametrize("value, datatype, stem", [
    (1518878.014910, 1, "n01518878_14910"), (1518878.01491, 2, "n01518878_14910"),
    (2084071.000012, 1, "n02084071_12"), (3452741.999999, 1, "n03452741_999999"),
    (1518878.0, 3, "n01518878"),
])
def test_decode_stimulus_rounds_the_fraction(value: float, datatype: int, stem: str) -> None:
    assert decode_stimulus(value, datatype) == stem


def test_ingest_equals_bdpy_and_per_run_zscore(god_raw: Path, tmp_path: Path) -> None:
    nfstore.ingest("god", god_raw, tmp_path / "s.zarr")
    store = nfstore.open_store(tmp_path / "s.zarr")
    assert store.subjects() == ["god/sub-01", "god/sub-02"]
    b = bdpy.BData(str(god_raw / "Subject2.h5"))
    raw, dt, run = b.select("VoxelData"), b.select("DataType").ravel(), b.select("Run").ravel()
    want = np.empty_like(raw)
    for key in np.unique(dt * 1000 + run):  # per-run z-score, ddof=0 (sklearn.preprocessing.scale)
        rows = dt * 1000 + run == key
        want[rows] = scale(raw[rows])
    x = store.betas("god/sub-02")
    np.testing.assert_allclose(x.values, want, atol=2e-5)
    np.testing.assert_array_equal(x.split.values, np.array(["train", "test", "imagery"])[
        dt.astype(int) - 1])
    ids = [decode_stimulus(v, int(d)) for v, d in zip(b.select("stimulus_id").ravel(), dt)]
    assert x.stimulus.values.tolist() == [f"god/{i}" for i in ids]
    ds = store.dataset("god/sub-02")
    masks = dict(zip(ds.roi.values.tolist(), ds.roi_mask.values))
    vc_cols = b.get_metadata("ROI_V1", where="VoxelData") == 1
    np.testing.assert_array_equal(masks["V1"], vc_cols)
    np.testing.assert_array_equal(masks["LVC"], masks["V1"] | masks["V2"] | masks["V3"])
    np.testing.assert_allclose(ds.voxel_x_mm.values, b.get_metadata("voxel_x", where="VoxelData"))
    np.testing.assert_array_equal(ds.voxel_i.values * 3.0 + store.attrs("god/sub-02")[
        "grid_origin_mm"][0], ds.voxel_x_mm.values)
    avg = store.betas("god/sub-02", split="test", average_repeats=True)
    assert avg.sizes["trial"] == 10 and (avg.n_repeats.values == 3).all()
    px = store.images(avg.stimulus)
    assert px.shape == (10, 48, 48, 3)
    with pytest.raises(nfstore.QueryError, match="name only a category"):
        store.images(store.betas("god/sub-02", split="imagery").stimulus)


def test_legacy_spellings_give_the_same_store(tmp_path: Path) -> None:
    for name, legacy in (("new", False), ("old", True)):
        synthesize("god", tmp_path / name, subjects=(1,), legacy_names=legacy, seed=2)
        nfstore.ingest("god", tmp_path / name, tmp_path / f"{name}.zarr")
    with h5py.File(tmp_path / "old/Subject1.h5") as f:
        assert "dataSet" in f and "metaData" in f
        assert h5py.check_string_dtype(f["metaData/key"].dtype).length is None  # vlen strings
    a, b = (nfstore.open_store(tmp_path / f"{n}.zarr") for n in ("new", "old"))
    np.testing.assert_array_equal(a.betas("god/sub-01").values, b.betas("god/sub-01").values)
    assert b.attrs("god/sub-01")["bdata_layout"] == ["dataSet", "metaData"]


def test_images_elsewhere(god_copy: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "imagenet_subset"
    (god_copy / "images").rename(elsewhere)
    with pytest.raises(nfstore.MissingFileError, match="missing image referenced by Subject1.h5"):
        nfstore.ingest("god", god_copy, tmp_path / "s.zarr", subjects=["1"])
    nfstore.ingest("god", god_copy, tmp_path / "s.zarr", subjects=["1"],
                   options=Options(images=str(elsewhere)))
    store = nfstore.open_store(tmp_path / "s.zarr")
    assert store.images(store.betas("god/sub-01", split="train").stimulus[:3]).shape[0] == 3


def _drop_voxeldata(raw: Path) -> str:
    with h5py.File(raw / "Subject1.h5", "r+") as f:
        keys = [k.decode() for k in f["metadata/key"][()]]
        keys[keys.index("VoxelData")] = "VoxelDataX"
        del f["metadata/key"]
        f["metadata/key"] = [k.encode() for k in keys]
    return "Subject1.h5: expected metadata key 'VoxelData'; found ['Run'"


def _no_bdata(raw: Path) -> str:
    with h5py.File(raw / "Subject1.h5", "w") as f:
        f["betas"] = np.zeros((3, 3))
    return "Subject1.h5: expected BData groups 'dataset' (or 'dataSet') and 'metadata'"


def _missing_image(raw: Path) -> str:
    victim = next((raw / "images/test").iterdir())
    victim.unlink()
    return f"{victim.name}: missing image referenced by Subject1.h5 (1 missing)"


def _corrupt(raw: Path) -> str:
    (raw / "Subject1.h5").write_bytes(b"garbage" * 50)
    return "Subject1.h5: cannot read as BData HDF5"


def _voxel_columns(f: h5py.File) -> np.ndarray:
    keys = [k.decode() for k in f["metadata/key"][()]]
    return np.flatnonzero(f["metadata/value"][()][keys.index("VoxelData")] == 1)


def _rewrite_dataset(raw: Path, change) -> None:
    with h5py.File(raw / "Subject1.h5", "r+") as f:
        data = change(f["dataset"][()], _voxel_columns(f))
        del f["dataset"]
        f.create_dataset("dataset", data=data)


def _nan_voxels(raw: Path) -> str:
    def change(d: np.ndarray, voxels: np.ndarray) -> np.ndarray:
        d[3, voxels[:4]] = np.nan
        return d
    _rewrite_dataset(raw, change)
    return "Subject1.h5: expected finite betas; found 4 NaN and 0 infinite (as float32) " \
           "values in 1 of"


def _int_dataset(raw: Path) -> str:
    _rewrite_dataset(raw, lambda d, v: np.rint(d * 1000).astype(np.int64))
    return "Subject1.h5: expected a float dataset (float16, float32 or float64); found int64"


@pytest.mark.parametrize("break_tree", [_drop_voxeldata, _no_bdata, _missing_image, _corrupt,
                                        _nan_voxels, _int_dataset],
                         ids=lambda f: f.__name__.strip("_"))
def test_errors_are_one_line_and_store_unchanged(god_copy: Path, nsd_store: Path,
                                                 break_tree) -> None:
    message = break_tree(god_copy)
    assert_fails_cleanly("god", god_copy, nsd_store, message, subjects=["1"])


def test_three_datasets_in_one_store(nsd_store: Path, bold_raw: Path, god_raw: Path) -> None:
    nfstore.ingest("bold5000", bold_raw, nsd_store, subjects=["4"])
    nfstore.ingest("god", god_raw, nsd_store, subjects=["2"])
    store = nfstore.open_store(nsd_store)
    assert store.subjects() == ["nsd/subj01", "nsd/subj02", "bold5000/CSI4", "god/sub-02"]
    info = store.info()
    voxels = {k: v["voxels"] for k, v in info.items()}
    assert len(set(voxels.values())) == 4  # native voxel counts, no padding
    assert info["god/sub-02"]["imagery"] == 20 and info["bold5000/CSI4"]["imagery"] == 0
    from nfstore.schema import validate_store

    assert validate_store(store) == []
    for key in store.subjects():
        x = store.betas(key, split="test", average_repeats=True)
        assert store.images(x.stimulus[:2]).values.dtype == np.uint8
