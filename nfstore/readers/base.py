"""The reader contract: what every dataset reader returns.

A reader translates one dataset's original files into these objects and nothing else:
normalization, splitting into chunks and writing live in :mod:`nfstore.normalize` and
:mod:`nfstore.ingest`. Every reader module exposes the same three functions::

    list_subjects(root: Path) -> list[str]
    open_subject(root: Path, subject: str, options: Options) -> RawSubject
    stimulus_table(root: Path, options: Options) -> StimulusTable

``open_subject`` reads headers, design and ROI files and checks their consistency; the betas
themselves are read block by block (``Block.load``), so that ingest streams.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfstore.errors import OptionError


@dataclass(frozen=True)
class Block:
    """A contiguous run of trials read together (an NSD session, a GOD file, ...).

    Attributes
    ----------
    label : str
        Human-readable name, e.g. ``"session 3"``.
    start, stop : int
        Rows ``start:stop`` of the subject's trial table.
    load : callable
        Returns the betas of these trials, float32 array of shape (stop - start, n_voxels),
        in signal units (NSD: percent signal change), voxels in the subject's voxel order.
    files : tuple of Path
        Source files this block reads.
    """

    label: str
    start: int
    stop: int
    load: Callable[[], np.ndarray]
    files: tuple[Path, ...]


@dataclass
class RawSubject:
    """A subject's trials, voxels and ROIs as read from the original files (not normalized).

    Attributes
    ----------
    dataset, subject : str
        Store identifiers, e.g. ``"nsd"``, ``"subj01"``.
    trials : DataFrame of length n_trials
        Columns ``stimulus`` (str), ``split`` (str), ``session`` (int, 1-based), ``run`` (int,
        1-based within session), ``repeat`` (int, 0-based) and optional extra int columns.
    norm_group : array of shape (n_trials,)
        Normalization group of every trial (z-scored together); never spans two blocks.
    voxels : dict of str to array of shape (n_voxels,)
        Voxel coordinates (``voxel_i``, ``voxel_j``, ``voxel_k`` and optional extras).
    roi_names : list of str, length n_rois
    roi_mask : bool array of shape (n_rois, n_voxels)
    blocks : list of Block
        Cover the trial table in order, without gaps.
    attrs : dict
        Provenance and geometry (JSON-serializable).
    normalization : dict
        Description of the default normalization (method, grouping, ddof, scale).
    norm_fit : bool array of shape (n_trials,), optional
        Trials whose statistics normalize their group; default: the train trials.
    """

    dataset: str
    subject: str
    trials: pd.DataFrame
    norm_group: np.ndarray
    voxels: dict[str, np.ndarray]
    roi_names: list[str]
    roi_mask: np.ndarray
    blocks: list[Block]
    attrs: dict[str, Any] = field(default_factory=dict)
    normalization: dict[str, Any] = field(default_factory=dict)
    norm_fit: np.ndarray | None = None

    @property
    def n_trials(self) -> int:
        return len(self.trials)

    @property
    def n_voxels(self) -> int:
        return int(self.roi_mask.shape[1])


@dataclass(frozen=True)
class StimulusTable:
    """Stimulus images of one dataset and where their pixels live.

    Attributes
    ----------
    dataset : str
    stimulus : array of str, shape (n_stimuli,)
        Store stimulus ids (``nsd/00042``).
    file : array of str, shape (n_stimuli,)
        Path of the file holding the pixels, relative to ``root``.
    index : array of int, shape (n_stimuli,)
        Row in ``file`` for image bricks, -1 for one-image files.
    root : Path
        Raw dataset root (absolute).
    coco_ids : dict of str to int, optional
        COCO id of stimuli the dataset names one for (NSD's ``cocoId``); the identity of the
        others follows their file names (:mod:`nfstore.identity`).
    """

    dataset: str
    stimulus: np.ndarray
    file: np.ndarray
    index: np.ndarray
    root: Path
    coco_ids: dict[str, int] = field(default_factory=dict)


def parse_subject(spec: str | int, pattern: str, template: str, examples: str) -> str:
    """Canonical subject name from a user's spelling.

    Parameters
    ----------
    spec : str or int
        What the user typed (``1``, ``"subj01"``, ...).
    pattern : str
        Regular expression (case-insensitive) whose group 1 is the subject number.
    template : str
        Format of the canonical name, given the number as ``n`` (``"subj{n:02d}"``).
    examples : str
        Accepted spellings, for the error message.
    """
    m = re.fullmatch(pattern, str(spec).strip(), flags=re.IGNORECASE)
    if not m:
        raise OptionError(f"--subjects: expected {examples}; got {spec!r}")
    return template.format(n=int(m.group(1)))


def parse_ranges(spec: str | None, option: str = "--sessions") -> list[int] | None:
    """Parse ``"1-3,7"`` into ``[1, 2, 3, 7]``; ``None`` stays ``None``."""
    if spec is None:
        return None
    out: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise OptionError(f"{option}: expected numbers or ranges like '1-37,40'; "
                              f"got {spec!r}") from None
        if a < 1 or b < a:
            raise OptionError(f"{option}: expected increasing 1-based ranges like '1-37'; "
                              f"got {spec!r}")
        out.extend(range(a, b + 1))
    return sorted(set(out))


def contiguous_blocks(keys: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """Split rows into ``(start, stop)`` ranges of at most ``max_rows`` rows that never cut a
    run of equal ``keys`` (a normalization group), unless that run alone is longer.

    Parameters
    ----------
    keys : array of shape (n_rows,)
    max_rows : int
    """
    cuts = [0] + [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]] + [len(keys)]
    out: list[tuple[int, int]] = []
    start = 0
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b - start > max_rows and a > start:
            out.append((start, a))
            start = a
    if start < len(keys):
        out.append((start, len(keys)))
    return out


def repeat_index(stimuli: np.ndarray) -> np.ndarray:
    """0-based occurrence index of each stimulus in sequence order, shape (n_trials,)."""
    return pd.Series(stimuli).groupby(stimuli).cumcount().to_numpy()
