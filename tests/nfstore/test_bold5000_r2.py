"""BOLD5000 release 2 (GLMsingle volumes): the contract suite, ingest against nibabel +
scikit-learn, identities shared with release 1, ROI masks, options and errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

import nfstore
from nfstore.errors import ReaderError
from nfstore.readers import BOLD5000Reader, get_reader
from nfstore.readers.bold5000 import ROI_KEYS, TEST_LISTS
from nfstore.synth import synthesize
from nfstore.testing_readers import ReaderTests
from tests.conftest import assert_fails_cleanly

TYPED = "TYPED-FITHRF-GLMDENOISE-RR"
LISTS = "BOLD5000_Stimuli/Stimuli_Presentation_Lists"


class TestRelease2Contract(ReaderTests):
    reader_class = BOLD5000Reader
    synth_settings = {"release": 2, "subjects": (2,), "sessions": 2}


@pytest.fixture(scope="module")
def r2_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release-2 tree (CSI1, CSI2: 3 sessions) with release 1's images (seed of bold_raw)."""
    out = tmp_path_factory.mktemp("raw") / "bold5000r2"
    synthesize("bold5000", out, release=2, subjects=(1, 2), seed=5)
    return out


@pytest.fixture
def r2_copy(r2_raw: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(r2_raw, tmp_path / "r2"))


def _betas(raw: Path, sub: int, session: int, version: str = TYPED) -> np.ndarray:
    return nib.load(raw / f"CSI{sub}_GLMbetas-{version}_ses-{session:02d}.nii.gz").get_fdata()


def _expected(raw: Path, sub: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-session z-scored brain-mask betas (train statistics, ddof 0), mask, imgnames."""
    mask = nib.load(raw / f"CSI{sub}_brainmask.nii.gz").get_fdata() > 0
    names = (raw / f"CSI{sub}_imgnames.txt").read_text().split()
    test = set((raw / TEST_LISTS[0]).read_text().split())
    is_test = np.array([n in test for n in names])
    parts, start = [], 0
    for s in (1, 2, 3):
        x = _betas(raw, sub, s)[mask].T  # (trials, voxels), C order of the mask
        train = ~is_test[start:start + len(x)]
        parts.append(StandardScaler().fit(x[train]).transform(x))
        start += len(x)
    return np.concatenate(parts), mask, names


def test_ingest_equals_nibabel_and_per_session_zscore(r2_raw: Path, tmp_path: Path) -> None:
    assert get_reader("bold5000").list_subjects(r2_raw) == ["CSI1", "CSI2"]
    nfstore.ingest("bold5000", r2_raw, tmp_path / "s.zarr")
    store = nfstore.open_store(tmp_path / "s.zarr")
    want, mask, names = _expected(r2_raw, 2)
    x = store.betas("bold5000/CSI2")
    np.testing.assert_allclose(x.values, want, atol=2e-5)
    assert x.stimulus.values.tolist() == [f"bold5000/{n.rsplit('.', 1)[0]}" for n in names]
    test = set((r2_raw / TEST_LISTS[0]).read_text().split())
    np.testing.assert_array_equal(x.split.values == "test", [n in test for n in names])
    ds = store.dataset("bold5000/CSI2")
    for axis, idx in zip("ijk", np.nonzero(mask)):
        np.testing.assert_array_equal(ds[f"voxel_{axis}"].values, idx)
    np.testing.assert_array_equal(ds.session.values, np.repeat([1, 2, 3], 60))
    np.testing.assert_array_equal(ds.run.values, np.tile(np.repeat([1, 2, 3], 20), 3))
    attrs = store.attrs("bold5000/CSI2")
    mask_img = nib.load(r2_raw / "CSI2_brainmask.nii.gz")
    np.testing.assert_allclose(attrs["affine"], mask_img.affine)
    assert not np.allclose(attrs["beta_affine_ignored"], mask_img.affine)  # the release bug
    assert attrs["release"] == 2 and attrs["glm_version"] == TYPED
    assert attrs["normalization"]["group"] == "session"


def test_rois_are_native_masks_in_the_brain_mask(r2_raw: Path) -> None:
    raw = get_reader("bold5000").open_subject(r2_raw, "CSI2")
    mask = nib.load(r2_raw / "CSI2_brainmask.nii.gz").get_fdata() > 0
    files = {"LHLOC": "LHLO", "RHLOC": "RHLO", "RHRSC": "RHRRSC"}  # ds001499's CSI2 names
    masks = dict(zip(raw.roi_names, raw.roi_mask))
    assert raw.roi_names == list(ROI_KEYS) + ["EarlyVis", "LOC", "OPA", "PPA", "RSC"]
    for key in ROI_KEYS:
        path = r2_raw / f"derivatives/spm/sub-CSI2/sub-CSI2_mask-{files.get(key, key)}.nii.gz"
        roi = nib.load(path).get_fdata() > 0
        np.testing.assert_array_equal(masks[key], roi[mask])
        assert raw.attrs["roi_voxels_outside_brainmask"][key] == (roi & ~mask).sum()
    assert raw.attrs["roi_voxels_outside_brainmask"]["LHEarlyVis"] > 0
    for alias in ("EarlyVis", "LOC", "OPA", "PPA", "RSC"):
        np.testing.assert_array_equal(masks[alias], masks[f"LH{alias}"] | masks[f"RH{alias}"])


def test_identities_shared_with_release1(bold_raw: Path, r2_raw: Path, tmp_path: Path) -> None:
    store_path = tmp_path / "s.zarr"
    nfstore.ingest("bold5000", bold_raw, store_path, subjects=["1"])
    nfstore.ingest("bold5000", r2_raw, store_path, subjects=["2"], options={"release": "2"})
    store = nfstore.open_store(store_path)
    r1 = set(store.betas("bold5000/CSI1").stimulus.values.tolist())
    r2 = set(store.betas("bold5000/CSI2").stimulus.values.tolist())
    assert len(r1 & r2) > 50  # the same pictures under the same ids
    table = store.identity_table().set_index("stimulus")
    assert table.index.is_unique and (r1 | r2) <= set(table.index)
    shared = sorted(r1 & r2)
    assert len(set(table.loc[shared, "identity"])) == len(shared)
    scene = [s for s in shared if "COCO" not in s and not s.split("/")[1].startswith("n")]
    assert scene and all(table.loc[s, "identity"] == s for s in scene)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import nfstore

    def on_block(key, label):
        if key == "bold5000/CSI2" and label == "session 2":
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 right after a durable block

    nfstore.ingest("bold5000", sys.argv[1], sys.argv[2], on_block=on_block)
""")


def test_killed_ingest_resumes_session_by_session(r2_raw: Path, tmp_path: Path) -> None:
    store = tmp_path / "k.zarr"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(r2_raw), str(store)],
                          cwd=Path(__file__).parents[2], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert nfstore.open_store(store).subjects() == ["bold5000/CSI1"]
    done = []
    summary = nfstore.ingest("bold5000", r2_raw, store,
                             on_block=lambda key, label: done.append((key, label)))
    assert summary.resumed == ["bold5000/CSI2"] and done == [("bold5000/CSI2", "session 3")]
    np.testing.assert_allclose(nfstore.open_store(store).betas("bold5000/CSI2").values,
                               _expected(r2_raw, 2)[0], atol=2e-5)


def test_release_option_and_detection(r2_raw: Path, bold_raw: Path) -> None:
    reader = get_reader("bold5000")
    assert reader.list_subjects(bold_raw) == ["CSI1", "CSI4"]  # ROIs/ folder: release 1
    with pytest.raises(nfstore.NFError, match="CSI01_stim_lists.txt: missing file"):
        reader.open_subject(r2_raw, "1", reader.parse_options({"release": "1"}))
    with pytest.raises(nfstore.OptionError, match=r"^sessions: expected none for a release-1"):
        reader.open_subject(bold_raw, "1", reader.parse_options({"sessions": "1-2"}))
    with pytest.raises(nfstore.OptionError, match=r"^release: expected one of \[1, 2\]"):
        reader.parse_options({"release": "3"})


def test_other_beta_types_and_spellings(r2_copy: Path) -> None:
    reader = get_reader("bold5000")
    raw = reader.open_subject(r2_copy, "CSI1", reader.parse_options({"glm": "TYPEA"}))
    mask = nib.load(r2_copy / "CSI1_brainmask.nii.gz").get_fdata() > 0
    want = _betas(r2_copy, 1, 2, "TYPEA-ASSUMEHRF")[mask].T
    np.testing.assert_allclose(raw.blocks[1].load(), want, rtol=1e-6)
    for p in r2_copy.glob("CSI1_GLMbetas-TYPEA-ASSUMEHRF_*"):  # the README's spelling of B
        p.rename(p.with_name(p.name.replace("TYPEA-ASSUMEHRF", "TYBEB-FITHRF")))
    raw = reader.open_subject(r2_copy, "CSI1", reader.parse_options({"glm": "TYPEB"}))
    assert raw.attrs["glm_version"] == "TYBEB-FITHRF"
    np.testing.assert_allclose(raw.blocks[1].load(), want, rtol=1e-6)


def test_sessions_option_keeps_repeat_indices(r2_raw: Path) -> None:
    reader = get_reader("bold5000")
    full = reader.open_subject(r2_raw, "CSI1")
    part = reader.open_subject(r2_raw, "CSI1", reader.parse_options({"sessions": "2-3"}))
    assert [b.label for b in part.blocks] == ["session 2", "session 3"]
    np.testing.assert_array_equal(part.trials["repeat"], full.trials["repeat"][60:])
    np.testing.assert_array_equal(part.blocks[0].load(), full.blocks[1].load())


def test_without_presentation_lists_runs_are_counted(r2_copy: Path) -> None:
    shutil.rmtree(r2_copy / LISTS)
    reader = get_reader("bold5000")
    raw = reader.open_subject(r2_copy, "CSI1", reader.parse_options({"trials_per_run": "20"}))
    np.testing.assert_array_equal(raw.trials["run"], np.tile(np.repeat([1, 2, 3], 20), 3))
    with pytest.raises(ReaderError, match="ses-01.nii.gz: expected a multiple of trials_per_run"):
        reader.open_subject(r2_copy, "CSI1")  # 60 trials are not runs of 37


def _short_session(raw: Path) -> str:
    path = raw / f"CSI1_GLMbetas-{TYPED}_ses-02.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(img.get_fdata(dtype=np.float32)[..., :-1], img.affine), path)
    return f"CSI1_GLMbetas-{TYPED}_ses-02.nii.gz: expected 60 trials (session 2 of " \
           "CSI1_imgnames.txt, by the presentation lists); found 59"


def _short_session_no_lists(raw: Path) -> str:
    shutil.rmtree(raw / LISTS)
    _short_session(raw)
    return f"CSI1_GLMbetas-{TYPED}_ses-02.nii.gz: expected a multiple of trials_per_run=20 " \
           "trials; found 59"


def _short_run_no_lists(raw: Path) -> str:
    shutil.rmtree(raw / LISTS)
    path = raw / f"CSI1_GLMbetas-{TYPED}_ses-02.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(img.get_fdata(dtype=np.float32)[..., :40], img.affine), path)
    return "CSI1_imgnames.txt: expected 160 lines (the trials of the session files " \
           f"CSI1_GLMbetas-{TYPED}_ses-01.nii.gz..CSI1_GLMbetas-{TYPED}_ses-03.nii.gz: " \
           "[60, 40, 60]); found 180"


def _extra_imgname(raw: Path) -> str:
    path = raw / "CSI1_imgnames.txt"
    path.write_text(path.read_text() + "kitchen1.jpg\n")
    return f"{LISTS}/CSI1: expected the runs to list the 181 trials of CSI1_imgnames.txt"


def _missing_roi(raw: Path) -> str:
    (raw / "derivatives/spm/sub-CSI1/sub-CSI1_mask-RHPPA.nii.gz").unlink()
    return "sub-CSI1_mask-RHPPA.nii.gz: missing file; expected the RHPPA mask of CSI1"


def _wrong_grid(raw: Path) -> str:
    path = raw / f"CSI1_GLMbetas-{TYPED}_ses-01.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(img.get_fdata(dtype=np.float32)[1:], img.affine), path)
    return "ses-01.nii.gz: expected a 4-D (X, Y, Z, trials) image on the grid (12, 14, 10)"


@pytest.mark.parametrize("break_tree", [_short_session, _short_session_no_lists,
                                        _short_run_no_lists, _extra_imgname, _missing_roi,
                                        _wrong_grid],
                         ids=lambda f: f.__name__.strip("_"))
def test_errors_are_one_line_and_store_unchanged(r2_copy: Path, nsd_store: Path,
                                                 break_tree) -> None:
    message = break_tree(r2_copy)
    assert_fails_cleanly("bold5000", r2_copy, nsd_store, message, subjects=["1"],
                         options={"trials_per_run": 20})


def test_cli_release_flag(r2_raw: Path, tmp_path: Path) -> None:
    """``nf ingest bold5000 ROOT --release 2`` ingests release 2; ``--release 1`` on the same
    root is a one-line error naming the missing release-1 file, and no store is left."""
    from click.testing import CliRunner
    from nf.main import _register, cli

    _register()
    runner = CliRunner()
    store = tmp_path / "s.zarr"
    bad = runner.invoke(cli, ["ingest", "bold5000", str(r2_raw), "--store", str(store),
                              "--subjects", "CSI2", "--release", "1", "--no-progress"])
    assert bad.exit_code == 1 and "missing file" in bad.output
    assert len(bad.output.strip().splitlines()) == 1 and not store.exists()
    ok = runner.invoke(cli, ["ingest", "bold5000", str(r2_raw), "--store", str(store),
                             "--subjects", "CSI2", "--release", "2", "--no-progress"])
    assert ok.exit_code == 0, ok.output
    want, _, _ = _expected(r2_raw, 2)
    np.testing.assert_allclose(nfstore.open_store(store).betas("bold5000/CSI2").values, want,
                               atol=2e-5)
