"""BOLD5000 release 2 (GLMsingle single-trial betas) -> :class:`RawSubject`.

:class:`nfstore.readers.bold5000.BOLD5000Reader` hands a subject here when the root holds
``CSI*_GLMbetas-*`` files and no ``ROIs/`` folder, or when ``release=2`` is asked for. Files
(relative to the BOLD5000 root; figshare article 14456124 and OpenNeuro ds001499)::

    CSI{n}_GLMbetas-{version}_ses-NN.nii.gz      (X, Y, Z, trials) betas of one session,
        version TYPED-FITHRF-GLMDENOISE-RR (default), TYPEA-ASSUMEHRF, TYPEB-FITHRF (also
        spelt TYBEB-FITHRF, as the release README writes it) or TYPEC-FITHRF-GLMDENOISE
    CSI{n}_brainmask.nii.gz                      the voxel grid and its (correct) affine
    CSI{n}_imgnames.txt                          one presented file name per trial, sessions
                                                 concatenated
    derivatives/spm/sub-CSI{n}/sub-CSI{n}_mask-<ROI>.nii.gz   ten ROI masks (also found in
        spm/sub-CSI{n}/ or sub-CSI{n}/ at the root, or in the ``roi_dir`` option's folder)
    BOLD5000_Stimuli/...                         images, test list and presentation lists of
                                                 release 1

The TYPED files carry a wrong affine (a known release bug): the grid is the brain mask's, and
betas are only checked to share its shape and voxel size. Voxels are the brain-mask voxels in C
order, ``voxel_i/j/k`` their indices in the brain-mask volume. ROI masks are read as finite
values > 0 and intersected with the brain mask; the release's misnamed ``LHLO``, ``RHLO`` and
``RHRRSC`` files are read as LHLOC, RHLOC and RHRSC.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfstore import _io
from nfstore.errors import MissingFileError, ReaderError
from nfstore.names import SPLIT, STIMULUS, VOXEL_I, VOXEL_J, VOXEL_K
from nfstore.readers._rois import union_aliases
from nfstore.readers.base import Block, RawSubject, StimulusTable, repeat_index

VERSIONS = {"TYPEA": ("TYPEA-ASSUMEHRF",), "TYPEB": ("TYPEB-FITHRF", "TYBEB-FITHRF"),
            "TYPEC": ("TYPEC-FITHRF-GLMDENOISE",), "TYPED": ("TYPED-FITHRF-GLMDENOISE-RR",)}
ROI_DIRS = ("derivatives/spm/sub-{subject}", "spm/sub-{subject}", "sub-{subject}")
MISNAMED = {"LHLOC": "LHLO", "RHLOC": "RHLO", "RHRSC": "RHRRSC"}  # ROI -> ds001499's file name


def betas_name(subject: str, version: str, session: int) -> str:
    """File name of one session's betas (``CSI1_GLMbetas-TYPED-..._ses-01.nii.gz``)."""
    return f"{subject}_GLMbetas-{version}_ses-{session:02d}.nii.gz"


def roi_file_name(subject: str, roi: str) -> str:
    """File name of one ROI mask (``sub-CSI1_mask-LHPPA.nii.gz``)."""
    return f"sub-{subject}_mask-{roi}.nii.gz"


def detect(root: Path) -> int:
    """Release of the tree at ``root``: 2 with ``CSI*_GLMbetas-*`` files and no ``ROIs/``."""
    if not (root / "ROIs").is_dir() and any(root.glob("CSI*_GLMbetas-*")):
        return 2
    return 1


def list_subjects(root: Path) -> list[str]:
    """Subjects ``CSI<n>`` with betas files of any known version at ``root``."""
    found = set()
    for versions in VERSIONS.values():
        for version in versions:
            for p in root.glob(f"CSI*_GLMbetas-{version}_ses-*.nii.gz"):
                m = re.fullmatch(r"(CSI\d)_GLMbetas-.*", p.name)
                if m:
                    found.add(m.group(1))
    return sorted(found)


def session_files(root: Path, subject: str, glm: str) -> dict[int, Path]:
    """Session number -> betas file of ``glm`` (a key of :data:`VERSIONS`), every spelling."""
    found: dict[int, Path] = {}
    for version in VERSIONS[glm]:
        pattern = re.escape(f"{subject}_GLMbetas-{version}_ses-") + r"(\d+)\.nii\.gz"
        for p in sorted(root.glob(f"{subject}_GLMbetas-{version}_ses-*.nii.gz")):
            m = re.fullmatch(pattern, p.name)
            if m:
                found.setdefault(int(m.group(1)), p)
    if not found:
        raise MissingFileError(f"{root / betas_name(subject, VERSIONS[glm][0], 1)}: missing "
                               f"file; expected the {glm} betas of {subject}, one file per "
                               f"session")
    return dict(sorted(found.items()))


def _headers(files: dict[int, Path], mask_path: Path, mask_img: Any) -> dict[int, int]:
    """Trial count of every session file, after checking its grid shape, voxel size and dtype
    against the brain mask (not its affine: the TYPED files carry a wrong one)."""
    grid = tuple(int(n) for n in mask_img.shape[:3])
    zooms = np.asarray(mask_img.header.get_zooms()[:3], float)
    counts = {}
    for s, path in files.items():
        shape, _, img = _io.nifti_header(path)
        if len(shape) != 4 or shape[:3] != grid:
            raise ReaderError(f"{path}: expected a 4-D (X, Y, Z, trials) image on the grid "
                              f"{grid} of {mask_path.name}; found {shape}")
        found = np.asarray(img.header.get_zooms()[:3], float)
        if not np.allclose(found, zooms, rtol=0.0, atol=1e-3):
            raise ReaderError(f"{path}: expected the voxel size of {mask_path.name} "
                              f"{zooms.round(4).tolist()} mm; found {found.round(4).tolist()} mm")
        dtype = img.header.get_data_dtype()
        if dtype.kind != "f":
            raise ReaderError(f"{path}: expected float betas (percent signal change); "
                              f"found {dtype}")
        counts[s] = shape[3]
    return counts


def _counted_design(files: dict[int, Path], counts: dict[int, int], names_path: Path,
                    n_names: int, per_run: int) -> tuple[np.ndarray, np.ndarray]:
    """Session and run of every imgnames line without presentation lists: sessions 1..N in
    order, ``per_run`` trials a run."""
    found = sorted(files)
    if found != list(range(1, len(found) + 1)):
        raise ReaderError(f"{names_path}: expected betas of sessions 1-{len(found)} to place "
                          f"its lines without presentation lists; found sessions {found}")
    for s in found:
        if counts[s] % per_run:
            raise ReaderError(f"{files[s]}: expected a multiple of trials_per_run={per_run} "
                              f"trials; found {counts[s]}")
    total = sum(counts.values())
    if total != n_names:
        raise ReaderError(f"{names_path}: expected {total} lines (the trials of the session "
                          f"files {files[found[0]].name}..{files[found[-1]].name}: "
                          f"{[counts[s] for s in found]}); found {n_names}")
    session = np.concatenate([np.full(counts[s], s) for s in found])
    run = np.concatenate([np.arange(counts[s]) // per_run + 1 for s in found])
    return np.array(session, np.int64), np.array(run, np.int64)


def _design(root: Path, subject: str, files: dict[int, Path], counts: dict[int, int],
            names: list[str], names_path: Path, options: Any) -> tuple[np.ndarray, np.ndarray]:
    """Session and run (1-based) of every imgnames line, shape (n_lines,) each: from the
    release-1 presentation lists when present (checked against imgnames and every session
    file's trial count), else from the session files' trial counts."""
    from nfstore.readers.bold5000 import PRESENTATION, _sessions

    listed = None
    if options.presentation_lists and (root / PRESENTATION / subject).is_dir():
        listed = _sessions(root, subject, names, names_path)
    if listed is None:
        return _counted_design(files, counts, names_path, len(names), options.trials_per_run)
    session, run = listed
    for s, path in files.items():
        want = int((session == s).sum())
        if counts[s] != want:
            raise ReaderError(f"{path}: expected {want} trials (session {s} of "
                              f"{names_path.name}, by the presentation lists); found {counts[s]}")
    return session, run


def _roi_dir(root: Path, subject: str, roi_dir: str | None) -> Path:
    """The folder holding the subject's ROI masks."""
    candidates = ([Path(roi_dir)] if roi_dir else
                  [root / d.format(subject=subject) for d in ROI_DIRS])
    for d in candidates:
        if d.is_dir():
            return d
    raise MissingFileError(f"{candidates[0]}: missing folder; expected the ROI masks of "
                           f"{subject} (ds001499 derivatives/spm/sub-{subject})")


def _rois(root: Path, subject: str, ijk: tuple[np.ndarray, ...], mask: tuple[Path, Any],
          roi_dir: str | None) -> tuple[dict[str, np.ndarray], dict[str, int], list[Path]]:
    """Native ROI masks over the brain-mask voxels.

    Returns
    -------
    by_name : ROI -> bool array (n_voxels,), in release 1's ROI order
    outside : ROI -> count of its voxels outside the brain mask
    paths : the mask files read
    """
    from nfstore.readers.bold5000 import ROI_KEYS

    folder = _roi_dir(root, subject, roi_dir)
    grid = tuple(int(n) for n in mask[1].shape[:3])
    brain = np.zeros(grid, bool)
    brain[ijk] = True
    by_name, outside, paths = {}, {}, []
    for key in ROI_KEYS:
        options = [folder / roi_file_name(subject, n) for n in (key, MISNAMED.get(key))
                   if n is not None]
        path = next((p for p in options if p.is_file()), None)
        if path is None:
            raise MissingFileError(f"{options[0]}: missing file; expected the {key} mask of "
                                   f"{subject}")
        shape, _, _ = _io.nifti_header(path)
        if shape[:3] != grid or any(n != 1 for n in shape[3:]):
            raise ReaderError(f"{path}: expected a 3-D mask on the grid {grid} of "
                              f"{mask[0].name}; found {shape}")
        values = np.asarray(_io.nifti_data(path), dtype=np.float64).reshape(grid)
        with np.errstate(invalid="ignore"):
            roi = np.isfinite(values) & (values > 0)
        by_name[key] = roi[ijk]
        outside[key] = int((roi & ~brain).sum())
        paths.append(path)
    return by_name, outside, paths


def load_session(path: Path, ijk: tuple[np.ndarray, ...]) -> np.ndarray:
    """Betas of the brain-mask voxels, float32 (n_trials, n_voxels), percent signal change."""
    i, j, k = ijk
    data = _io.nifti_data(path)  # (X, Y, Z, T), Fortran order as stored
    x, y, _, t = data.shape
    flat = data.reshape(-1, t, order="F").T  # (T, X*Y*Z)
    vals = np.take(flat, i + x * (j + y * k), axis=1)
    with _io.reading(path, "BOLD5000 GLMsingle betas"), np.errstate(over="ignore"):
        return np.asarray(vals, dtype=np.float32)


def _trials(name: str, names: list[str], test_stems: set[str], design: tuple[np.ndarray, ...],
            table: StimulusTable, names_path: Path) -> pd.DataFrame:
    """The trial table of every imgnames line (columns of :class:`RawSubject` plus
    ``imgnames_line``, 0-based)."""
    from nfstore.readers.bold5000 import STIMULI, stem

    stems = np.array([stem(x) for x in names], dtype=object)
    known = set(table.stimulus.tolist())
    missing = [s for s in stems if f"{name}/{s}" not in known]
    if missing:
        raise MissingFileError(f"{table.root / STIMULI}: missing image for '{missing[0]}' "
                               f"referenced by {names_path} ({len(set(missing))} images missing)")
    session, run = design
    return pd.DataFrame({
        STIMULUS: np.array([f"{name}/{s}" for s in stems], dtype=object),
        SPLIT: np.where(np.isin(stems, sorted(test_stems)), "test", "train").astype(object),
        "session": session, "run": run, "repeat": repeat_index(stems),
        "imgnames_line": np.arange(len(names), dtype=np.int64)})


def _brain_voxels(mask_path: Path, grid: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Grid indices (i, j, k) of the brain-mask voxels (finite values > 0), C order, int64
    arrays of shape (n_voxels,)."""
    with np.errstate(invalid="ignore"):
        brain = np.asarray(_io.nifti_data(mask_path), np.float64).reshape(grid)
        ijk = tuple(np.asarray(a, np.int64) for a in np.nonzero(np.isfinite(brain) & (brain > 0)))
    if ijk[0].size == 0:
        raise ReaderError(f"{mask_path}: expected voxels > 0; found none")
    return ijk


def _blocks(sessions: list[int], files: dict[int, Path], counts: dict[int, int],
            ijk: tuple[np.ndarray, ...]) -> list[Block]:
    """One lazy block per session asked for, in order."""
    blocks, start = [], 0
    for s in sessions:
        n = counts[s]
        blocks.append(Block(f"session {s}", start, start + n,
                            (lambda p=files[s]: load_session(p, ijk)), (files[s],)))
        start += n
    return blocks


def open_release2(name: str, root: Path, subject: str, options: Any, table: StimulusTable
                  ) -> RawSubject:
    """One subject of a release-2 tree (see the module docstring): reads headers, imgnames,
    the brain mask and ROI masks, and checks them; betas stay in one block per session.

    Parameters
    ----------
    name : str
        Dataset key (stimulus ids ``<name>/<stem>``, as release 1).
    root : Path
        The BOLD5000 root.
    subject : str
        Canonical subject (``CSI1``).
    options : :class:`nfstore.readers.bold5000.Options`
    table : StimulusTable
        The dataset's images (every imgnames stem must be one of them).
    """
    from nfstore.readers.bold5000 import ALIASES, ROI_KEYS, _test_stems

    files = session_files(root, subject, options.glm)
    mask_path = root / f"{subject}_brainmask.nii.gz"
    grid, affine, mask_img = _io.nifti_header(_io.require_file(mask_path, "the brain mask"))
    counts = _headers(files, mask_path, mask_img)
    names_path = _io.require_file(root / f"{subject}_imgnames.txt", "the trial order")
    names = [ln.strip() for ln in _io.read_text(names_path, "a BOLD5000 imgnames list")
             .splitlines() if ln.strip()]
    design = _design(root, subject, files, counts, names, names_path, options)
    trials = _trials(name, names, _test_stems(root), design, table, names_path)
    sessions = list(options.sessions) if options.sessions else sorted(files)
    absent = [s for s in sessions if s not in files]
    if absent:
        raise MissingFileError(f"{root / betas_name(subject, VERSIONS[options.glm][0], absent[0])}"
                               f": missing file; expected the sessions asked for {absent}")
    rows = np.concatenate([np.flatnonzero(design[0] == s) for s in sessions])
    trials = trials.iloc[rows].reset_index(drop=True)
    ijk = _brain_voxels(mask_path, grid[:3])
    by_name, outside, roi_paths = _rois(root, subject, ijk, (mask_path, mask_img), options.roi_dir)
    a_names, a_masks = union_aliases(by_name, ALIASES)
    blocks = _blocks(sessions, files, counts, ijk)
    version = re.search(r"_GLMbetas-(.+)_ses-", files[sessions[0]].name).group(1)  # type: ignore
    records = [_io.file_record(p, root) for p in
               [names_path, mask_path, *roi_paths, *(files[s] for s in sessions)]]
    return RawSubject(
        dataset=name, subject=subject, trials=trials,
        norm_group=trials["session"].to_numpy(),
        voxels={VOXEL_I: ijk[0], VOXEL_J: ijk[1], VOXEL_K: ijk[2]},
        roi_names=list(ROI_KEYS) + a_names,
        roi_mask=np.array([by_name[k] for k in ROI_KEYS] + a_masks, dtype=bool), blocks=blocks,
        attrs={"release": 2, "glm_version": version, "volume_shape": list(grid[:3]),
               "affine": np.asarray(affine).tolist(),
               "beta_affine_ignored": np.asarray(
                   _io.nifti_header(files[sessions[0]])[1]).tolist(),
               "sessions": [int(s) for s in sessions], "roi_voxels_outside_brainmask": outside,
               "roi_files": [p.name for p in roi_paths], "source_files": records},
        normalization={"method": "zscore", "group": "session", "ddof": 0,
                       "statistics_from": "train"},
    )
