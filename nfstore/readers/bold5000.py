"""BOLD5000 reader (release 1 ROI files; release 2 in :mod:`nfstore.readers.bold5000_r2`) ->
:class:`RawSubject`.

Files (relative to the BOLD5000 root), as docs/datasets/bold5000.md lists them::

    ROIs/CSI{n}/mat/CSI{n}_ROIs_TR{1,2,3,4,5,34}.mat     one (trials x voxels) variable per ROI
    ROIs/CSI{n}/h5/CSI{n}_ROIs_TR{...}.h5                the same; may be transposed (MATLAB)
    ROIs/stim_lists/CSI0{n}_stim_lists.txt               trial order; 'rep_' marks repeated images
    BOLD5000_Stimuli/Scene_Stimuli/Presented_Stimuli/{COCO,ImageNet,Scene}/<image>
    BOLD5000_Stimuli/Scene_Stimuli/repeated_stimuli_113_list.txt   the test images
    BOLD5000_Stimuli/Stimuli_Presentation_Lists/CSI{n}/CSI{n}_sessNN/<one .txt per run>

The voxel axis is the ROI variables concatenated in the order EarlyVis, LOC, OPA, PPA, RSC (left
hemisphere first); release-1 ROI files have no grid positions, so ``voxel_i/j/k`` are -1.

Release 2 (GLMsingle betas, ``CSI{n}_GLMbetas-*`` files at the root) is read when the root has
those files and no ``ROIs/`` folder, or with ``release=2``; both releases name stimuli
``bold5000/<stem>``, so an image is one stimulus whichever release showed it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfstore import _io
from nfstore.errors import MissingFileError, OptionError, ReaderError
from nfstore.names import SPLIT, STIMULUS, VOXEL_I, VOXEL_J, VOXEL_K
from nfstore.readers._rois import union_aliases
from nfstore.readers.base import Block, RawSubject, Reader, StimulusTable, repeat_index

NAME = "bold5000"
ROI_KEYS = tuple(f"{h}{r}" for r in ("EarlyVis", "LOC", "OPA", "PPA", "RSC") for h in ("LH", "RH"))
ALIASES = {r: (f"LH{r}", f"RH{r}") for r in ("EarlyVis", "LOC", "OPA", "PPA", "RSC")}
TRS = ("TR1", "TR2", "TR3", "TR4", "TR5", "TR34")
STIMULI = Path("BOLD5000_Stimuli/Scene_Stimuli/Presented_Stimuli")
TEST_LISTS = (Path("BOLD5000_Stimuli/Scene_Stimuli/repeated_stimuli_113_list.txt"),
              STIMULI / "repeated_stimuli_113_list.txt")
PRESENTATION = Path("BOLD5000_Stimuli/Stimuli_Presentation_Lists")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _sessions_option(text: str) -> tuple[int, ...] | None:
    """``"1-3,7"`` -> ``(1, 2, 3, 7)`` (the ``sessions`` option as text)."""
    from nfstore.readers.base import parse_ranges

    found = parse_ranges(text, "sessions")
    return tuple(found) if found else None


@dataclass(frozen=True)
class Options:
    """BOLD5000 ingest options.

    Attributes
    ----------
    release : {1, 2} or None
        Release 1 (ROI files) or 2 (GLMsingle betas); default: 2 when the root holds
        ``CSI*_GLMbetas-*`` files and no ``ROIs/`` folder, else 1.
    tr : {"TR1", "TR2", "TR3", "TR4", "TR5", "TR34"}
        Release 1: which ROI file, a single volume after onset or the mean of TR3 and TR4.
    format : {"auto", "mat", "h5"}
        Release 1: ROI file format; ``auto`` takes ``.mat`` where present, else ``.h5``.
    glm : {"TYPED", "TYPEA", "TYPEB", "TYPEC"}
        Release 2: beta type (TYPED = FITHRF-GLMDENOISE-RR, the recommended one).
    sessions : tuple of int or None
        Release 2: 1-based sessions to ingest (default: every session file found).
    presentation_lists : bool
        Release 2: take runs from the release-1 presentation lists when present (checked
        against imgnames); else runs of ``trials_per_run`` trials.
    trials_per_run : int
        Release 2 without presentation lists [37].
    roi_dir : str or None
        Release 2: folder of the ROI masks (default: ``derivatives/spm/sub-CSI<n>``,
        ``spm/sub-CSI<n>`` or ``sub-CSI<n>`` under the root).
    """

    release: int | None = field(default=None, metadata={"choices": (1, 2),
                                                        "help": "1 or 2 (default: detected)"})
    tr: str = field(default="TR34", metadata={"choices": TRS})
    format: str = field(default="auto", metadata={"choices": ("auto", "mat", "h5")})
    glm: str = field(default="TYPED", metadata={"choices": ("TYPED", "TYPEA", "TYPEB", "TYPEC")})
    sessions: tuple[int, ...] | None = field(default=None, metadata={
        "parse": _sessions_option, "help": "sessions, e.g. 1-15 or 1,3 (default: all found)"})
    presentation_lists: bool = True
    trials_per_run: int = 37
    roi_dir: str | None = None


def stem(name: str) -> str:
    """Stimulus stem of a presented file name: 'rep_' and the extension stripped."""
    name = name.strip()
    name = name[4:] if name.startswith("rep_") else name
    return name.rsplit(".", 1)[0] if name.lower().endswith(IMAGE_SUFFIXES) else name


def _roi_file(root: Path, subject: str, options: Options) -> Path:
    if options.tr not in TRS:
        raise OptionError(f"tr: expected one of {list(TRS)}; found {options.tr!r}")
    if options.format not in ("auto", "mat", "h5"):
        raise OptionError(f"format: expected auto, mat or h5 for bold5000; found "
                          f"{options.format!r}")
    mat = root / "ROIs" / subject / "mat" / f"{subject}_ROIs_{options.tr}.mat"
    h5 = root / "ROIs" / subject / "h5" / f"{subject}_ROIs_{options.tr}.h5"
    if options.format == "mat" or (options.format == "auto" and mat.is_file()):
        return _io.require_file(mat, f"the {options.tr} ROI betas of {subject}")
    return _io.require_file(h5, f"the {options.tr} ROI betas of {subject} (.mat or .h5)")


def _roi_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """ROI variable -> shape, from the file's directory (no data read); every variable must
    hold floats (MATLAB double or single)."""
    if path.suffix == ".mat":
        import scipy.io

        with _io.reading(path, "MATLAB v5 .mat"):
            listing = scipy.io.whosmat(str(path))
        found = {name: tuple(shape) for name, shape, _ in listing}
        kinds = {name: cls for name, _, cls in listing}
        floats = ("double", "single")
    else:
        import h5py

        with _io.reading(path, "HDF5"), h5py.File(path, "r") as f:
            found = {k: tuple(f[k].shape) for k in f.keys()}
            kinds = {k: str(f[k].dtype) if hasattr(f[k], "dtype") else "group" for k in f}
        floats = ("float16", "float32", "float64")
    odd = {k: v for k, v in kinds.items() if k in ROI_KEYS and v not in floats}
    if odd:
        name = sorted(odd)[0]
        raise ReaderError(f"{path}: expected ROI variables of a float type ({', '.join(floats)})"
                          f"; found {name} of type {odd[name]}")
    unknown = sorted(set(found) - set(ROI_KEYS))
    missing = [k for k in ROI_KEYS if k not in found]
    if unknown or missing:
        raise ReaderError(f"{path}: expected ROI variables {list(ROI_KEYS)}; "
                          + (f"unknown {unknown}" if unknown else "")
                          + ("; " if unknown and missing else "")
                          + (f"missing {missing}" if missing else ""))
    return found


def _session_blocks(path: Path, transposed: bool, n_trials: int, session: np.ndarray | None
                    ) -> list[Block]:
    """One block per session (the file is read once, on the first block's load, and held until
    the last block is loaded); one block for the whole file when sessions are unknown."""
    if session is None:
        return [Block(path.name, 0, n_trials, lambda: _load(path, transposed), (path,))]
    cuts = [0] + [i for i in range(1, session.size) if session[i] != session[i - 1]]
    cuts.append(session.size)
    held: dict[str, np.ndarray] = {}

    def part(a: int, b: int, last: bool) -> np.ndarray:
        if "x" not in held:
            held["x"] = _load(path, transposed)
        out = held["x"][a:b].copy()
        if last:
            held.clear()
        return out

    return [Block(f"{path.name} session {int(session[a])}", a, b,
                  (lambda a=a, b=b, last=(b == session.size): part(a, b, last)), (path,))
            for a, b in zip(cuts[:-1], cuts[1:])]


def _load(path: Path, transposed: bool) -> np.ndarray:
    """All ROI variables side by side: float32 (n_trials, n_voxels) in ROI_KEYS order (values
    beyond float32's range become inf, which the ingest refuses or replaces)."""
    if path.suffix == ".mat":
        data = _io.load_mat(path, ROI_KEYS)
    else:
        import h5py

        with _io.reading(path, "HDF5"), h5py.File(path, "r") as f:
            data = {k: f[k][()] for k in ROI_KEYS}
    with _io.reading(path, "BOLD5000 ROI betas"), np.errstate(over="ignore"):
        parts = [np.asarray(data[k], dtype=np.float32) for k in ROI_KEYS]
        return np.hstack([p.T if transposed else p for p in parts])


def _sessions(root: Path, subject: str, names: list[str], list_path: Path
              ) -> tuple[np.ndarray, np.ndarray] | None:
    """Session and run (1-based) of every trial from the presentation lists, if present."""
    base = root / PRESENTATION / subject
    if not base.is_dir():
        return None
    session, run, seq = [], [], []
    sess_dirs = sorted(p for p in base.iterdir() if re.search(r"sess(\d+)$", p.name))
    for sd in sess_dirs:
        s = int(re.search(r"sess(\d+)$", sd.name).group(1))  # type: ignore[union-attr]
        for r, run_file in enumerate(sorted(sd.glob("*.txt")), start=1):
            text = _io.read_text(run_file, "a BOLD5000 presentation list")
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            seq += lines
            session += [s] * len(lines)
            run += [r] * len(lines)
    if [stem(x) for x in seq] != [stem(x) for x in names]:
        raise ReaderError(f"{base}: expected the runs to list the {len(names)} trials of "
                          f"{list_path.name} in order; found {len(seq)} trials that differ")
    return np.array(session, np.int64), np.array(run, np.int64)


def _test_stems(root: Path) -> set[str]:
    for rel in TEST_LISTS:
        if (root / rel).is_file():
            text = _io.read_text(root / rel, "the list of repeated (test) images")
            return {stem(x) for x in text.splitlines() if x.strip()}
    raise MissingFileError(f"{root / TEST_LISTS[0]}: missing file; expected the list of "
                           f"repeated (test) images")


class BOLD5000Reader(Reader):
    """BOLD5000 release-1 ROI files (see the module docstring)."""

    name = NAME
    Options = Options
    normalization = "session-train"
    subject_regex = r"(?:CSI)?0*([1-9])"
    subject_template = "CSI{n}"
    subject_examples = "BOLD5000 subjects like 1 or CSI1"
    subject_pattern = r"CSI[1-4]"

    def list_subjects(self, root: Path) -> list[str]:
        """Subjects with a ``ROIs/CSI<n>`` folder (release 1) or, in a release-2 tree (see
        :func:`nfstore.readers.bold5000_r2.detect`), with betas files."""
        from nfstore.readers import bold5000_r2

        if bold5000_r2.detect(root) == 2:
            return bold5000_r2.list_subjects(root)
        base = root / "ROIs"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if re.fullmatch(r"CSI\d", p.name))

    def synth_config(self) -> type:
        from nfstore.synth.bold5000 import BOLD5000SynthConfig

        return BOLD5000SynthConfig

    def check_synth(self, config: Any) -> None:
        if config.release not in (1, 2):
            raise OptionError(f"release: expected 1 or 2; found {config.release!r}")

    def synthesize(self, out: Path, config: Any) -> dict[str, float]:
        from nfstore.synth.bold5000 import synth_bold5000

        return synth_bold5000(out, config)

    def stimulus_table(self, root: Path, options: Any = None) -> StimulusTable:
        """Every presented image (COCO, ImageNet, Scene) as ``<name>/<stem>``."""
        base = root / STIMULI
        if not base.is_dir():
            raise MissingFileError(f"{base}: missing folder; expected the presented BOLD5000 "
                                   f"images in COCO/, ImageNet/, Scene/")
        rel = sorted(f"{STIMULI}/{folder.name}/{e.name}" for folder in os.scandir(base)
                     if folder.is_dir() for e in os.scandir(folder.path)
                     if e.name.lower().endswith(IMAGE_SUFFIXES))
        return StimulusTable(
            dataset=self.name,
            stimulus=np.array([f"{self.name}/{stem(r.rsplit('/', 1)[1])}" for r in rel],
                              dtype=object),
            file=np.array(rel, dtype=object), index=np.full(len(rel), -1, np.int64),
            root=root.resolve())

    def open_subject(self, root: Path, subject: str, options: Any = None) -> RawSubject:
        """Read stimulus lists and ROI file layout of one BOLD5000 subject and check them
        (release 2: :func:`nfstore.readers.bold5000_r2.open_release2`)."""
        from nfstore.readers import bold5000_r2

        options = options if options is not None else Options()
        subject = self.subject_name(subject)
        if (options.release or bold5000_r2.detect(root)) == 2:
            return bold5000_r2.open_release2(self.name, root, subject, options,
                                             self.stimulus_table(root, options))
        return self._open_release1(root, subject, options)

    def _open_release1(self, root: Path, subject: str, options: Options) -> RawSubject:
        """One subject of a release-1 tree (ROI files and stimulus lists)."""
        if options.sessions is not None:
            raise OptionError(f"sessions: expected none for a release-1 tree (its ROI files "
                              f"hold every session); found {options.sessions}")
        n = subject[-1]
        list_path = _io.require_file(root / "ROIs/stim_lists" / f"CSI0{n}_stim_lists.txt",
                                     f"the trial order of {subject}")
        names = [ln.strip() for ln in _io.read_text(list_path, "a BOLD5000 stimulus list")
                 .splitlines() if ln.strip()]
        path = _roi_file(root, subject, options)
        shapes = _roi_shapes(path)
        n_trials = len(names)
        lead = {k: s[0] for k, s in shapes.items()}
        if all(len(s) == 2 and s[0] == n_trials for s in shapes.values()):
            transposed = False
        elif path.suffix == ".h5" and all(len(s) == 2 and s[1] == n_trials
                                          for s in shapes.values()):
            transposed = True  # written by MATLAB: (voxels, trials)
        else:
            raise ReaderError(f"{path}: expected {n_trials} trials ({list_path.name} lines) in "
                              f"every ROI variable; found {sorted(set(lead.values()))} rows")
        sizes = [shapes[k][0 if transposed else 1] for k in ROI_KEYS]

        stems = np.array([stem(x) for x in names], dtype=object)
        table = self.stimulus_table(root, options)
        known = set(table.stimulus.tolist())
        missing = [s for s in stems if f"{self.name}/{s}" not in known]
        if missing:
            raise MissingFileError(f"{root / STIMULI}: missing image for '{missing[0]}' referenced "
                                   f"by {list_path} ({len(set(missing))} images missing)")
        test = np.isin(stems, sorted(_test_stems(root)))
        runs = _sessions(root, subject, names, list_path)
        session, run = runs if runs is not None else (np.ones(n_trials, np.int64),) * 2
        trials = pd.DataFrame({
            STIMULUS: np.array([f"{self.name}/{s}" for s in stems], dtype=object),
            SPLIT: np.where(test, "test", "train").astype(object),
            "session": session, "run": run, "repeat": repeat_index(stems)})

        owner = np.repeat(np.arange(len(ROI_KEYS)), sizes)
        by_name = {k: owner == i for i, k in enumerate(ROI_KEYS)}
        a_names, a_masks = union_aliases(by_name, ALIASES)
        minus = np.full(owner.size, -1, np.int64)
        records = [_io.file_record(p, root) for p in (list_path, path)]
        return RawSubject(
            dataset=self.name, subject=subject, trials=trials,
            norm_group=session if runs is not None else np.ones(n_trials, np.int64),
            voxels={VOXEL_I: minus, VOXEL_J: minus, VOXEL_K: minus.copy(),
                    "roi_column": np.concatenate([np.arange(s) for s in sizes]).astype(np.int64)},
            roi_names=list(ROI_KEYS) + a_names,
            roi_mask=np.array([by_name[k] for k in ROI_KEYS] + a_masks, dtype=bool),
            blocks=_session_blocks(path, transposed, n_trials,
                                   session if runs is not None else None),
            attrs={"tr": options.tr, "roi_file_format": path.suffix.lstrip("."),
                   "roi_file_transposed": transposed, "sessions_known": runs is not None,
                   "source_files": records},
            normalization={"method": "zscore",
                           "group": "session" if runs is not None else "subject",
                           "ddof": 0, "statistics_from": "train"},
        )
