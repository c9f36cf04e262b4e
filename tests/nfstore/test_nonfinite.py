"""Ingest's non-finite policy and real NIfTI headers: NaN betas refused or stored as 0 and
counted (`nonfinite`), on one machine and on a Dask cluster, through the library and the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import nfstore
from nfstore.schema import validate_store
from tests.conftest import assert_fails_cleanly
from tests.nfstore.test_reliability import (
    CTAB,
    ROI_DIR,
    SESSION,
    _h5_float64_overflow,
    _h5_session2,
    _nifti_float_nan,
    _x_flipped,
)


def _session_rows(store: Path, session: int) -> np.ndarray:
    """Betas of subj01's session (40 trials) in C order of the grid."""
    from tests.nfstore.test_ingest_nsd import _c_order

    st = nfstore.open_store(store)
    x = st.betas("nsd/subj01").values[:, _c_order(st, "nsd/subj01")]
    return x[(session - 1) * 40: session * 40]


def test_nonfinite_zero_stores_zero_and_counts(raw_copy: Path, nsd_store_ro: Path,
                                               tmp_path: Path) -> None:
    """NaN left out of the session's statistics, stored as 0, counted and reported."""
    _nifti_float_nan(raw_copy)
    store = tmp_path / "z.zarr"
    summary = nfstore.ingest("nsd", raw_copy, store, subjects=["1"], nonfinite="zero")
    assert summary.nonfinite == {"nsd/subj01": 5}
    assert "5 non-finite betas stored as 0 (nsd/subj01: 5)" in summary.line()
    st = nfstore.open_store(store)
    norm = st.attrs("nsd/subj01")["normalization"]
    assert norm["nonfinite"] == "zero" and norm["nonfinite_values"] == 5
    assert validate_store(st) == []
    for s in (1, 2):  # untouched sessions: as without the option
        np.testing.assert_array_equal(_session_rows(store, s), _session_rows(nsd_store_ro, s))
    # session 3, directly: mean and std of each voxel's finite train values
    general = np.asanyarray(nib.load(raw_copy / ROI_DIR / "nsdgeneral.nii.gz").dataobj) == 1
    x = nib.load(raw_copy / (SESSION.format(3) + ".nii.gz")).get_fdata()[general].T / 300.0
    train = st.dataset("nsd/subj01").split.values[80:] == "train"
    mean = np.nanmean(x[train], axis=0)
    std = np.nanstd(x[train], axis=0)
    want = np.where(np.isnan(x), 0.0, (x - mean) / np.where(std > 0, std, np.inf))
    got = _session_rows(store, 3)
    assert np.isfinite(got).all() and (got[11, :5] == 0).all()
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_nonfinite_zero_with_statistics_across_sessions(raw_copy: Path, tmp_path: Path) -> None:
    """train-global: one statistics pass over every session, infinities left out there too."""
    _h5_float64_overflow(raw_copy)
    clean = tmp_path / "clean"
    shutil.copytree(raw_copy, clean)
    _h5_session2(clean, lambda d: np.where(np.abs(d) < 1e38, d, np.nan))
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    with pytest.raises(nfstore.ReaderError, match="found 0 NaN and 5 infinite"):
        nfstore.ingest("nsd", raw_copy, a, subjects=["1"], normalization="train-global")
    assert not a.exists()
    nfstore.ingest("nsd", raw_copy, a, subjects=["1"], normalization="train-global",
                   nonfinite="zero")
    nfstore.ingest("nsd", clean, b, subjects=["1"], normalization="train-global",
                   nonfinite="zero")  # NaN where the other has inf: the same store
    got = nfstore.open_store(a).betas("nsd/subj01").values
    np.testing.assert_array_equal(got, nfstore.open_store(b).betas("nsd/subj01").values)
    assert np.isfinite(got).all() and (got == 0).sum() >= 5
    assert nfstore.open_store(a).attrs("nsd/subj01")["normalization"]["nonfinite_values"] == 5


def test_nonfinite_policy_is_checked(nsd_raw: Path, tmp_path: Path) -> None:
    with pytest.raises(nfstore.OptionError, match=r"nonfinite: expected one of \['error', "
                                                  r"'zero'\]; found 'drop'"):
        nfstore.ingest("nsd", nsd_raw, tmp_path / "s.zarr", nonfinite="drop")
    assert not (tmp_path / "s.zarr").exists()


def _reheader(raw: Path, header: nib.Nifti1Header, flip_session: int | None = None) -> None:
    """Every NIfTI file of subj01 on a real scanner header's affine (oblique, big-endian);
    ``flip_session``'s betas with x reversed in storage and affine."""
    affine = header.get_best_affine()
    files = sorted((raw / ROI_DIR).glob("*.nii.gz")) + [
        raw / (SESSION.format(s) + ".nii.gz") for s in (1, 2, 3)]
    for path in files:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
        h = header.copy()
        h.set_data_dtype(data.dtype)
        flip = flip_session is not None and path.name == f"betas_session{flip_session:02d}.nii.gz"
        aff = _x_flipped(affine, data.shape[0]) if flip else affine
        nib.save(nib.Nifti1Image(data[::-1] if flip else data, aff, h), path)


def test_real_header_affine_ingests_and_its_flip_is_refused(raw_copy: Path, nsd_store_ro: Path,
                                                            tmp_path: Path) -> None:
    from tests.realdata import nibabel_test_files

    header = nib.load(nibabel_test_files() / "anatomical.nii").header  # sform/qform code 2
    assert header.endianness == ">" and header["sform_code"] == 2
    _reheader(raw_copy, header)
    store = tmp_path / "s.zarr"
    nfstore.ingest("nsd", raw_copy, store, subjects=["1"])
    np.testing.assert_array_equal(nfstore.open_store(store).betas("nsd/subj01").values,
                                  nfstore.open_store(nsd_store_ro).betas("nsd/subj01").values)
    _reheader(raw_copy, header, flip_session=2)
    want = np.round(header.get_best_affine()[:3], 4) + 0.0
    assert_fails_cleanly("nsd", raw_copy, tmp_path / "f.zarr",
                         f"betas_session02.nii.gz: expected the affine of nsdgeneral.nii.gz "
                         f"{want.tolist()}; found [[{-want[0, 0]}, ", subjects=["1"])


def test_qform_only_betas_match_within_tolerance(raw_copy: Path, nsd_store_ro: Path,
                                                 tmp_path: Path) -> None:
    """The same affine held as a quaternion (qform, float32 rounding) instead of an sform."""
    path = raw_copy / (SESSION.format(2) + ".nii.gz")
    img = nib.load(path)
    img.header.set_sform(None, code=0)
    img.header.set_qform(img.affine, code=1)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), None, img.header), path)
    assert nib.load(path).header["sform_code"] == 0
    store = tmp_path / "q.zarr"
    nfstore.ingest("nsd", raw_copy, store, subjects=["1"])
    np.testing.assert_array_equal(nfstore.open_store(store).betas("nsd/subj01").values,
                                  nfstore.open_store(nsd_store_ro).betas("nsd/subj01").values)


def test_ctab_with_utf8_byte_order_mark_reads_the_same(raw_copy: Path, nsd_store_ro: Path,
                                                       tmp_path: Path) -> None:
    (raw_copy / CTAB).write_bytes(b"\xef\xbb\xbf" + (raw_copy / CTAB).read_bytes())
    store = tmp_path / "c.zarr"
    nfstore.ingest("nsd", raw_copy, store, subjects=["1"])
    got = nfstore.open_store(store).dataset("nsd/subj01").roi.values.tolist()
    assert "prf-visualrois/V1v" in got
    assert got == nfstore.open_store(nsd_store_ro).dataset("nsd/subj01").roi.values.tolist()


def test_nonfinite_on_a_cluster_as_here(raw_copy: Path, tmp_path: Path) -> None:
    """Workers apply the same policy: the error reaches the caller; "zero" gives the same store."""
    from distributed import LocalCluster

    _nifti_float_nan(raw_copy)
    here, there = tmp_path / "here.zarr", tmp_path / "there.zarr"
    nfstore.ingest("nsd", raw_copy, here, subjects=["1"], nonfinite="zero")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        with pytest.raises(nfstore.ReaderError, match="found 5 NaN"):
            nfstore.ingest("nsd", raw_copy, there, subjects=["1"],
                           scheduler=cluster.scheduler_address)
        summary = nfstore.ingest("nsd", raw_copy, there, subjects=["1"], nonfinite="zero",
                                 scheduler=cluster.scheduler_address)
    assert summary.nonfinite == {"nsd/subj01": 5}
    a, b = nfstore.open_store(here), nfstore.open_store(there)
    np.testing.assert_array_equal(a.betas("nsd/subj01").values, b.betas("nsd/subj01").values)
    assert a.attrs("nsd/subj01")["normalization"] == b.attrs("nsd/subj01")["normalization"]


def test_cli_nonfinite_flag(raw_copy: Path, tmp_path: Path) -> None:
    """`nf ingest --nonfinite`: the default refuses in one line; `zero` stores and reports."""
    from click.testing import CliRunner
    from nf.main import _register, cli

    _register()
    _nifti_float_nan(raw_copy)
    store = tmp_path / "cli.zarr"
    args = ["ingest", "nsd", str(raw_copy), "--store", str(store), "--subjects", "1",
            "--no-progress"]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 1 and "found 5 NaN" in refused.output
    assert "Traceback" not in refused.output and not store.exists()
    done = CliRunner().invoke(cli, args + ["--nonfinite", "zero"])
    assert done.exit_code == 0, done.output
    assert "5 non-finite betas stored as 0" in done.output
