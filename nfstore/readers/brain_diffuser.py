"""Brain-Diffuser reader: the prepared NSD arrays of ``ozcelikfu/brain-diffuser`` ->
:class:`RawSubject` of the ``nsd`` store group.

Files (relative to Brain-Diffuser's ``data/`` folder, N = subject number)::

    processed_data/subj0N/nsd_{train,test}_fmriavg_nsdgeneral_subN.npy  (n, V) float64, x300
    processed_data/subj0N/nsd_{train,test}_stim_subN.npy                (n, H, W, 3) float64
    processed_data/subj0N/nsd_{train,test}_cap_subN.npy                 (n, 5) str, optional
    nsddata/experiments/nsd/nsd_expdesign.mat                           (option ``expdesign``)

Rows are repeat averages (one per image), so every row carries ``n_repeats`` (the number of
trials averaged) and the subject's ``rows`` attribute is ``"repeat-average"``. The image ids are
not in the files: they are recomputed from the design, with the prefix of whole sessions whose
unique train and test image counts equal the files' row counts (the real files: 37 sessions).
Rows have no session or run: ``session`` and ``run`` are those of the image's first trial
within the prefix, ``repeat`` is 0. Voxels are the nsdgeneral voxels in C order; their grid
indices and the other ROIs need the ``rois`` option (NSD's ``func1pt8mm/roi`` folder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfstore import _io
from nfstore.community import brain_diffuser_files as bdf
from nfstore.errors import MissingFileError, OptionError, ReaderError
from nfstore.names import SPLIT, STIMULUS, VOXEL_I, VOXEL_J, VOXEL_K
from nfstore.readers._nsd_betas import SCALE, _read_rois
from nfstore.readers.base import Block, RawSubject, Reader, StimulusTable

BLOCK_ROWS = 1024  # rows read per block
ROWS = "repeat-average"


@dataclass(frozen=True)
class Options:
    """Brain-Diffuser ingest options.

    Attributes
    ----------
    expdesign : str or None
        ``nsd_expdesign.mat`` (default: ``<root>/nsddata/experiments/nsd/nsd_expdesign.mat``).
    rois : str or None
        NSD ROI NIfTIs: a subject's ``func1pt8mm/roi`` folder, a folder of ``subj0N`` folders
        holding them, or an NSD root. Without it only the nsdgeneral ROI, and no grid indices.
    sessions : int or None
        Sessions the arrays were made from (default: the smallest prefix that fits).
    """

    expdesign: str | None = field(default=None, metadata={"help": "nsd_expdesign.mat path"})
    rois: str | None = field(default=None, metadata={"help": "NSD roi folder (or NSD root)"})
    sessions: int | None = field(default=None, metadata={
        "help": "sessions the arrays average (default: inferred from the row counts)"})


def expdesign_path(root: Path, options: Options) -> Path:
    """The design file, which must exist (a one-line error naming the option otherwise)."""
    path = Path(options.expdesign) if options.expdesign else root / bdf.EXPDESIGN
    if not path.is_file():
        raise MissingFileError(f"expdesign: expected NSD's nsd_expdesign.mat at {path} (pass "
                               f"--option expdesign=PATH); found no file")
    return path


def _header(path: Path) -> np.ndarray:
    """The array of a ``.npy`` file, memory-mapped (nothing read), without pickles."""
    _io.require_file(path, "a Brain-Diffuser .npy array")
    with _io.reading(path, ".npy array"):
        return np.load(path, mmap_mode="r", allow_pickle=False)


def _split_files(root: Path, number: int) -> dict[str, dict[str, Any]]:
    """Memory-mapped arrays of both splits (``stim``/``cap`` None when absent), checked."""
    out: dict[str, dict[str, Any]] = {}
    width = None
    for split in bdf.SPLITS:
        path = bdf.array_path(root, number, split, "fmri")
        fmri = _header(path)
        if fmri.ndim != 2 or fmri.dtype.kind != "f":
            raise ReaderError(f"{path}: expected a float (images, voxels) array; found "
                              f"{fmri.shape} {fmri.dtype}")
        if width is not None and fmri.shape[1] != width:
            raise ReaderError(f"{path}: expected {width} voxels (the train file's); found "
                              f"{fmri.shape[1]}")
        width = fmri.shape[1]
        found = {"fmri": fmri, "fmri_path": path}
        for kind, ndim in (("stim", 4), ("cap", 2)):
            p = bdf.array_path(root, number, split, kind)
            arr = _header(p) if p.is_file() else None
            if arr is not None and (arr.ndim != ndim or arr.shape[0] != fmri.shape[0]):
                raise ReaderError(f"{p}: expected {fmri.shape[0]} rows (as {path.name}); "
                                  f"found shape {arr.shape}")
            if kind == "stim" and arr is not None and arr.shape[-1] != 3:
                raise ReaderError(f"{p}: expected (n, H, W, 3) images; found {arr.shape}")
            if kind == "cap" and arr is not None and arr.dtype.kind != "U":
                raise ReaderError(f"{p}: expected a unicode (n, 5) array; found {arr.dtype}")
            found[kind], found[f"{kind}_path"] = arr, p
        out[split] = found
    return out


def _rows(root: Path, number: int, options: Options, files: dict[str, dict[str, Any]]
          ) -> tuple[dict[str, bdf.SplitRows], bdf.Design, int]:
    """Each split's rows (ids, trials) from the design prefix fixed by the row counts."""
    design = bdf.read_design(expdesign_path(root, options), number)
    n_train, n_test = (len(files[s]["fmri"]) for s in bdf.SPLITS)
    fmri = files["train"]["fmri_path"]
    if options.sessions is not None:
        if not 1 <= options.sessions <= design.session_stops.size:
            raise OptionError(f"sessions: expected 1..{design.session_stops.size}; found "
                              f"{options.sessions}")
        n_sess = options.sessions
        rows = bdf.design_rows(design, n_sess)
        if (rows["train"].nsd_ids.size, rows["test"].nsd_ids.size) != (n_train, n_test):
            raise ReaderError(f"{fmri}: expected {rows['train'].nsd_ids.size} train and "
                              f"{rows['test'].nsd_ids.size} test rows (sessions 1-{n_sess}); "
                              f"found {n_train} and {n_test}")
    else:
        n_sess = bdf.find_sessions(design, n_train, n_test, fmri)
        rows = bdf.design_rows(design, n_sess)
    return rows, design, n_sess


def _roi_dir(spec: str, subject: str) -> tuple[Path, Path]:
    """(roi folder, NSD root for colour tables) from the ``rois`` option."""
    base = Path(spec)
    for cand in (base, base / subject, base / "nsddata/ppdata" / subject / "func1pt8mm/roi"):
        if (cand / "nsdgeneral.nii.gz").is_file():
            return cand, base
    raise MissingFileError(f"rois: expected nsdgeneral.nii.gz in {base}, {base / subject} or "
                           f"{base / 'nsddata/ppdata' / subject / 'func1pt8mm/roi'}; found none")


def _voxels(options: Options, subject: str, n_voxels: int
            ) -> tuple[dict[str, np.ndarray], list[str], np.ndarray, dict[str, Any]]:
    """Voxel coordinates, ROI names and masks (n_rois, n_voxels), geometry attributes."""
    if options.rois is None:
        minus = np.full(n_voxels, -1, np.int64)
        return ({VOXEL_I: minus, VOXEL_J: minus.copy(), VOXEL_K: minus.copy()},
                ["nsdgeneral"], np.ones((1, n_voxels), bool), {})
    roi_dir, nsd_root = _roi_dir(options.rois, subject)
    path = roi_dir / "nsdgeneral.nii.gz"
    grid, affine, img = _io.nifti_header(path)
    ijk = np.nonzero(_io.nifti_data(path) > 0)  # C order, as Brain-Diffuser's mask>0
    if ijk[0].size != n_voxels:
        raise ReaderError(f"{path}: expected {n_voxels} voxels > 0 (the fMRI files' columns); "
                          f"found {ijk[0].size}")
    names, masks, _ = _read_rois(roi_dir, nsd_root, (path, img), ijk)
    voxels = {k: np.asarray(a, np.int64) for k, a in zip((VOXEL_I, VOXEL_J, VOXEL_K), ijk)}
    return voxels, names, masks, {"volume_shape": [int(n) for n in grid[:3]],
                                  "affine": np.asarray(affine).tolist()}


def _load(path: Path, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of an fMRI file as float32, values as in the file."""
    with _io.reading(path, ".npy array"), np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(np.load(path, mmap_mode="r", allow_pickle=False)[start:stop],
                          dtype=np.float32)


def _trials(name: str, rows: dict[str, bdf.SplitRows], design: bdf.Design,
            files: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per file row, train then test; captions as ``caption_1..5`` when present."""
    parts = []
    for split in bdf.SPLITS:
        r = rows[split]
        first = np.array([t[0] for t in r.trials], np.int64)
        part = pd.DataFrame({
            STIMULUS: np.array([f"{name}/{i:05d}" for i in r.nsd_ids], dtype=object),
            SPLIT: np.full(r.nsd_ids.size, split, dtype=object),
            "session": design.session[first], "run": design.run[first],
            "repeat": np.zeros(r.nsd_ids.size, np.int64),
            "n_repeats": np.array([t.size for t in r.trials], np.int64),
            "nsd_trial": first})
        parts.append(part)
    trials = pd.concat(parts, ignore_index=True)
    caps = [files[s]["cap"] for s in bdf.SPLITS]
    if all(c is not None for c in caps):
        both = np.concatenate([np.asarray(c) for c in caps])
        for k in range(bdf.N_CAPTIONS):
            trials[f"caption_{k + 1}"] = (both[:, k] if k < both.shape[1] else
                                          np.full(len(both), "")).astype(object)
    return trials


def _blocks(files: dict[str, dict[str, Any]]) -> list[Block]:
    """Row blocks of at most BLOCK_ROWS rows, train file then test file."""
    blocks, start = [], 0
    for split in bdf.SPLITS:
        path, n = files[split]["fmri_path"], len(files[split]["fmri"])
        for a in range(0, n, BLOCK_ROWS):
            b = min(n, a + BLOCK_ROWS)
            blocks.append(Block(f"{split} rows {a}-{b - 1}", start + a, start + b,
                                (lambda p=path, a=a, b=b: _load(p, a, b)), (path,)))
        start += n
    return blocks


class BrainDiffuserReader(Reader):
    """Brain-Diffuser's prepared NSD arrays (see the module docstring)."""

    name = "brain-diffuser"
    dataset = "nsd"
    Options = Options
    normalization = "train-global"
    subject_regex = r"(?:subj)?0*([1-9]\d*)"
    subject_template = "subj{n:02d}"
    subject_examples = "NSD subjects like 1 or subj01"
    subject_pattern = r"subj0[1-8]"

    def list_subjects(self, root: Path) -> list[str]:
        """Subjects with a train fMRI file under ``root/processed_data``."""
        base = root / bdf.PROCESSED
        if not base.is_dir():
            return []
        found = []
        for p in base.iterdir():
            m = re.fullmatch(r"subj0([1-8])", p.name)
            if m and bdf.array_path(root, int(m.group(1)), "train", "fmri").is_file():
                found.append(p.name)
        return sorted(found)

    def open_subject(self, root: Path, subject: str, options: Any = None) -> RawSubject:
        """Check one subject's arrays against each other and the design; betas stay lazy."""
        options = options if options is not None else Options()
        subject = self.subject_name(subject)
        number = int(subject[4:])
        files = _split_files(root, number)
        rows, design, n_sess = _rows(root, number, options, files)
        n_voxels = int(files["train"]["fmri"].shape[1])
        voxels, names, masks, geometry = _voxels(options, subject, n_voxels)
        trials = _trials(self.store_dataset(), rows, design, files)
        train = (trials[SPLIT] == "train").to_numpy()
        sources = [expdesign_path(root, options)] + [
            files[s][f"{k}_path"] for s in bdf.SPLITS for k in ("fmri", "stim", "cap")
            if files[s][k] is not None]
        return RawSubject(
            dataset=self.store_dataset(), subject=subject, trials=trials,
            norm_group=np.zeros(len(trials), np.int64), norm_fit=train,
            voxels=voxels, roi_names=names, roi_mask=masks, blocks=_blocks(files),
            attrs={**geometry, "rows": ROWS, "sessions": list(range(1, n_sess + 1)),
                   "source_format": "brain-diffuser",
                   "source_files": [_io.file_record(p, root) for p in sources],
                   "rois_option": options.rois is not None},
            normalization={"method": "zscore", "group": "subject", "ddof": 1,
                           "statistics_from": "train", "peer_scale": f"1/{SCALE:g}",
                           "note": "each voxel of the repeat-averaged rows z-scored with the "
                                   "train rows' mean and sample std (ddof=1), as "
                                   "Brain-Diffuser's regression scripts do after dividing "
                                   "by 300 (peer_scale), which a z-score does not change"})

    def stimulus_table(self, root: Path, options: Any = None) -> StimulusTable:
        """Every subject's images that have a stim file, as ``nsd/<5-digit 0-based 73k id>``,
        each once (the first subject's row that holds it): file = the stim ``.npy`` (relative
        to ``root``), index = its row. Images without a stim file are left out: the ingest
        lists them without pixels, and another source's rows for them (NSD's image brick)
        stay."""
        options = options if options is not None else Options()
        seen: dict[str, tuple[str, int]] = {}
        for subject in self.list_subjects(root):
            number = int(subject[4:])
            files = _split_files(root, number)
            rows, _, _ = _rows(root, number, options, files)
            for split in bdf.SPLITS:
                if files[split]["stim"] is None:
                    continue
                rel = str(files[split]["stim_path"].relative_to(root))
                for r, i in enumerate(rows[split].nsd_ids.tolist()):
                    seen.setdefault(f"{self.store_dataset()}/{i:05d}", (rel, r))
        from nfstore.readers.nsd import coco_ids

        ids = sorted(seen)
        return StimulusTable(
            dataset=self.store_dataset(), stimulus=np.array(ids, dtype=object),
            file=np.array([seen[i][0] for i in ids], dtype=object),
            index=np.array([seen[i][1] for i in ids], dtype=np.int64),
            root=root.resolve(), coco_ids=coco_ids(root, self.store_dataset()))

    def synth_config(self) -> type:
        from nfstore.synth.brain_diffuser import BrainDiffuserSynthConfig

        return BrainDiffuserSynthConfig

    def check_synth(self, config: Any) -> None:
        from nfstore.synth.brain_diffuser import check_config

        check_config(config)

    def synthesize(self, out: Path, config: Any) -> dict[str, float]:
        from nfstore.synth.brain_diffuser import synth_brain_diffuser

        return synth_brain_diffuser(out, config)
