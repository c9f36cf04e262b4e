"""The synthetic NSD tree is in the original formats, with the documented index bases."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io

from nfstore.errors import OptionError
from nfstore.readers.nsd import EXPDESIGN, STIMULI
from nfstore.synth import synthesize


def test_expdesign_is_matlab_v5_with_one_based_indices(nsd_raw: Path) -> None:
    mat = scipy.io.loadmat(nsd_raw / EXPDESIGN)
    mo, subjectim, sharedix = mat["masterordering"], mat["subjectim"], mat["sharedix"]
    assert mo.shape == (1, 120) and subjectim.shape == (8, 60) and sharedix.shape == (1, 10)
    assert mo.min() == 1 and mo.max() <= 60
    # shared images are the first columns of every subject's list, identical for all
    assert (subjectim[:, :10] == subjectim[0, :10]).all()
    assert set(subjectim[0, :10]) == set(sharedix.ravel())
    assert subjectim.min() >= 1


def test_image_brick_shape_and_dtype(nsd_raw: Path) -> None:
    with h5py.File(nsd_raw / STIMULI, "r") as f:
        d = f["imgBrick"]
        assert d.dtype == np.uint8 and d.shape[1:] == (32, 32, 3)
        n = d.shape[0]
    mat = scipy.io.loadmat(nsd_raw / EXPDESIGN)
    assert mat["subjectim"].max() <= n


def test_betas_nifti_int16_and_hdf5_transposed(nsd_raw: Path) -> None:
    d = nsd_raw / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    img = nib.load(d / "betas_session02.nii.gz")
    assert img.get_data_dtype() == np.dtype(np.int16) and img.shape == (14, 16, 14, 40)
    vol = np.asanyarray(img.dataobj)
    brain = np.asanyarray(nib.load(nsd_raw / "nsddata/ppdata/subj01/func1pt8mm/"
                                   "brainmask.nii.gz").dataobj).astype(bool)
    assert (vol[~brain] == 0).all() and (vol[brain] != 0).mean() > 0.9
    with h5py.File(d / "betas_session02.hdf5", "r") as f:
        assert f["betas"].chunks == (40, 1, 1, 1)
        np.testing.assert_array_equal(f["betas"][:], np.transpose(vol, (3, 2, 1, 0)))


def test_roi_volumes_use_nsd_codes(nsd_raw: Path) -> None:
    roi = nsd_raw / "nsddata/ppdata/subj01/func1pt8mm/roi"
    general = np.asanyarray(nib.load(roi / "nsdgeneral.nii.gz").dataobj)
    prf = np.asanyarray(nib.load(roi / "prf-visualrois.nii.gz").dataobj)
    assert set(np.unique(general)) == {-1, 0, 1}
    assert set(np.unique(prf)) == {-1, 0, 1, 2, 3, 4, 5, 6, 7}
    assert ((general == -1) == (prf == -1)).all()
    v1 = np.isin(prf, [1, 2]).sum() / (general == 1).sum()
    assert 0.05 < v1 < 0.2  # V1 about a tenth of nsdgeneral, as in real NSD


def test_responses_and_stim_info_agree_with_design(nsd_raw: Path) -> None:
    mat = scipy.io.loadmat(nsd_raw / EXPDESIGN)
    # subject 2's 1-based 73k ids, trial by trial
    ids = mat["subjectim"][1, mat["masterordering"].ravel().astype(int) - 1].astype(int)
    resp = pd.read_csv(nsd_raw / "nsddata/ppdata/subj02/behav/responses.tsv", sep="\t")
    assert list(resp.columns[:5]) == ["SUBJECT", "SESSION", "RUN", "TRIAL", "73KID"]
    np.testing.assert_array_equal(resp["73KID"].to_numpy(), ids)
    assert resp.groupby("SESSION").size().tolist() == [40, 40, 40]
    assert resp.groupby(["SESSION", "RUN"]).size().tolist()[:3] == [14, 13, 13]
    info = pd.read_csv(nsd_raw / "nsddata/experiments/nsd/nsd_stim_info_merged.csv", index_col=0)
    for _, row in info[info["subject2"] == 1].head(20).iterrows():
        for r in range(3):
            t = row[f"subject2_rep{r}"]
            if t > 0:  # 1-based trial index into the subject's sequence
                assert ids[t - 1] - 1 == row["nsdId"]


@pytest.mark.parametrize("params, message", [
    (dict(sessions=12, trials_per_session=200),
     "sessions x trials_per_session: expected at most 3 x images_per_subject = 300 trials (each "
     "image is shown at most 3 times); found 12 x 200 = 2400; raise images_per_subject to 800 "
     "or ask for fewer trials"),
    (dict(shared=200), "shared: expected fewer shared images than images_per_subject (100); "
                       "found 200"),
    (dict(images_per_subject=5), "shared: expected fewer shared images than "
                                 "images_per_subject (5); found 20"),
    (dict(subjects=(9,)), "subjects: expected NSD subject numbers in 1..8; found [9]"),
    (dict(sessions=0), "sessions: expected an integer >= 1; found 0"),
    (dict(trials_per_session=2.5), "trials_per_session: expected an integer >= 1; found 2.5"),
])
def test_sizes_the_generator_cannot_lay_out_are_one_line_errors(tmp_path: Path, params: dict,
                                                                message: str) -> None:
    with pytest.raises(OptionError) as err:
        synthesize("nsd", tmp_path / "o", **params)
    assert str(err.value) == message
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the folder aside
