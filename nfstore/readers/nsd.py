"""NSD reader: the original NSD release tree -> :class:`RawSubject`.

Files (relative to the NSD root), as docs/datasets/nsd.md lists them::

    nsddata/experiments/nsd/nsd_expdesign.mat            masterordering, subjectim, sharedix
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5         imgBrick (N, H, W, 3) uint8, 0-based rows
    nsddata/ppdata/subjNN/behav/responses.tsv            SESSION, RUN, TRIAL, 73KID (1-based)
    nsddata/ppdata/subjNN/func1pt8mm/roi/<atlas>.nii.gz  nsdgeneral (1/0/-1) and other atlases
    nsddata/freesurfer/fsaverage/label/<atlas>.mgz.ctab  label names (optional)
    nsddata_betas/ppdata/subjNN/func1pt8mm/<version>/betas_sessionSS.{nii.gz,hdf5}
        NIfTI int16 (X, Y, Z, T) x300, or HDF5 ``/betas`` (T, Z, Y, X)

Voxels are those with ``nsdgeneral == 1``, ordered by their ``prf-visualrois`` label (V1v first,
unlabelled last) and then by C-order grid index, so that early visual ROIs are contiguous on the
voxel axis and an ROI query touches few chunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfstore import _io
from nfstore.errors import MissingFileError, OptionError, ReaderError
from nfstore.names import SPLIT, STIMULUS, VOXEL_I, VOXEL_J, VOXEL_K
from nfstore.readers._nsd_betas import SCALE, _beta_header, _load_block, _read_rois
from nfstore.readers.base import Block, RawSubject, Reader, StimulusTable, parse_ranges

NAME = "nsd"
EXPDESIGN = Path("nsddata/experiments/nsd/nsd_expdesign.mat")
STIM_INFO = Path("nsddata/experiments/nsd/nsd_stim_info_merged.csv")
STIMULI = Path("nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5")
FORMATS = ("auto", "nifti", "hdf5")
_SUFFIX = {"nifti": ".nii.gz", "hdf5": ".hdf5"}


def _sessions(text: str) -> tuple[int, ...] | None:
    """``"1-3,7"`` -> ``(1, 2, 3, 7)`` (the ``sessions`` option as text)."""
    found = parse_ranges(text, "sessions")
    return tuple(found) if found else None


@dataclass(frozen=True)
class Options:
    """NSD ingest options.

    Attributes
    ----------
    beta_version : str
        Beta folder, e.g. ``betas_fithrf_GLMdenoise_RR``.
    space : str
        Functional space folder (``func1pt8mm`` or ``func1mm``).
    format : {"auto", "nifti", "hdf5"}
        Source of betas; ``auto`` takes NIfTI where present, else HDF5.
    sessions : tuple of int or None
        1-based sessions to ingest (default: every session with a betas file).
    """

    beta_version: str = field(default="betas_fithrf_GLMdenoise_RR",
                              metadata={"help": "betas folder"})
    space: str = field(default="func1pt8mm", metadata={"choices": ("func1pt8mm", "func1mm")})
    format: str = field(default="auto", metadata={"choices": FORMATS})
    sessions: tuple[int, ...] | None = field(default=None, metadata={
        "parse": _sessions, "help": "sessions, e.g. 1-37 or 1,3,5 (default: all found)"})


def coco_ids(root: Path, name: str = NAME) -> dict[str, int]:
    """``<name>/<id>`` -> COCO id from ``nsd_stim_info_merged.csv`` (empty if the file is
    absent)."""
    path = root / STIM_INFO
    if not path.is_file():
        return {}
    with _io.reading(path, "CSV with columns nsdId and cocoId"):
        info = pd.read_csv(path, usecols=["nsdId", "cocoId"])
    return {f"{name}/{int(i):05d}": int(c) for i, c in zip(info["nsdId"], info["cocoId"])}


def stimulus_count(root: Path) -> int:
    """Number of images in ``imgBrick``, after checking its shape and dtype."""
    import h5py

    path = _io.require_file(root / STIMULI, "the NSD image brick (imgBrick)")
    with _io.reading(path, "HDF5"), h5py.File(path, "r") as f:
        if "imgBrick" not in f:
            raise ReaderError(f"{path}: expected dataset 'imgBrick'; found {sorted(f.keys())}")
        d = f["imgBrick"]
        if d.ndim != 4 or d.shape[-1] != 3 or d.dtype != np.uint8:
            raise ReaderError(f"{path}: expected imgBrick of shape (N, H, W, 3) uint8; "
                              f"found {d.shape} {d.dtype}")
        return int(d.shape[0])


def _design(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = root / EXPDESIGN
    d = _io.load_mat(path, ("masterordering", "subjectim", "sharedix"))
    return (d["masterordering"].ravel().astype(np.int64), d["subjectim"].astype(np.int64),
            d["sharedix"].ravel().astype(np.int64))


def _responses(path: Path) -> pd.DataFrame:
    _io.require_file(path, "the NSD behavioural responses (responses.tsv)")
    with _io.reading(path, "tab-separated responses"):
        df = pd.read_csv(path, sep="\t")
    need = ["SESSION", "RUN", "TRIAL", "73KID"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ReaderError(f"{path}: expected columns {need}; missing {missing}, "
                          f"found {list(df.columns)[:12]}")
    return df


def _beta_files(beta_dir: Path, fmt: str) -> dict[int, Path]:
    """Session number -> betas file; ``auto`` prefers NIfTI and falls back to HDF5."""
    if fmt not in FORMATS:
        raise OptionError(f"format: expected one of {list(FORMATS)}; found {fmt!r}")
    found: dict[int, Path] = {}
    for kind in (["nifti", "hdf5"] if fmt == "auto" else [fmt]):
        for p in sorted(beta_dir.glob(f"betas_session*{_SUFFIX[kind]}")):
            m = re.fullmatch(r"betas_session(\d+)" + re.escape(_SUFFIX[kind]), p.name)
            if m:
                found.setdefault(int(m.group(1)), p)
    return found


def _session_files(beta_dir: Path, options: Options) -> tuple[dict[int, Path], list[int]]:
    """Betas file per session and the sessions to ingest, checked against each other.

    Returns
    -------
    files : dict of int to Path
        Every session's betas file found in ``beta_dir``.
    sessions : list of int
        The 1-based sessions asked for (default: every session found).
    """
    files = _beta_files(beta_dir, options.format)
    if not files:
        kinds = ".nii.gz or .hdf5" if options.format == "auto" else _SUFFIX[options.format]
        raise MissingFileError(f"{beta_dir}: missing betas; expected betas_sessionSS{kinds} "
                               "files")
    sessions = list(options.sessions) if options.sessions else sorted(files)
    absent = [s for s in sessions if s not in files]
    if absent:
        raise MissingFileError(f"{beta_dir}: expected betas files for the sessions asked "
                               f"for {absent}; found sessions {sorted(files)}")
    return files, sessions


def _voxels(roi_dir: Path, root: Path) -> tuple[Any, Any, Any, tuple[np.ndarray, ...],
                                                list[str], np.ndarray]:
    """The nsdgeneral voxels in ingest order, with their ROI masks.

    Voxels are ordered by prf-visualrois label (1..7, then unlabelled), then by C-order grid
    index.

    Returns
    -------
    grid, affine, general_img
        nsdgeneral's header shape, affine and NIfTI image.
    ijk : tuple of 3 ndarray
        Grid indices, int64 (n_voxels,) each.
    names : list of str
        ROI names.
    masks : ndarray
        bool (n_rois, n_voxels).
    """
    general_path = roi_dir / "nsdgeneral.nii.gz"
    grid, affine, general_img = _io.nifti_header(general_path)
    general = _io.nifti_data(general_path)
    selected = general == 1
    if not selected.any():
        raise ReaderError(f"{general_path}: expected voxels labelled 1; found none")

    # voxel order: prf-visualrois label (1..7, then unlabelled), then C-order grid index
    ijk0 = np.nonzero(selected)
    names, masks, prf = _read_rois(roi_dir, root, (general_path, general_img), ijk0)
    key = np.where(prf > 0, prf, np.iinfo(np.int64).max) if prf is not None else np.zeros(
        ijk0[0].size, np.int64)
    order = np.lexsort((np.arange(key.size), key))
    ijk = tuple(np.asarray(a[order], dtype=np.int64) for a in ijk0)
    return grid, affine, general_img, ijk, names, masks[:, order]


def _trial_design(root: Path, sub_dir: Path, sub_no: int, responses: pd.DataFrame,
                  design: tuple[np.ndarray, np.ndarray, np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nsdIds, repeat indices and test flags of the subject's full trial sequence.

    The full sequence is used so that repeat indices do not depend on the sessions asked for.

    Returns
    -------
    nsd_ids : ndarray
        int64 (n_trials,), 0-based rows of imgBrick.
    repeat : ndarray
        int (n_trials,), how often the image was shown before.
    test : ndarray
        bool (n_trials,), the image is one of the shared images.
    """
    masterordering, subjectim, sharedix = design
    n_total = len(responses)
    if n_total > masterordering.size:
        raise ReaderError(f"{sub_dir / 'behav/responses.tsv'}: expected at most "
                          f"{masterordering.size} trials (masterordering); found {n_total}")
    ten_k = masterordering[:n_total] - 1
    if ten_k.max() >= subjectim.shape[1]:
        raise ReaderError(f"{root / EXPDESIGN}: masterordering refers to image "
                          f"{ten_k.max() + 1} of the 10k list; subjectim has "
                          f"{subjectim.shape[1]} columns")
    nsd_ids = subjectim[sub_no - 1, ten_k] - 1
    n_images = stimulus_count(root)
    if nsd_ids.max() >= n_images or nsd_ids.min() < 0:
        raise ReaderError(f"{root / STIMULI}: expected an image for nsdId {nsd_ids.max()}; "
                          f"imgBrick has {n_images} images")
    kid = responses["73KID"].to_numpy(np.int64) - 1
    bad = np.flatnonzero(kid != nsd_ids)
    if bad.size:
        t = int(bad[0])
        raise ReaderError(f"{sub_dir / 'behav/responses.tsv'}: row {t + 1} expected 73KID "
                          f"{nsd_ids[t] + 1} (from nsd_expdesign.mat); found {kid[t] + 1}")
    repeat = pd.Series(nsd_ids).groupby(nsd_ids).cumcount().to_numpy()
    test = np.isin(nsd_ids, sharedix - 1)
    return nsd_ids, repeat, test


def _session_blocks(sessions: list[int], files: dict[int, Path], session_col: np.ndarray,
                    grid: tuple[int, ...], general: tuple[Path, Any],
                    ijk: tuple[np.ndarray, ...]) -> tuple[list[np.ndarray], list[Block]]:
    """One lazy block per session, after checking each betas header.

    Parameters
    ----------
    session_col : ndarray
        int64 (n_trials,), the session of every responses.tsv row.
    general : tuple of (Path, image)
        nsdgeneral's path and NIfTI image (the grid and affine every betas file must share).

    Returns
    -------
    rows : list of ndarray
        int (n_session_trials,) responses.tsv rows of each session.
    blocks : list of Block
    """
    rows, blocks = [], []
    start = 0
    for s in sessions:
        idx = np.flatnonzero(session_col == s)
        path = files[s]
        bgrid, n_t, img = _beta_header(path)
        if bgrid != grid[:3]:
            raise ReaderError(f"{path}: expected the ROI grid {grid[:3]} (nsdgeneral.nii.gz); "
                              f"found {bgrid}")
        if n_t != idx.size:
            raise ReaderError(f"{path}: expected {idx.size} trials (responses.tsv rows of "
                              f"session {s}); found {n_t}")
        if img is not None:  # HDF5 betas carry no affine
            _io.same_space(path, img, *general)
        rows.append(idx)
        blocks.append(Block(f"session {s}", start, start + n_t,
                            (lambda p=path: _load_block(p, ijk)), (path,)))
        start += n_t
    return rows, blocks


class NSDReader(Reader):
    """The Natural Scenes Dataset (release tree, see the module docstring)."""

    name = NAME
    Options = Options
    normalization = "session-train"
    subject_regex = r"(?:subj)?0*([1-9]\d*)"
    subject_template = "subj{n:02d}"
    subject_examples = "NSD subjects like 1 or subj01"
    subject_pattern = r"subj0[1-8]"

    def list_subjects(self, root: Path) -> list[str]:
        """Subjects with a betas folder under ``root``."""
        base = root / "nsddata_betas" / "ppdata"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if re.fullmatch(r"subj\d\d", p.name))

    def stimulus_table(self, root: Path, options: Any = None) -> StimulusTable:
        """All images of ``nsd_stimuli.hdf5`` as ``<name>/<5-digit nsdId>`` stimuli."""
        n = stimulus_count(root)
        return StimulusTable(
            dataset=self.name,
            stimulus=np.array([f"{self.name}/{i:05d}" for i in range(n)], dtype=object),
            file=np.array([str(STIMULI)] * n, dtype=object),
            index=np.arange(n, dtype=np.int64),
            root=root.resolve(),
            coco_ids=coco_ids(root, self.name),
        )

    def synth_config(self) -> type:
        from nfstore.synth.nsd import NSDSynthConfig

        return NSDSynthConfig

    def check_synth(self, config: Any) -> None:
        from nfstore.synth.nsd import check_config

        check_config(config)

    def synthesize(self, out: Path, config: Any) -> dict[str, float]:
        from nfstore.synth.nsd import synth_nsd

        return synth_nsd(out, config)

    def open_subject(self, root: Path, subject: str, options: Any = None) -> RawSubject:
        """Read design, responses and ROIs of one NSD subject and check them against the betas."""
        options = options if options is not None else Options()
        subject = self.subject_name(subject)
        sub_no = int(subject[4:])
        sub_dir = root / "nsddata" / "ppdata" / subject
        roi_dir = sub_dir / options.space / "roi"
        beta_dir = (root / "nsddata_betas" / "ppdata" / subject / options.space
                    / options.beta_version)

        design = _design(root)
        if sub_no > design[1].shape[0]:
            raise ReaderError(f"{root / EXPDESIGN}: expected a subjectim row for {subject}; "
                              f"found {design[1].shape[0]} rows")
        responses = _responses(sub_dir / "behav" / "responses.tsv")
        files, sessions = _session_files(beta_dir, options)
        general_path = roi_dir / "nsdgeneral.nii.gz"
        grid, affine, general_img, ijk, names, masks = _voxels(roi_dir, root)
        nsd_ids, repeat, test = _trial_design(root, sub_dir, sub_no, responses, design)
        session_col = responses["SESSION"].to_numpy(np.int64)
        rows, blocks = _session_blocks(sessions, files, session_col, grid,
                                       (general_path, general_img), ijk)
        sources = [files[s] for s in sessions]
        t = np.concatenate(rows)
        trials = pd.DataFrame({
            STIMULUS: np.array([f"{self.name}/{i:05d}" for i in nsd_ids[t]], dtype=object),
            SPLIT: np.where(test[t], "test", "train").astype(object),
            "session": session_col[t],
            "run": responses["RUN"].to_numpy(np.int64)[t],
            "repeat": repeat[t],
            "nsd_trial": t.astype(np.int64),
        })
        records = [_io.file_record(p, root) for p in
                   [root / EXPDESIGN, sub_dir / "behav/responses.tsv", general_path, *sources]]
        return RawSubject(
            dataset=self.name, subject=subject, trials=trials,
            norm_group=trials["session"].to_numpy(),
            voxels={VOXEL_I: ijk[0], VOXEL_J: ijk[1], VOXEL_K: ijk[2]},
            roi_names=names, roi_mask=masks, blocks=blocks,
            attrs={"volume_shape": list(grid[:3]), "affine": np.asarray(affine).tolist(),
                   "beta_version": options.beta_version, "space": options.space,
                   "sessions": [int(s) for s in sessions], "source_files": records,
                   "beta_format": sorted({"nifti" if p.name.endswith(".nii.gz") else "hdf5"
                                          for p in sources})},
            normalization={"method": "zscore", "scale": f"1/{SCALE:g}", "group": "session",
                           "ddof": 0, "statistics_from": "train"},
        )
