"""``--normalization``: each choice against a direct computation with nibabel and scikit-learn."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

import nfstore
from nfstore.normalize import apply_stats, group_stats, zscore_groups
from tests.nfstore.test_ingest_nsd import BETAS, ROI, _c_order


def _raw(raw: Path, store: nfstore.Store) -> tuple[np.ndarray, np.ndarray]:
    """Percent-signal-change betas (trials, store voxel order) of subj01, and its splits."""
    general = np.asanyarray(nib.load(raw / ROI.format(s="subj01", a="nsdgeneral")).dataobj) == 1
    x = np.concatenate([nib.load(raw / BETAS.format(s="subj01", n=s)).get_fdata()[general].T
                        for s in (1, 2, 3)]) / 300.0
    order = np.argsort(_c_order(store, "nsd/subj01"))
    return x[:, order], store.dataset("nsd/subj01").split.values


@pytest.mark.parametrize("method", ["run", "train-global", "none"])
def test_nsd_normalization_choices(nsd_raw: Path, tmp_path: Path, method: str) -> None:
    store = tmp_path / "nf.zarr"
    nfstore.ingest("nsd", nsd_raw, store, subjects=["1"], normalization=method)
    st = nfstore.open_store(store)
    got = st.betas("nsd/subj01").values
    x, split = _raw(nsd_raw, st)
    ds = st.dataset("nsd/subj01")
    if method == "none":
        want = x
    elif method == "train-global":  # one scaler over every train trial of the subject
        sc = StandardScaler().fit(x[split == "train"])
        want = sc.transform(x)
        want[:, sc.scale_ == 0] = 0
    else:  # each run by its own statistics, test trials included
        want = np.zeros_like(x)
        runs = ds.session.values * 100 + ds.run.values
        for r in np.unique(runs):
            sc = StandardScaler().fit(x[runs == r])
            want[runs == r] = sc.transform(x[runs == r])
            want[np.ix_(runs == r, sc.scale_ == 0)] = 0
    np.testing.assert_allclose(got, want, atol=2e-5)
    norm = st.attrs("nsd/subj01")["normalization"]
    assert norm["option"] == method
    default = tmp_path / "d.zarr"
    nfstore.ingest("nsd", nsd_raw, default, subjects=["1"])
    assert nfstore.open_store(default).attrs("nsd/subj01")["normalization"]["option"] == \
        "session-train"
    assert (st.attrs("nsd/subj01")["ingest_fingerprint"]
            != nfstore.open_store(default).attrs("nsd/subj01")["ingest_fingerprint"])


def test_session_train_is_refused_where_a_session_has_no_train_trials(god_raw: Path,
                                                                       tmp_path: Path) -> None:
    with pytest.raises(nfstore.OptionError, match=r"normalization: session-train needs train "
                       r"trials in every session; god/sub-01 sessions \[2, 3\] have none"):
        nfstore.ingest("god", god_raw, tmp_path / "nf.zarr", subjects=["1"],
                       normalization="session-train")
    assert not (tmp_path / "nf.zarr").exists()
    nfstore.ingest("god", god_raw, tmp_path / "nf.zarr", subjects=["1"],
                   normalization="train-global")
    attrs = nfstore.open_store(tmp_path / "nf.zarr").attrs("god/sub-01")["normalization"]
    assert attrs["statistics_from"] == "train" and attrs["group"] == "subject"


def test_group_stats_over_blocks_equal_one_pass() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (90, 7))
    x[:, 4] = 1.5  # zero std
    groups = np.repeat([0, 1], 45)
    fit = rng.random(90) < 0.7
    blocks = [(x[a:b], groups[a:b], fit[a:b]) for a, b in ((0, 20), (20, 60), (60, 90))]
    z, n_zero = apply_stats(x, groups, group_stats(iter(blocks)))
    want, want_zero = zscore_groups(x, groups, fit)
    np.testing.assert_allclose(z, want, atol=1e-5)
    assert n_zero == want_zero == 2


def test_group_stats_leave_nan_out() -> None:
    """Per-voxel counts: NaN values are left out of mean and std; an all-NaN voxel gets scale 0."""
    rng = np.random.default_rng(1)
    x = rng.normal(2, 3, (40, 6))
    x[[3, 8, 20, 33], 1] = np.nan
    x[:, 5] = np.nan
    groups = np.repeat([1, 2], 20)
    fit = rng.random(40) < 0.8
    parts = [(x[a:b], groups[a:b], fit[a:b]) for a, b in ((0, 15), (15, 27), (27, 40))]
    stats = group_stats(iter(parts), ddof=1)
    for g in (1, 2):
        ref = x[(groups == g) & fit]
        mean, scale = stats[g]
        np.testing.assert_allclose(mean[:5], np.nanmean(ref[:, :5], axis=0), rtol=1e-12)
        np.testing.assert_allclose(scale[:5], 1 / np.nanstd(ref[:, :5], axis=0, ddof=1),
                                   rtol=1e-12)
        assert mean[5] == 0 and scale[5] == 0
