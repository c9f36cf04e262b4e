"""Store API: lazy queries, repeat averaging, stimulus pixels, export, query errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest
import xarray as xr

import nfstore
from nfstore.export import write_query
from nfstore.readers.nsd import STIMULI


def test_subjects_and_rois(nsd_store_ro: Path) -> None:
    store = nfstore.open_store(nsd_store_ro)
    assert store.subjects() == ["nsd/subj01", "nsd/subj02"]
    assert store.subjects("bold5000") == []
    rois = store.rois("nsd/subj01")
    assert {"V1", "V2", "V3", "V4", "EarlyVis", "nsdgeneral", "prf-visualrois/V1v"} <= set(rois)


def test_open_and_query_read_no_beta_chunks(nsd_store: Path) -> None:
    """Delete every beta chunk: opening and building queries still work, computing fails
    with an error naming the lost chunk (never fill values)."""
    for chunks in nsd_store.glob("nsd/*/betas/c"):
        shutil.rmtree(chunks)
    store = nfstore.open_store(nsd_store)
    x = store.betas("nsd/subj01", roi="V1", split="test", average_repeats=True)
    assert isinstance(x.data, da.Array)
    assert x.shape[0] == 10 and x.shape[1] > 0  # 10 shared images, V1 voxels
    with pytest.raises(nfstore.ChunkError, match=r"nsd/subj01/betas: chunk \(\d+, \d+\)"):
        x.values  # noqa: B018  (the first read of a beta chunk)


def test_roi_union_and_split(nsd_store_ro: Path) -> None:
    store = nfstore.open_store(nsd_store_ro)
    ds = store.dataset("nsd/subj01")
    masks = dict(zip(ds.roi.values.tolist(), ds.roi_mask.values))
    x = store.betas("nsd/subj01", roi=["V1", "V4"], split="train")
    assert x.sizes["voxel"] == int((masks["V1"] | masks["V4"]).sum())
    assert set(x.split.values.tolist()) == {"train"}
    full = store.betas("nsd/subj01").values
    sel = (ds.split.values == "train")
    np.testing.assert_array_equal(x.values, full[sel][:, masks["V1"] | masks["V4"]])


def test_average_repeats_equals_numpy_mean(nsd_store_ro: Path) -> None:
    store = nfstore.open_store(nsd_store_ro)
    x = store.betas("nsd/subj02", roi="V2", split="test")
    avg = store.betas("nsd/subj02", roi="V2", split="test", average_repeats=True)
    assert isinstance(avg.data, da.Array)
    vals, stim = x.values, x.stimulus.values
    for i, s in enumerate(avg.stimulus.values):
        rows = stim == s
        np.testing.assert_allclose(avg.values[i], vals[rows].mean(0), rtol=1e-5, atol=1e-6)
        assert avg.n_repeats.values[i] == rows.sum() == 3
    assert list(avg.stimulus.values) == sorted(set(stim))
    assert set(avg.split.values.tolist()) == {"test"}


def test_images_are_lazy_and_equal_the_brick(nsd_raw: Path, nsd_store_ro: Path) -> None:
    store = nfstore.open_store(nsd_store_ro)
    x = store.betas("nsd/subj01", split="test")
    px = store.images(x.stimulus)
    assert isinstance(px.data, da.Array) and px.dims == ("stimulus", "y", "x", "rgb")
    with h5py.File(nsd_raw / STIMULI) as f:
        brick = f["imgBrick"][:]
    ids = [int(s.split("/")[1]) for s in x.stimulus.values]
    np.testing.assert_array_equal(px.values, brick[ids])  # unsorted, repeated rows kept


@pytest.mark.parametrize("suffix", [".npy", ".nc", ".zarr"])
def test_write_query_round_trip(nsd_store_ro: Path, tmp_path: Path, suffix: str) -> None:
    x = nfstore.open_store(nsd_store_ro).betas("nsd/subj01", roi="V1", split="test")
    out = write_query(x, tmp_path / f"q{suffix}")
    if suffix == ".npy":
        np.testing.assert_array_equal(np.load(out), x.values)
        return
    back = xr.open_dataset(out, engine="h5netcdf") if suffix == ".nc" else xr.open_zarr(out)
    np.testing.assert_array_equal(back["betas"].values, x.values)
    assert back["stimulus"].values.tolist() == x.stimulus.values.tolist()
    assert back.attrs["roi"] == "V1"
    assert [p.name for p in tmp_path.iterdir()] == [f"q{suffix}"]  # no partial file left


@pytest.mark.parametrize("call, message", [
    (lambda s: s.betas("nsd/subj09"), "'nsd/subj09' is not in"),
    (lambda s: s.betas("nsd/subj01", roi="V9"), "roi: ['V9'] not available"),
    (lambda s: s.betas("nsd/subj01", split="val"), "split: expected one of"),
    (lambda s: s.images(["nsd/99999"]), "not in the stimulus table"),
    (lambda s: s.stimuli("god"), "'god' has no stimulus table"),
])
def test_query_errors_name_the_option(nsd_store_ro: Path, call, message: str) -> None:
    store = nfstore.open_store(nsd_store_ro)
    with pytest.raises(nfstore.QueryError) as err:
        call(store)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not str(err.value).startswith("--")  # the library names parameters, not flags


def test_write_query_rejects_unknown_suffix(nsd_store_ro: Path, tmp_path: Path) -> None:
    x = nfstore.open_store(nsd_store_ro).betas("nsd/subj01", roi="V1")
    with pytest.raises(nfstore.OptionError, match=r"^out: expected a file ending in .npy"):
        write_query(x, tmp_path / "q.csv")


def test_average_repeats_never_hides_a_nonfinite_trial(nsd_store: Path) -> None:
    import zarr

    st = nfstore.open_store(nsd_store)
    ds = st.dataset("nsd/subj01")
    stim = ds.stimulus.values
    repeated = next(s for s in stim if (stim == s).sum() > 1)
    row = int(np.flatnonzero(stim == repeated)[0])
    zarr.open_array(str(nsd_store / "nsd/subj01/betas"), mode="r+")[row, 0] = np.nan
    x = nfstore.open_store(nsd_store).betas("nsd/subj01", average_repeats=True)
    got = x.isel(trial=int(np.flatnonzero(x.stimulus.values == repeated)[0])).values
    assert np.isnan(got[0]) and np.isfinite(got[1:]).all()
