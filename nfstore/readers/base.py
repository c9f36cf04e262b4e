"""The reader contract: what every dataset reader returns.

A reader translates one dataset's original files into these objects and nothing else:
normalization, splitting into chunks and writing live in :mod:`nfstore.normalize` and
:mod:`nfstore.ingest`. A reader is a subclass of :class:`Reader` (as xarray's
``BackendEntrypoint``): its class attributes declare the dataset key, options, default
normalization, subject naming and synthetic generator; its methods::

    list_subjects(root: Path) -> list[str]
    open_subject(root: Path, subject: str, options: Options) -> RawSubject
    stimulus_table(root: Path, options: Options) -> StimulusTable

``open_subject`` reads headers, design and ROI files and checks their consistency; the betas
themselves are read block by block (``Block.load``), so that ingest streams.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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
        raise OptionError(f"subjects: expected {examples}; got {spec!r}")
    return template.format(n=int(m.group(1)))


def parse_ranges(spec: str | None, option: str = "sessions") -> list[int] | None:
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


@dataclass(frozen=True)
class NoOptions:
    """Options of a reader that takes none."""


class Reader:
    """A dataset reader: subclass it (and register it under the ``nfstore.readers`` entry point
    group, see :mod:`nfstore.readers`) to add a dataset; no other file changes.

    Attributes
    ----------
    name : str
        Reader key: the ``nf ingest`` / ``nf synth`` argument and, unless ``dataset`` says
        otherwise, the store group (``nsd``) and stimulus-id prefix (``nsd/00042``).
        Lower-case letters, digits, ``_`` and ``-``.
    dataset : str
        The store group and stimulus-id prefix the reader writes, when it reads another
        source of a dataset another reader also writes (the MindEye2 bundle holds NSD
        subjects: ``name = "mindeye2"``, ``dataset = "nsd"``); empty means ``name``. Readers
        that share a group share its subject names and stimulus ids.
    Options : dataclass type
        Ingest options (all fields with defaults). Field metadata may hold ``choices`` (allowed
        values), ``parse`` (text -> value, for ``--option KEY=VALUE``) and ``help``.
    normalization : str
        Default ``--normalization`` (:data:`nfstore.normalize.NORMALIZATIONS`).
    subject_regex, subject_template, subject_examples : str
        How users spell subjects: a case-insensitive regex whose group 1 is the number, the
        canonical name given ``n`` (``"subj{n:02d}"``), and examples for the error message.
    subject_pattern : str
        Regex of every canonical subject name (the store schema's subject keys).

    Methods to implement: :meth:`list_subjects`, :meth:`open_subject`, :meth:`stimulus_table`,
    and for ``nf synth``: :meth:`synth_config` and :meth:`synthesize`.
    """

    name: ClassVar[str] = ""
    dataset: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    normalization: ClassVar[str] = "session-train"
    subject_regex: ClassVar[str] = r"0*([1-9]\d*)"
    subject_template: ClassVar[str] = "sub-{n:02d}"
    subject_examples: ClassVar[str] = "subjects like 1 or sub-01"
    subject_pattern: ClassVar[str] = r"sub-\d\d"

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} {self.name!r}>"

    @classmethod
    def store_dataset(cls) -> str:
        """The store group this reader writes (``dataset``, else ``name``)."""
        return cls.dataset or cls.name

    # ------------------------------------------------------------------ subjects
    def subject_name(self, spec: str | int) -> str:
        """Canonical subject name from a user's spelling (``1`` -> ``"sub-01"``)."""
        return parse_subject(spec, self.subject_regex, self.subject_template,
                             self.subject_examples)

    def list_subjects(self, root: Path) -> list[str]:
        """Canonical names of the subjects found under ``root`` (sorted)."""
        raise NotImplementedError(f"{type(self).__qualname__}.list_subjects")

    # ------------------------------------------------------------------ reading
    def open_subject(self, root: Path, subject: str, options: Any = None) -> RawSubject:
        """Read and check one subject's headers, design and ROIs; betas stay in ``blocks``."""
        raise NotImplementedError(f"{type(self).__qualname__}.open_subject")

    def stimulus_table(self, root: Path, options: Any = None) -> StimulusTable:
        """The dataset's stimuli (ids ``<name>/...``) and where their pixels live."""
        raise NotImplementedError(f"{type(self).__qualname__}.stimulus_table")

    # ------------------------------------------------------------------ options
    def parse_options(self, values: dict[str, Any] | None = None) -> Any:
        """``Options`` from keyword values: ``None`` keeps a default, text is converted to the
        field's type (``--option KEY=VALUE``), ``choices`` in field metadata are checked.

        Raises
        ------
        OptionError
            ``<key>: not an option of <name>; valid: ...`` or ``<key>: expected ...``.
        """
        fields = {f.name: f for f in dataclasses.fields(self.Options)}
        hints = typing.get_type_hints(self.Options)
        out: dict[str, Any] = {}
        for key, value in (values or {}).items():
            if value is None:
                continue
            if key not in fields:
                raise OptionError(f"{key}: not an option of {self.name}; valid: "
                                  f"{', '.join(sorted(fields)) or 'none'}")
            out[key] = _convert(key, value, hints[key], fields[key].metadata)
        return self.Options(**out)

    # ------------------------------------------------------------------ synthetic data
    def synth_config(self) -> type | None:
        """The dataclass of the synthetic generator's settings, or None if there is none."""
        return None

    def synthesize(self, out: Path, config: Any) -> dict[str, float]:
        """Write a synthetic raw tree of this dataset (original layout) into the empty folder
        ``out``; returns ``{"subjects", "trials", "images", "seconds"}``."""
        raise OptionError(f"dataset: {self.name!r} has no synthetic generator")

    def check_synth(self, config: Any) -> None:
        """Refuse (one-line OptionError) settings the generator cannot lay out."""


def _convert(key: str, value: Any, hint: Any, meta: Any) -> Any:
    """One option value: ``meta["parse"]`` or the type hint applied to text, then choices."""
    if isinstance(value, str):
        base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        kind = base[0] if len(base) == 1 else str
        try:
            if "parse" in meta:
                value = meta["parse"](value)
            elif kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                value = value.lower() in ("true", "1")
            elif kind in (int, float):
                value = kind(value)
            elif typing.get_origin(kind) is tuple:
                inner = (typing.get_args(kind) or (str,))[0]
                value = tuple(inner(v) for v in value.split(",") if v.strip())
        except OptionError:
            raise
        except ValueError:
            raise OptionError(f"{key}: expected {getattr(kind, '__name__', kind)}; found "
                              f"{value!r}") from None
    choices = meta.get("choices")
    if choices and value not in choices:
        raise OptionError(f"{key}: expected one of {list(choices)}; found {value!r}")
    return value
