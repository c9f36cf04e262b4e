"""``nf export mindeye2``: one store subject written as a MindEye2 bundle
(:mod:`nfstore.community.mindeye2_files` has the layout), so that MindEye2's ``Train.ipynb`` and
``recon_inference.ipynb`` read it unchanged.

- Betas: the store's betas as they are (already normalized), float32, one row per trial in
  the store's trial order; imagery trials (GOD) are left out. Columns follow the C order of
  the voxel grid when the store knows every voxel's grid index (NSD: exactly MindEye2's
  ``nsdgeneral == 1`` columns), else the store's voxel order.
- Images: for NSD the row is the 0-based 73k id (73000 rows); for other datasets the position
  of the stimulus among the sorted unique stimulus ids of the export. Only the subject's rows
  are written (one image per chunk, the rest is fill value). ``stimuli_subj0N.tsv`` lists
  each row's store stimulus id.
- Tars: ``train/{session-1}.tar`` (train trials), ``new_test/0.tar`` (every test trial) and
  ``test/0.tar`` (NSD: the test trials of all but the subject's last 3 sessions of the full
  release, MindEye2's older test set; other datasets: every test trial).
- Behav columns: 0 image row, 1 subject number (from its name: ``sub-03`` -> 3, ``CSI1`` -> 1),
  2 session, 3 run, 4 trial within the run (1-based, chronological), 5 betas row, 16 = 1 for
  test trials; the other columns are -1 (the store does not hold them).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfstore.community import column_order
from nfstore.community import mindeye2_files as me2
from nfstore.errors import OptionError, QueryError
from nfstore.names import SPLIT, STIMULUS, TRIAL
from nfstore.transaction import replace_path

NSD_IMAGES = 73000
BLOCK_ROWS = 1024


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote (``str``: one line)."""

    subject: str
    out: Path
    subject_no: int
    trials: int
    voxels: int
    images: int
    tars: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        tars = ", ".join(f"{k} {v}" for k, v in self.tars.items())
        return (f"{self.subject} -> {self.out} (MindEye2 subj{self.subject_no:02d}): "
                f"{self.trials} trials x {self.voxels} voxels ({tars}), {self.images} images, "
                f"{self.seconds:.1f} s")


@dataclass(frozen=True)
class _Plan:
    """What to write: kept trials (store rows), their behav rows, voxel order, image rows."""

    rows: np.ndarray          # int (n,) store trial rows
    behav: np.ndarray         # float64 (n, 17)
    old_test: np.ndarray      # bool (n,)
    voxel_order: np.ndarray   # int (V,)
    stimuli: list[str]        # (m,) unique stimulus ids, by image row
    image_rows: np.ndarray    # int (m,) increasing
    n_image_rows: int
    subject_no: int


def subject_number(subject: str) -> int:
    """MindEye2's subject number from a store key (``nsd/subj01`` -> 1, ``god/sub-03`` -> 3,
    ``bold5000/CSI1`` -> 1)."""
    found = re.findall(r"\d+", subject.rsplit("/", 1)[-1])
    if not found or int(found[-1]) < 1:
        raise OptionError(f"subject: expected a name ending in a subject number >= 1; found "
                          f"{subject!r}")
    return int(found[-1])


def _plan(ds: Any, subject: str) -> _Plan:
    """The export plan of a subject's lazy dataset ``ds`` (coordinates only are read)."""
    split = np.asarray(ds[SPLIT].values).astype(str)
    rows = np.flatnonzero(split != "imagery")
    if rows.size == 0:
        raise QueryError(f"subject: {subject} has no train or test trials to export")
    stim = np.asarray(ds[STIMULUS].values).astype(str)[rows]
    session = np.asarray(ds["session"].values, np.int64)[rows]
    run = np.asarray(ds["run"].values, np.int64)[rows]
    if session.min() < 1:  # train tars are train/{session-1}.tar
        raise QueryError(f"subject: expected 1-based sessions; {subject} has session "
                         f"{int(session.min())}")
    number = subject_number(subject)
    if subject.startswith("nsd/"):
        index = np.array([int(s.rsplit("/", 1)[1]) for s in stim], np.int64)
        n_image_rows = max(NSD_IMAGES, int(index.max()) + 1)
        cut = me2.NSD_SESSIONS[number - 1] - me2.RECENT_SESSIONS if number <= 8 else None
    else:
        uniq, index = np.unique(stim, return_inverse=True)
        n_image_rows, cut = uniq.size, None
    trial = pd.DataFrame({"s": session, "r": run}).groupby(["s", "r"]).cumcount().to_numpy() + 1
    test = split[rows] == "test"
    behav = me2.behav_matrix(rows.size, {
        me2.IMAGE: index, me2.SUBJECT: np.full(rows.size, number), me2.SESSION: session,
        me2.RUN: run, me2.TRIAL: trial, me2.ROW: np.arange(rows.size), me2.SHARED: test})
    old = session <= cut if cut is not None else np.ones(rows.size, bool)
    order = column_order(ds)
    image_rows, first = np.unique(index, return_index=True)
    return _Plan(rows, behav, old, order, [str(stim[i]) for i in first], image_rows,
                 n_image_rows, number)


def _pixels(store: Any, stimuli: list[str], batch: int = 32) -> Any:
    """uint8 (H, W, 3) of each stimulus, in order, read ``batch`` at a time."""
    for a in range(0, len(stimuli), batch):
        part = stimuli[a:a + batch]
        try:
            px = store.images(part).values
        except QueryError:  # one-image files of different sizes
            px = store.images(part, size=(me2.IMAGE_SIZE, me2.IMAGE_SIZE)).values
        yield from px


def _betas_blocks(x: Any, plan: _Plan, block_rows: int) -> Any:
    """(first output row, float32 (n, V)) blocks of the kept trials, columns reordered."""
    for a in range(0, plan.rows.size, block_rows):
        idx = plan.rows[a:a + block_rows]
        values = np.asarray(x.isel({TRIAL: idx}).values, dtype=np.float32)
        yield a, values[:, plan.voxel_order]


def _write(store: Any, subject: str, tmp: Path, plan: _Plan, block_rows: int,
           progress: bool) -> dict[str, int]:
    x = store.betas(subject)
    shape = (plan.rows.size, plan.voxel_order.size)
    me2.write_betas(tmp / me2.betas_name(plan.subject_no), shape,
                    _betas_blocks(x, plan, block_rows))
    counts = me2.write_tars(tmp / me2.wds_dir(plan.subject_no), plan.behav, plan.old_test)
    from tqdm.auto import tqdm

    pixels = tqdm(_pixels(store, plan.stimuli), total=len(plan.stimuli), unit="image",
                  desc=f"{subject} images", disable=not progress, leave=False)
    me2.write_images(tmp / me2.IMAGES, plan.n_image_rows, plan.image_rows, pixels)
    pd.DataFrame({"index": plan.image_rows, "stimulus": plan.stimuli}).to_csv(
        tmp / f"stimuli_subj{plan.subject_no:02d}.tsv", sep="\t", index=False)
    return counts


def export_subject(store: Any, subject: str, out: str | os.PathLike[str], *,
                   overwrite: bool = False, progress: bool = False, **options: Any
                   ) -> ExportSummary:
    """Write ``subject`` of ``store`` as a MindEye2 bundle in the folder ``out``.

    Parameters
    ----------
    store : path, URL or opened Store
    subject : str
        Store key, e.g. ``nsd/subj01``, ``god/sub-03``, ``bold5000/CSI1``.
    out : path
        The bundle root (MindEye2's ``data_path``); written beside and renamed into place.
    overwrite : bool
        Replace an existing ``out``.
    progress : bool
        Show a progress bar over the images (the slow part: read, resize, convert).
    **options
        ``block_rows`` (int, default 1024): trials read from the store at once.
    """
    from nfstore.store import open_store

    t0 = time.perf_counter()
    block_rows = int(options.pop("block_rows", BLOCK_ROWS))
    if options:
        raise OptionError(f"{sorted(options)[0]}: not an option of the mindeye2 export; "
                          f"valid: block_rows")
    out = Path(out)
    if out.exists() and not overwrite:
        raise OptionError(f"out: expected a path that does not exist (or overwrite); found "
                          f"{out}")
    st = open_store(store)
    plan = _plan(st.dataset(subject), subject)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        counts = _write(st, subject, tmp, plan, max(1, block_rows), progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_path(tmp, out)
    return ExportSummary(subject, out, plan.subject_no, int(plan.rows.size),
                         int(plan.voxel_order.size), int(plan.image_rows.size), counts,
                         time.perf_counter() - t0)
