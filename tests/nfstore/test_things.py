"""THINGS-fMRI: the reader contract, and ingest against a direct read of the raw tables
(h5py + pandas, normalization by hand)."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import nfstore
from nfstore.readers.things import THINGSReader
from nfstore.synth import synthesize
from nfstore.synth.things import write_response_data
from nfstore.testing import ReaderTests
from tests.conftest import assert_fails_cleanly

TABLES = "betas_csv"


class TestTHINGSContract(ReaderTests):
    reader_class = THINGSReader
    synth_settings = {"subjects": (1,), "sessions": 2}


@pytest.fixture(scope="module")
def things_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic THINGS tree (sub-01, sub-02). Read-only for tests."""
    out = tmp_path_factory.mktemp("raw") / "things"
    synthesize("things", out, seed=3)
    return out


@pytest.fixture(scope="module")
def things_store(things_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "t.zarr"
    nfstore.ingest("things", things_raw, path)
    return path


@pytest.fixture
def things_copy(things_raw: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(things_raw, tmp_path / "things"))


def _raw_betas(path: Path) -> np.ndarray:
    """ResponseData as peers read it: block0_values (voxels, trials), transposed."""
    with h5py.File(path, "r") as f:
        return f["ResponseData/block0_values"][()].T


def _zscore_sessions(x: np.ndarray, session: np.ndarray, train: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for s in np.unique(session):
        rows = session == s
        fit = x[rows & train]
        out[rows] = (x[rows] - fit.mean(axis=0)) / fit.std(axis=0, ddof=0)
    return out


def test_ingest_equals_per_session_train_zscore(things_raw: Path, things_store: Path) -> None:
    store = nfstore.open_store(things_store)
    assert store.subjects() == ["things/sub-01", "things/sub-02"]
    meta = pd.read_csv(things_raw / TABLES / "sub-02_StimulusMetadata.csv")
    raw = _raw_betas(things_raw / TABLES / "sub-02_ResponseData.h5")[meta["trial_id"]]
    want = _zscore_sessions(raw, meta["session"].to_numpy(), (meta["trial_type"] == "train")
                            .to_numpy())
    x = store.betas("things/sub-02")
    np.testing.assert_allclose(x.values, want, atol=2e-5)
    stems = [Path(s).stem for s in meta["stimulus"]]
    assert x.stimulus.values.tolist() == [f"things/{s}" for s in stems]
    assert x.split.values.tolist() == meta["trial_type"].tolist()
    np.testing.assert_array_equal(x.session.values, meta["session"])
    np.testing.assert_array_equal(x.run.values, meta["run"])
    vox = pd.read_csv(things_raw / TABLES / "sub-02_VoxelMetadata.csv")
    ds = store.dataset("things/sub-02")
    for axis in "ijk":
        np.testing.assert_array_equal(ds[f"voxel_{axis}"].values, vox["voxel_" + "xyz"[
            "ijk".index(axis)]])
    avg = store.betas("things/sub-02", split="test", average_repeats=True)
    assert avg.sizes["trial"] == 3 and (avg.n_repeats.values == 3).all()
    assert store.images(avg.stimulus).shape == (3, 32, 32, 3)


def test_roi_sets_and_aliases(things_raw: Path, things_store: Path) -> None:
    vox = pd.read_csv(things_raw / TABLES / "sub-01_VoxelMetadata.csv")
    columns = list(vox.columns[list(vox.columns).index("V1"):])
    natives = [c.replace("\n", "") for c in columns if c != "lSTS"]
    ds = nfstore.open_store(things_store).dataset("things/sub-01")
    names = ds.roi.values.tolist()
    assert names == natives + ["V4", "FFA", "PPA", "OPA", "RSC", "LOC"]
    masks = dict(zip(names, ds.roi_mask.values))
    for c in columns:
        if c != "lSTS":
            np.testing.assert_array_equal(masks[c.replace("\n", "")], vox[c].to_numpy() == 1)
    col = {c: vox[c].to_numpy() == 1 for c in columns}
    np.testing.assert_array_equal(masks["OPA"], col["lTOS"] | col["rTOS"])
    np.testing.assert_array_equal(masks["V4"], col["hV4"])
    np.testing.assert_array_equal(masks["FFA"], col["lFFA"] | col["rFFA"])
    assert "glasser-p9-46v" in names and "lSTS" not in names
    attrs = nfstore.open_store(things_store).attrs("things/sub-01")
    assert attrs["empty_roi_columns_skipped"] == 1 and attrs["empty_roi_columns"] == ["lSTS"]
    assert attrs["catch_trials_dropped"] == 0


@pytest.mark.parametrize("catch_columns", [True, False])
def test_catch_trials_are_dropped(tmp_path: Path, catch_columns: bool) -> None:
    raw = tmp_path / "raw"
    synthesize("things", raw, subjects=(1,), catch_trials=2, seed=5)
    meta = pd.read_csv(raw / TABLES / "sub-01_StimulusMetadata.csv")
    data = raw / TABLES / "sub-01_ResponseData.h5"
    full = _raw_betas(data)
    kept = (meta["trial_type"] != "catch").to_numpy()
    if not catch_columns:  # the release: catch trials have no columns
        write_response_data(data, full[kept].T)
    nfstore.ingest("things", raw, tmp_path / "s.zarr", normalization="none")
    store = nfstore.open_store(tmp_path / "s.zarr")
    np.testing.assert_allclose(store.betas("things/sub-01").values, full[kept], rtol=1e-6)
    assert store.attrs("things/sub-01")["catch_trials_dropped"] == 6 == (~kept).sum()


@pytest.mark.parametrize("layout", [".", "betas_csv/betas_csv"])
def test_tables_found_in_other_folders(things_copy: Path, tmp_path: Path, layout: str) -> None:
    target = things_copy / layout
    tables = things_copy / TABLES
    moved = tmp_path / "tables"
    tables.rename(moved)
    target.mkdir(parents=True, exist_ok=True)
    for p in moved.iterdir():
        p.rename(target / p.name)
    reader = THINGSReader()
    assert reader.list_subjects(things_copy) == ["sub-01", "sub-02"]
    raw = reader.open_subject(things_copy, "2")
    np.testing.assert_allclose(raw.blocks[0].load(), _raw_betas(target / "sub-02_ResponseData.h5")
                               [: raw.blocks[0].stop], rtol=1e-6)


def test_pandas_reads_the_generated_frame(things_raw: Path) -> None:
    pytest.importorskip("tables")
    frame = pd.read_hdf(things_raw / TABLES / "sub-01_ResponseData.h5", "ResponseData")
    np.testing.assert_array_equal(frame.drop(columns="voxel_id").to_numpy(),
                                  _raw_betas(things_raw / TABLES / "sub-01_ResponseData.h5").T)


def _fewer_trial_columns(raw: Path) -> str:
    data = raw / TABLES / "sub-01_ResponseData.h5"
    write_response_data(data, _raw_betas(data)[:-1].T)
    return "sub-01_ResponseData.h5: expected 33 trial columns, one per row of " \
           "sub-01_StimulusMetadata.csv; found 32"


def _no_required_roi(raw: Path) -> str:
    path = raw / TABLES / "sub-01_VoxelMetadata.csv"
    pd.read_csv(path).drop(columns=["rTOS"]).to_csv(path, index=False)
    return "sub-01_VoxelMetadata.csv: expected ROI columns ['V1', 'V2', 'V3', 'hV4', 'lFFA'"


def _table_format(raw: Path) -> str:
    with h5py.File(raw / TABLES / "sub-01_ResponseData.h5", "r+") as f:
        f["ResponseData"].attrs["pandas_type"] = b"frame_table"
    return "sub-01_ResponseData.h5: expected a pandas fixed-format frame"


def _fewer_voxels(raw: Path) -> str:
    path = raw / TABLES / "sub-01_VoxelMetadata.csv"
    pd.read_csv(path).iloc[:-1].to_csv(path, index=False)
    return "sub-01_ResponseData.h5: expected"


def _missing_image(raw: Path) -> str:
    victim = raw / "object_images" / "mouse1" / "mouse1_13s.jpg"
    victim.unlink()
    return "mouse1_13s.jpg: missing image referenced by sub-01_StimulusMetadata.csv (1 missing)"


def _bad_trial_type(raw: Path) -> str:
    path = raw / TABLES / "sub-01_StimulusMetadata.csv"
    meta = pd.read_csv(path)
    meta.loc[4, "trial_type"] = "rest"
    meta.to_csv(path, index=False)
    return "sub-01_StimulusMetadata.csv: expected trial_type train, test or catch; found ['rest']"


@pytest.mark.parametrize("break_tree", [_fewer_trial_columns, _no_required_roi, _table_format,
                                        _fewer_voxels, _missing_image, _bad_trial_type],
                         ids=lambda f: f.__name__.strip("_"))
def test_errors_are_one_line_and_store_unchanged(things_copy: Path, tmp_path: Path,
                                                 break_tree) -> None:
    store = tmp_path / "s.zarr"
    nfstore.ingest("things", things_copy, store, subjects=["2"])
    message = break_tree(things_copy)
    assert_fails_cleanly("things", things_copy, store, message, subjects=["1"])


def test_small_blocks_and_row_chunks_read_the_same_values(things_raw: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from nfstore.readers import _things_files

    monkeypatch.setattr(_things_files, "ROW_CHUNK_VALUES", 7 * 5)  # several row chunks per block
    reader = THINGSReader()
    raw = reader.open_subject(things_raw, "sub-01", reader.parse_options({"block_trials": "5"}))
    assert [b.stop - b.start for b in raw.blocks] == [11, 11, 11]  # whole sessions
    got = np.concatenate([b.load() for b in raw.blocks])
    np.testing.assert_array_equal(got, _raw_betas(things_raw / TABLES / "sub-01_ResponseData.h5")
                                  .astype(np.float32))


def test_voxels_are_checked_against_the_brain_mask(things_copy: Path, tmp_path: Path) -> None:
    import nibabel as nib

    mask_path = things_copy / "brainmasks" / "sub-01_space-T1w_brainmask.nii.gz"
    raw = THINGSReader().open_subject(things_copy, "1")
    mask = nib.load(mask_path)
    assert raw.attrs["volume_shape"] == list(mask.shape)
    np.testing.assert_allclose(raw.attrs["affine"], mask.affine)
    ijk = np.stack([raw.voxels[f"voxel_{a}"] for a in "ijk"], axis=1)
    np.testing.assert_array_equal(ijk, np.argwhere(np.asanyarray(mask.dataobj) > 0))
    path = things_copy / TABLES / "sub-01_VoxelMetadata.csv"
    vox = pd.read_csv(path)
    vox["voxel_x"] += 1  # 1-based coordinates
    vox.to_csv(path, index=False)
    store = tmp_path / "s.zarr"
    nfstore.ingest("things", things_copy, store, subjects=["2"])
    assert_fails_cleanly("things", things_copy, store, "sub-01_VoxelMetadata.csv: expected "
                         "voxel_x/y/z to index the", subjects=["1"])
    mask_path.unlink()  # without a brain mask, the coordinates are taken as they are
    assert THINGSReader().open_subject(things_copy, "1").attrs["brainmask"] is None
