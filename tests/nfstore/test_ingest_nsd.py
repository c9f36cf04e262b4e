"""NSD ingest against a direct computation with nibabel, scipy.io and scikit-learn."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io
from sklearn.preprocessing import StandardScaler

import nfstore
from nfstore.readers.nsd import EXPDESIGN, Options

BETAS = "nsddata_betas/ppdata/{s}/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session{n:02d}.nii.gz"
ROI = "nsddata/ppdata/{s}/func1pt8mm/roi/{a}.nii.gz"


def _expected(raw: Path, subject: str, sessions: list[int]) -> tuple[np.ndarray, np.ndarray,
                                                                      np.ndarray]:
    """Betas (trials, voxels in C order of nsdgeneral==1), nsdIds and test flags, directly."""
    general = np.asanyarray(nib.load(raw / ROI.format(s=subject, a="nsdgeneral")).dataobj) == 1
    mat = scipy.io.loadmat(raw / EXPDESIGN)
    mo = mat["masterordering"].ravel().astype(int)
    sub = int(subject[-2:])
    ids = mat["subjectim"][sub - 1, mo - 1].astype(int) - 1
    shared = mat["sharedix"].ravel().astype(int) - 1
    out, all_ids = [], []
    for s in sessions:
        vol = nib.load(raw / BETAS.format(s=subject, n=s)).get_fdata()  # (X, Y, Z, T)
        x = vol[general].T / 300.0
        t = vol.shape[3]
        sid = ids[(s - 1) * t: s * t]
        train = ~np.isin(sid, shared)
        scaler = StandardScaler().fit(x[train])  # population std, train trials only
        z = scaler.transform(x)
        z[:, scaler.scale_ == 0] = 0
        out.append(z)
        all_ids.append(sid)
    sid = np.concatenate(all_ids)
    return np.concatenate(out), sid, np.isin(sid, shared)


def _c_order(store: nfstore.Store, subject: str) -> np.ndarray:
    """Permutation putting the store's voxels into C order of the grid."""
    ds = store.dataset(subject)
    shape = store.attrs(subject)["volume_shape"]
    lin = np.ravel_multi_index((ds.voxel_i.values, ds.voxel_j.values, ds.voxel_k.values), shape)
    return np.argsort(lin)


def test_betas_equal_direct_computation(nsd_raw: Path, nsd_store_ro: Path) -> None:
    store = nfstore.open_store(nsd_store_ro)
    for subject in ("subj01", "subj02"):
        key = f"nsd/{subject}"
        want, ids, test = _expected(nsd_raw, subject, [1, 2, 3])
        x = store.betas(key)
        got = x.values[:, _c_order(store, key)]
        np.testing.assert_allclose(got, want, atol=2e-5)
        np.testing.assert_array_equal(x.stimulus.values, [f"nsd/{i:05d}" for i in ids])
        np.testing.assert_array_equal(x.split.values == "test", test)


def test_trial_coordinates(nsd_raw: Path, nsd_store_ro: Path) -> None:
    store = nfstore.open_store(nsd_store_ro)
    x = store.betas("nsd/subj02")
    resp = pd.read_csv(nsd_raw / "nsddata/ppdata/subj02/behav/responses.tsv", sep="\t")
    np.testing.assert_array_equal(x.session.values, resp["SESSION"])
    np.testing.assert_array_equal(x.run.values, resp["RUN"])
    expected_repeat = resp.groupby("73KID").cumcount().to_numpy()
    np.testing.assert_array_equal(x.repeat.values, expected_repeat)
    assert set(x.source.values.tolist()) == {"measured"}
    attrs = store.attrs("nsd/subj02")
    assert attrs["normalization"]["group"] == "session"
    assert attrs["normalization"]["statistics_from"] == "train"
    assert attrs["normalization"]["ddof"] == 0
    assert attrs["volume_shape"] == list(nib.load(
        nsd_raw / ROI.format(s="subj02", a="nsdgeneral")).shape)
    assert {r["path"] for r in attrs["source_files"]} >= {str(EXPDESIGN)}


def test_roi_masks_match_atlas_files(nsd_raw: Path, nsd_store_ro: Path) -> None:
    store = nfstore.open_store(nsd_store_ro)
    ds = store.dataset("nsd/subj01")
    prf = np.asanyarray(nib.load(nsd_raw / ROI.format(s="subj01", a="prf-visualrois")).dataobj)
    labels = prf[ds.voxel_i.values, ds.voxel_j.values, ds.voxel_k.values]
    masks = dict(zip(ds.roi.values.tolist(), ds.roi_mask.values))
    np.testing.assert_array_equal(masks["V1"], np.isin(labels, [1, 2]))
    np.testing.assert_array_equal(masks["prf-visualrois/V1d"], labels == 2)
    np.testing.assert_array_equal(masks["V4"], labels == 7)
    np.testing.assert_array_equal(masks["EarlyVis"], np.isin(labels, [1, 2, 3, 4, 5, 6]))
    assert masks["nsdgeneral"].all()
    assert {"PPA", "OPA", "RSC", "floc-places/PPA"} <= set(masks)
    # V1 voxels are contiguous on the voxel axis (cheap ROI queries)
    v1 = np.flatnonzero(masks["V1"])
    assert v1.max() - v1.min() + 1 == v1.size


def test_nifti_and_hdf5_sources_give_identical_stores(nsd_raw: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    nfstore.ingest("nsd", nsd_raw, a, subjects=["1"], options=Options(format="nifti"))
    nfstore.ingest("nsd", nsd_raw, b, subjects=["1"], options=Options(format="hdf5"))
    da_, db_ = (nfstore.open_store(p).dataset("nsd/subj01").load() for p in (a, b))
    assert da_.identical(db_.assign_attrs(da_.attrs))
    assert nfstore.open_store(b).attrs("nsd/subj01")["beta_format"] == ["hdf5"]


def test_session_subset_keeps_full_sequence_repeats(nsd_raw: Path, nsd_store_ro: Path,
                                                    tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    nfstore.ingest("nsd", nsd_raw, path, subjects=["subj01"], options=Options(sessions=(2, 3)))
    part = nfstore.open_store(path).betas("nsd/subj01")
    full = nfstore.open_store(nsd_store_ro).betas("nsd/subj01")
    assert part.sizes["trial"] == 80 and set(part.session.values.tolist()) == {2, 3}
    np.testing.assert_array_equal(part.repeat.values, full.repeat.values[40:])
    np.testing.assert_allclose(part.values, full.values[40:])  # per-session statistics


@pytest.mark.parametrize("ddof", [0, 1])
def test_zscore_groups_matches_scipy(ddof: int) -> None:
    from scipy import stats

    from nfstore.normalize import zscore_groups

    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (30, 5)).astype(np.float32)
    x[:, 4] = 7.0  # constant voxel
    groups = np.repeat([1, 2, 3], 10)
    fit = rng.random(30) < 0.7
    z, n_zero = zscore_groups(x, groups, fit, ddof=ddof)
    assert n_zero == 3  # one zero-std voxel in each of the three groups
    for g in (1, 2, 3):
        rows, ref = groups == g, x[(groups == g) & fit]
        want = (x[rows, :4] - ref[:, :4].mean(0)) / ref[:, :4].std(0, ddof=ddof)
        np.testing.assert_allclose(z[rows, :4], want, rtol=1e-5, atol=1e-5)
        if fit[rows].all():
            np.testing.assert_allclose(z[rows, :4], stats.zscore(x[rows, :4], ddof=ddof),
                                       atol=1e-5)
    assert (z[:, 4] == 0).all()
