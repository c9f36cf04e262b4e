"""BOLD5000: generator layout, ingest against scipy.io + scikit-learn, errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from sklearn.preprocessing import StandardScaler

import nfstore
from nfstore.readers.bold5000 import ROI_KEYS, STIMULI, TEST_LISTS, Options
from tests.conftest import assert_fails_cleanly

PATTERNS = {"COCO": r"COCO_train2014_\d{12}\.jpg", "ImageNet": r"n\d{8}_\d+\.JPEG",
            "Scene": r"[a-zA-Z_]+\d*\.jpg"}


def _stim_list(raw: Path, n: int) -> list[str]:
    return (raw / f"ROIs/stim_lists/CSI0{n}_stim_lists.txt").read_text().split()


def test_layout_and_file_names(bold_raw: Path) -> None:
    for folder, pattern in PATTERNS.items():
        names = [p.name for p in (bold_raw / STIMULI / folder).iterdir()]
        assert names and all(re.fullmatch(pattern, n) for n in names), folder
    test = (bold_raw / TEST_LISTS[0]).read_text().split()
    names = _stim_list(bold_raw, 1)
    reps = [n for n in names if n.startswith("rep_")]
    assert {n[4:] for n in reps} == set(test) and len(reps) == 4 * len(test)
    mat = scipy.io.loadmat(bold_raw / "ROIs/CSI1/mat/CSI1_ROIs_TR34.mat")
    assert set(ROI_KEYS) <= set(mat) and all(mat[k].shape[0] == len(names) for k in ROI_KEYS)
    with h5py.File(bold_raw / "ROIs/CSI1/h5/CSI1_ROIs_TR34.h5") as f:  # MATLAB orientation
        np.testing.assert_array_equal(f["LHPPA"][()], mat["LHPPA"].T)
    tr3, tr4 = (scipy.io.loadmat(bold_raw / f"ROIs/CSI1/mat/CSI1_ROIs_{t}.mat")["RHLOC"]
                for t in ("TR3", "TR4"))
    np.testing.assert_allclose(mat["RHLOC"], (tr3 + tr4) / 2)
    runs = sorted((bold_raw / "BOLD5000_Stimuli/Stimuli_Presentation_Lists/CSI1").glob("*/*.txt"))
    assert sum((r.read_text().split() for r in runs), []) == names
    assert len(_stim_list(bold_raw, 4)) < len(names)  # CSI4 has fewer sessions


def _expected(raw: Path, n: int) -> np.ndarray:
    mat = scipy.io.loadmat(raw / f"ROIs/CSI{n}/mat/CSI{n}_ROIs_TR34.mat")
    x = np.hstack([mat[k] for k in ROI_KEYS])
    names = _stim_list(raw, n)
    test = set((raw / TEST_LISTS[0]).read_text().split())
    is_test = np.array([name.removeprefix("rep_") in test for name in names])
    sess_dirs = sorted((raw / f"BOLD5000_Stimuli/Stimuli_Presentation_Lists/CSI{n}").iterdir())
    session = np.concatenate([np.full(sum(len(r.read_text().split()) for r in d.glob("*.txt")),
                                      i + 1) for i, d in enumerate(sess_dirs)])
    z = np.empty_like(x)
    for s in np.unique(session):
        rows = session == s
        scaler = StandardScaler().fit(x[rows & ~is_test])
        z[rows] = scaler.transform(x[rows])
    return z


def test_ingest_equals_direct_computation(bold_raw: Path, tmp_path: Path) -> None:
    nfstore.ingest("bold5000", bold_raw, tmp_path / "s.zarr")
    store = nfstore.open_store(tmp_path / "s.zarr")
    assert store.subjects() == ["bold5000/CSI1", "bold5000/CSI4"]
    for n in (1, 4):
        x = store.betas(f"bold5000/CSI{n}")
        np.testing.assert_allclose(x.values, _expected(bold_raw, n), atol=2e-5)
        names = _stim_list(bold_raw, n)
        assert x.stimulus.values.tolist() == [f"bold5000/{m.removeprefix('rep_').rsplit('.', 1)[0]}"
                                              for m in names]
        assert (x.split.values == "test").sum() == sum(m.startswith("rep_") for m in names)
        assert (x.voxel_i.values == -1).all()
    ds = store.dataset("bold5000/CSI1")
    masks = dict(zip(ds.roi.values.tolist(), ds.roi_mask.values))
    mat = scipy.io.loadmat(bold_raw / "ROIs/CSI1/mat/CSI1_ROIs_TR34.mat")
    assert masks["PPA"].sum() == mat["LHPPA"].shape[1] + mat["RHPPA"].shape[1]
    np.testing.assert_array_equal(masks["PPA"], masks["LHPPA"] | masks["RHPPA"])
    assert store.attrs("bold5000/CSI1")["normalization"]["group"] == "session"
    assert sorted(set(ds.session.values.tolist())) == [1, 2, 3]
    assert (ds.run.values >= 1).all() and ds.run.values.max() == 3  # runs within sessions


def test_transposed_h5_gives_the_same_store(bold_raw: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    nfstore.ingest("bold5000", bold_raw, a, subjects=["4"], options=Options(format="mat"))
    nfstore.ingest("bold5000", bold_raw, b, subjects=["CSI4"], options=Options(format="h5"))
    sa, sb = (nfstore.open_store(p) for p in (a, b))
    assert sb.attrs("bold5000/CSI4")["roi_file_transposed"] is True
    key = "bold5000/CSI4"
    np.testing.assert_array_equal(sa.betas(key).values, sb.betas(key).values)


def test_without_presentation_lists_normalizes_per_subject(bold_copy: Path, tmp_path: Path) -> None:
    shutil.rmtree(bold_copy / "BOLD5000_Stimuli/Stimuli_Presentation_Lists")
    nfstore.ingest("bold5000", bold_copy, tmp_path / "s.zarr", subjects=["1"],
                   options=Options(tr="TR2"))
    store = nfstore.open_store(tmp_path / "s.zarr")
    x = store.betas("bold5000/CSI1")
    mat = scipy.io.loadmat(bold_copy / "ROIs/CSI1/mat/CSI1_ROIs_TR2.mat")
    raw = np.hstack([mat[k] for k in ROI_KEYS])
    train = x.split.values == "train"
    np.testing.assert_allclose(x.values, StandardScaler().fit(raw[train]).transform(raw), atol=2e-5)
    assert store.attrs("bold5000/CSI1")["normalization"]["group"] == "subject"
    assert set(x.session.values.tolist()) == {1}


def _extra_line(raw: Path) -> str:
    path = raw / "ROIs/stim_lists/CSI01_stim_lists.txt"
    path.write_text(path.read_text() + "extra_image.jpg\n")
    return "CSI1_ROIs_TR34.mat: expected 181 trials (CSI01_stim_lists.txt lines) in every ROI " \
           "variable; found [180] rows"


def _unknown_key(raw: Path) -> str:
    path = raw / "ROIs/CSI1/mat/CSI1_ROIs_TR34.mat"
    mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    scipy.io.savemat(path, {**mat, "LHFOO": mat["LHPPA"]})
    return "CSI1_ROIs_TR34.mat: expected ROI variables ['LHEarlyVis'"


def _missing_image(raw: Path) -> str:
    victim = next((raw / STIMULI / "COCO").iterdir())
    victim.unlink()
    return f"missing image for '{victim.stem}' referenced by"


def _missing_test_list(raw: Path) -> str:
    (raw / TEST_LISTS[0]).unlink()
    return "repeated_stimuli_113_list.txt: missing file"


def _runs_disagree(raw: Path) -> str:
    run = sorted((raw / "BOLD5000_Stimuli/Stimuli_Presentation_Lists/CSI1").glob("*/*.txt"))[0]
    lines = run.read_text().split()
    run.write_text("\n".join(lines[1:] + lines[:1]))
    return "Stimuli_Presentation_Lists/CSI1: expected the runs to list the 180 trials"


MAT = "ROIs/CSI1/mat/CSI1_ROIs_TR34.mat"
H5 = "ROIs/CSI1/h5/CSI1_ROIs_TR34.h5"


def _rewrite_mat(raw: Path, **changes: np.ndarray) -> None:
    mat = {k: v for k, v in scipy.io.loadmat(raw / MAT).items() if not k.startswith("__")}
    scipy.io.savemat(raw / MAT, {**mat, **changes})


def _mat_nan(raw: Path) -> str:
    ppa = scipy.io.loadmat(raw / MAT)["LHPPA"]
    ppa[5, :3] = np.nan
    _rewrite_mat(raw, LHPPA=ppa)
    return "CSI1_ROIs_TR34.mat: expected finite betas; found 3 NaN and 0 infinite (as float32) " \
           "values in 1 of"


def _mat_int16(raw: Path) -> str:
    _rewrite_mat(raw, RHRSC=np.rint(scipy.io.loadmat(raw / MAT)["RHRSC"]).astype(np.int16))
    return "CSI1_ROIs_TR34.mat: expected ROI variables of a float type (double, single); found " \
           "RHRSC of type int16"


def _h5_only(raw: Path, change) -> None:
    """Keep only the .h5 ROI file (auto then reads it) and rewrite its LHOPA with ``change``."""
    (raw / MAT).unlink()
    with h5py.File(raw / H5, "r+") as f:
        data = change(f["LHOPA"][()])
        del f["LHOPA"]
        f.create_dataset("LHOPA", data=data)


def _h5_float64_overflow(raw: Path) -> str:
    def change(d: np.ndarray) -> np.ndarray:
        d = d.astype(np.float64)
        d[:2, 4] = 1e300  # (voxels, trials) as MATLAB writes it: trial 5, two voxels
        return d
    _h5_only(raw, change)
    return "CSI1_ROIs_TR34.h5: expected finite betas; found 0 NaN and 2 infinite (as float32) " \
           "values in 1 of"


def _h5_complex(raw: Path) -> str:
    _h5_only(raw, lambda d: d.astype(np.complex64))
    return "CSI1_ROIs_TR34.h5: expected ROI variables of a float type (float16, float32, " \
           "float64); found LHOPA of type complex64"


def _stim_list_latin1(raw: Path) -> str:
    path = raw / "ROIs/stim_lists/CSI01_stim_lists.txt"
    path.write_bytes(path.read_bytes().replace(b".jpg", "é.jpg".encode("latin-1"), 1))
    return "CSI01_stim_lists.txt: expected UTF-8 text (a BOLD5000 stimulus list); found byte 0xe9"


@pytest.mark.parametrize("break_tree", [_extra_line, _unknown_key, _missing_image,
                                        _missing_test_list, _runs_disagree, _mat_nan, _mat_int16,
                                        _h5_float64_overflow, _h5_complex, _stim_list_latin1],
                         ids=lambda f: f.__name__.strip("_"))
def test_errors_are_one_line_and_store_unchanged(bold_copy: Path, nsd_store: Path,
                                                 break_tree) -> None:
    message = break_tree(bold_copy)
    assert_fails_cleanly("bold5000", bold_copy, nsd_store, message, subjects=["1"])


def test_nonfinite_zero_stores_zero(bold_copy: Path, tmp_path: Path) -> None:
    _mat_nan(bold_copy)
    summary = nfstore.ingest("bold5000", bold_copy, tmp_path / "s.zarr", subjects=["1"],
                             nonfinite="zero")
    assert summary.nonfinite == {"bold5000/CSI1": 3}
    store = nfstore.open_store(tmp_path / "s.zarr")
    x = store.betas("bold5000/CSI1", roi="LHPPA").values
    assert np.isfinite(x).all() and (x[5, :3] == 0).all() and (x[:, :3] != 0).sum() > 100
    assert store.attrs("bold5000/CSI1")["normalization"]["nonfinite_values"] == 3
