"""THINGS-fMRI single-trial responses (the ``betas_csv`` table release) -> :class:`RawSubject`.

Files (figshare, THINGS-data)::

    betas_csv/sub-XX_ResponseData.h5       pandas frame, voxels x trials (see _things_files)
    betas_csv/sub-XX_StimulusMetadata.csv  one row per trial: trial_type, session, run,
                                           subject_id, trial_id, stimulus, concept
    betas_csv/sub-XX_VoxelMetadata.csv     one row per voxel: voxel_id, voxel_x/y/z, ...,
                                           ROI columns from V1 onward (0/1)
    brainmasks/sub-XX_space-T1w_brainmask.nii.gz   optional: checks voxel_x/y/z, gives the grid
    object_images/<concept>/<stimulus>     THINGS images (``images=DIR`` when elsewhere)

The tables are also found directly at the root and in ``betas_csv/betas_csv`` (as unpacked by
some archivers). ResponseData column ``trial_id`` holds the trial of StimulusMetadata row
``trial_id``; catch trials (not in the release, but possible in a user's table) are dropped and
counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfstore import _io
from nfstore.errors import MissingFileError, ReaderError
from nfstore.names import SPLIT, STIMULUS, VOXEL_I, VOXEL_J, VOXEL_K
from nfstore.readers import _things_files as tf
from nfstore.readers._rois import union_aliases
from nfstore.readers.base import (
    Block,
    RawSubject,
    Reader,
    StimulusTable,
    contiguous_blocks,
    repeat_index,
)

NAME = "things"
TABLE_DIRS = ("betas_csv", ".", "betas_csv/betas_csv")
IMAGE_DIRS = ("object_images", "images", "THINGS/Images")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
CATCH = "catch"
ALIASES: dict[str, tuple[str, ...]] = {
    "V1": ("V1",), "V2": ("V2",), "V3": ("V3",), "V4": ("hV4",), "FFA": ("lFFA", "rFFA"),
    "PPA": ("lPPA", "rPPA"), "OPA": ("lTOS", "rTOS"), "RSC": ("lRSC", "rRSC"),
    "LOC": ("lLOC", "rLOC")}
# three real sessions (10 runs x 82 trials each): ResponseData.h5 is stored voxels x trials, so
# every block reads its columns out of every voxel row; a block of 2460 columns reads about as
# fast as one of 820, so three sessions per block make a third of the passes over the file
# (a real subject's block: 211k voxels x 2460 trials, 2.1 GB of float32)
BLOCK_TRIALS = 2460


@dataclass(frozen=True)
class Options:
    """THINGS ingest options.

    Attributes
    ----------
    images : str, optional
        Folder holding ``<concept>/<image>`` (default: the first of ``RAW_ROOT/object_images``,
        ``RAW_ROOT/images``, ``RAW_ROOT/THINGS/Images`` that exists).
    block_trials : int
        Trials read and written at a time (whole sessions; a longer session is one block).
    """

    images: str | None = field(default=None, metadata={
        "help": "folder with <concept>/<image> THINGS images [RAW_ROOT/object_images]"})
    block_trials: int = BLOCK_TRIALS


def tables_dir(root: Path) -> Path:
    """The folder holding ``sub-XX_*`` tables: ``betas_csv/``, the root, or
    ``betas_csv/betas_csv/`` (first with a StimulusMetadata file; ``betas_csv/`` if none)."""
    for rel in TABLE_DIRS:
        if any((root / rel).glob("sub-*_StimulusMetadata.csv")):
            return root / rel
    return root / TABLE_DIRS[0]


def images_dir(root: Path, options: Any) -> Path:
    """``options.images``, else the first existing of :data:`IMAGE_DIRS` under ``root``."""
    if options.images:
        return Path(options.images)
    return next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root / IMAGE_DIRS[0])


def _trials(path: Path, subject: str) -> tuple[pd.DataFrame, np.ndarray, int, int]:
    """Kept (non-catch) trials of a StimulusMetadata table.

    Returns
    -------
    trials : DataFrame of n_kept rows (stimulus, split, session, run, repeat, trial_id)
    rows : int array (n_kept,), their positions among the table's rows
    n_catch, n_rows : int
    """
    table = tf.read_csv(path, "THINGS stimulus metadata")
    tf.require_columns(path, list(table.columns), tf.STIMULUS_COLUMNS)
    kind = table["trial_type"].astype(str).str.strip().str.lower().to_numpy()
    bad = sorted(set(kind.tolist()) - {*SPLITS, CATCH})
    if bad:
        raise ReaderError(f"{path}: expected trial_type train, test or catch; found {bad[:5]}")
    if "subject_id" in table and (pd.to_numeric(table["subject_id"], errors="coerce")
                                  != int(subject[4:])).any():
        raise ReaderError(f"{path}: expected subject_id {int(subject[4:])} in every row; found "
                          f"{sorted(set(table['subject_id'].astype(str)))[:5]}")
    rows = np.flatnonzero(kind != CATCH)
    kept = table.iloc[rows]
    stems = np.array([Path(str(s)).stem for s in kept["stimulus"]], dtype=object)
    concept = (kept["concept"].astype(str).to_numpy() if "concept" in kept
               else np.array([s.rsplit("_", 1)[0] for s in stems], dtype=object))
    ints = {}
    for col in ("session", "run") + (("trial_id",) if "trial_id" in kept else ()):
        v = pd.to_numeric(kept[col], errors="coerce").to_numpy(np.float64)
        low = 0 if col == "trial_id" else 1
        bad = ~(np.isfinite(v) & (v == np.rint(v)) & (v >= low))
        if bad.any():
            raise ReaderError(f"{path}: expected integer {col} values >= {low}; found "
                              f"{kept[col].iloc[int(np.flatnonzero(bad)[0])]!r} "
                              f"({int(bad.sum())} bad)")
        ints[col] = v.astype(np.int64)
    trials = pd.DataFrame({
        STIMULUS: np.array([f"{NAME}/{s}" for s in stems], dtype=object),
        SPLIT: kind[rows].astype(object), "session": ints["session"], "run": ints["run"],
        "repeat": repeat_index(stems), "trial_id": ints.get("trial_id", rows.astype(np.int64)),
        "concept": concept, "file": kept["stimulus"].astype(str).to_numpy()})
    return trials, rows, int(len(table) - rows.size), int(len(table))


def _columns(layout: tf.ResponseLayout, meta: Path, trials: pd.DataFrame, rows: np.ndarray,
             n_rows: int) -> np.ndarray:
    """ResponseData column of every kept trial, int64 (n_kept,).

    A frame with one column per table row is indexed by ``trial_id``; one without the catch
    trials' columns (the release) by kept-row order.
    """
    if layout.n_trials == n_rows:
        cols = trials["trial_id"].to_numpy(np.int64)
        if cols.max(initial=-1) >= n_rows or np.unique(cols).size != cols.size:
            raise ReaderError(f"{meta}: expected distinct trial_id values in 0..{n_rows - 1} "
                              f"(ResponseData columns); found max {int(cols.max())}")
        return cols
    if layout.n_trials == rows.size:
        return np.arange(rows.size, dtype=np.int64)
    want = f"{n_rows}" if rows.size == n_rows else f"{n_rows} (or {rows.size} without catch)"
    raise ReaderError(f"{layout.path}: expected {want} trial columns, one per row of "
                      f"{meta.name}; found {layout.n_trials}")


def _rois(path: Path, table: pd.DataFrame, columns: list[str]
          ) -> tuple[list[str], np.ndarray, list[str]]:
    """Native ROIs (non-empty columns), then aliases not named like a native.

    Returns names, masks (bool, (n_rois, n_voxels)) and the skipped all-zero columns.
    """
    by_name: dict[str, np.ndarray] = {}
    empty: list[str] = []
    for col in columns:
        mask = table[col].to_numpy(np.float64) == 1
        name = tf.roi_name(col)
        if name in by_name:
            raise ReaderError(f"{path}: expected distinct ROI column names; found {name!r} twice")
        if mask.any():
            by_name[name] = mask
        else:
            empty.append(name)
    a_names, a_masks = union_aliases(by_name, {k: v for k, v in ALIASES.items()
                                               if k not in by_name and k not in empty})
    names = list(by_name) + a_names
    masks = np.array(list(by_name.values()) + a_masks, dtype=bool).reshape(-1, len(table))
    return names, masks, empty


def _grid(root: Path, subject: str, ijk: np.ndarray, meta: Path) -> dict[str, Any]:
    """Check voxel indices against the brain mask when it is there; its grid as attrs."""
    path = root / "brainmasks" / f"{subject}_space-T1w_brainmask.nii.gz"
    if not path.is_file():
        return {"brainmask": None}
    shape, affine, _ = _io.nifti_header(path)
    with _io.reading(path, "NIfTI"):
        mask = _io.nifti_data(path) > 0
    inside = (ijk < np.array(shape[:3])).all(axis=1)
    if mask.ndim != 3 or not inside.all() or not mask[tuple(ijk.T)].all() \
            or int(mask.sum()) != len(ijk):
        n_off = int((~inside).sum()) + int((~mask[tuple(ijk[inside].T)]).sum()) \
            if mask.ndim == 3 else -1
        raise ReaderError(f"{meta}: expected voxel_x/y/z to index the {mask.sum()} voxels of "
                          f"{path.name} (0-based); found {len(ijk)} voxels, {n_off} outside it")
    return {"brainmask": _io.file_record(path, root), "volume_shape": list(shape[:3]),
            "affine": np.asarray(affine).tolist()}


def _check_images(base: Path, meta: Path, trials: pd.DataFrame) -> None:
    """Every shown image (``trials`` columns ``concept``, ``file``) must be
    ``<base>/<concept>/<file>``; else MissingFileError naming the first missing one."""
    wanted = sorted(set(zip(trials["concept"], trials["file"])))
    missing = [base / c / f for c, f in wanted if not (base / c / f).is_file()]
    if missing:
        raise MissingFileError(f"{missing[0]}: missing image referenced by {meta.name} "
                               f"({len(missing)} missing); pass images=DIR if they live "
                               f"elsewhere")


class THINGSReader(Reader):
    """THINGS-fMRI single-trial responses (table release, see the module docstring)."""

    name = NAME
    Options = Options
    normalization = "session-train"
    subject_regex = r"(?:sub-?)?0*([1-9]\d*)"
    subject_template = "sub-{n:02d}"
    subject_examples = "THINGS subjects like 1 or sub-01"
    subject_pattern = r"sub-\d\d"

    def list_subjects(self, root: Path) -> list[str]:
        """Subjects with all three ``sub-XX_*`` tables."""
        base = tables_dir(root)
        found = [p.name.split("_", 1)[0] for p in base.glob("sub-*_StimulusMetadata.csv")]
        return sorted(self.subject_name(s) for s in found
                      if (base / f"{s}_ResponseData.h5").is_file()
                      and (base / f"{s}_VoxelMetadata.csv").is_file())

    def synth_config(self) -> type:
        from nfstore.synth.things import THINGSSynthConfig

        return THINGSSynthConfig

    def synthesize(self, out: Path, config: Any) -> dict[str, float]:
        from nfstore.synth.things import synth_things

        return synth_things(out, config)

    def stimulus_table(self, root: Path, options: Any = None) -> StimulusTable:
        """Every image under ``<images>/<concept>/`` as ``things/<file stem>``."""
        options = options if options is not None else Options()
        base = images_dir(root, options)
        if not base.is_dir():
            raise MissingFileError(f"{base}: missing folder; expected the THINGS images in "
                                   f"<concept>/ folders (pass images=DIR if they live elsewhere)")
        files = sorted(p for p in base.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
        stems = [p.stem for p in files]
        if len(set(stems)) != len(stems):
            dup = next(s for s in stems if stems.count(s) > 1)
            raise ReaderError(f"{base}: expected one image per file name; found {dup!r} twice")
        return StimulusTable(
            dataset=self.name,
            stimulus=np.array([f"{self.name}/{s}" for s in stems], dtype=object),
            file=np.array([p.relative_to(base).as_posix() for p in files], dtype=object),
            index=np.full(len(files), -1, np.int64), root=base.resolve())

    def open_subject(self, root: Path, subject: str, options: Any = None) -> RawSubject:
        """Read and check one subject's three tables (betas stay in ``blocks``)."""
        options = options if options is not None else Options()
        subject = self.subject_name(subject)
        base = tables_dir(root)
        meta, vox, data = (_io.require_file(base / f"{subject}_{k}", f"the THINGS {w} of {subject}")
                           for k, w in (("StimulusMetadata.csv", "stimulus metadata"),
                                        ("VoxelMetadata.csv", "voxel metadata"),
                                        ("ResponseData.h5", "single-trial responses")))
        trials, rows, n_catch, n_rows = _trials(meta, subject)
        table, roi_cols = tf.voxel_table(vox)
        layout = tf.response_layout(data)
        if layout.n_voxels != len(table):
            raise ReaderError(f"{data}: expected {len(table)} voxel rows (one per row of "
                              f"{vox.name}); found {layout.n_voxels}")
        if layout.voxel_id is not None and "voxel_id" in table and not np.array_equal(
                layout.voxel_id, table["voxel_id"].to_numpy(np.int64)):
            raise ReaderError(f"{data}: expected the voxel_id column of {vox.name}, row by row; "
                              f"found different ids")
        cols = _columns(layout, meta, trials, rows, n_rows)
        base_images = images_dir(root, options)
        _check_images(base_images, meta, trials)
        roi_names, roi_mask, empty = _rois(vox, table, roi_cols)
        ijk = table[list(tf.COORDS)].to_numpy(np.int64)
        voxels = {VOXEL_I: ijk[:, 0].copy(), VOXEL_J: ijk[:, 1].copy(), VOXEL_K: ijk[:, 2].copy()}
        voxels.update({c: table[c].to_numpy(np.int64 if c == "voxel_id" else np.float64)
                       for c in tf.VOXEL_EXTRAS if c in table})
        session = trials["session"].to_numpy()
        blocks = [Block(f"trials {a}-{b - 1} (session {session[a]})", a, b,
                        (lambda c=cols[a:b]: tf.load_trials(layout, c)), (data,))
                  for a, b in contiguous_blocks(session, options.block_trials)]
        return RawSubject(
            dataset=self.name, subject=subject,
            trials=trials.drop(columns=["concept", "file"]), norm_group=session,
            voxels=voxels, roi_names=roi_names, roi_mask=roi_mask, blocks=blocks,
            attrs={"catch_trials_dropped": n_catch, "empty_roi_columns_skipped": len(empty),
                   "empty_roi_columns": empty, "images_root": str(base_images.resolve()),
                   "response_block": layout.values, **_grid(root, subject, ijk, vox),
                   "source_files": [_io.file_record(p, root) for p in (meta, vox, data)]},
            normalization={"method": "zscore", "group": "session", "ddof": 0,
                           "statistics_from": "train"},
        )
