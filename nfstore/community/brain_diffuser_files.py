"""Brain-Diffuser's prepared NSD arrays: file names, the trial design behind their rows, and
the array writer shared by ``nf synth brain-diffuser`` and the exporter.

Brain-Diffuser's ``data/prepare_nsddata.py`` writes, per subject N, under ``data/``::

    processed_data/subj0N/nsd_{train,test}_fmriavg_nsdgeneral_subN.npy   (n, V) float64
    processed_data/subj0N/nsd_{train,test}_stim_subN.npy                 (n, 425, 425, 3) float64
    processed_data/subj0N/nsd_{train,test}_cap_subN.npy                  (n, 5) fixed-width str

One row per image: the float32 mean of all the image's trials within the first 37 sessions,
rows in the order of each image's first appearance, train (``masterordering > 1000``) and
test (the shared images) separately. The files carry no image ids; :func:`design_rows`
recovers them from ``nsd_expdesign.mat``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nfstore import _io
from nfstore.errors import ReaderError

PROCESSED = "processed_data"
SPLITS = ("train", "test")
KINDS = {"fmri": "fmriavg_nsdgeneral", "stim": "stim", "cap": "cap"}
EXPDESIGN = Path("nsddata/experiments/nsd/nsd_expdesign.mat")
ANNOTS = Path("annots/COCO_73k_annots_curated.npy")
N_CAPTIONS = 5
TRIALS_PER_SESSION = 750  # real NSD, used when the design file lacks ``stimpattern``
RUN_SIZES = (63, 62) * 6  # real NSD: 12 runs of 63 (odd) and 62 (even) trials


def subject_dir(root: Path, number: int) -> Path:
    """``<root>/processed_data/subj0N``."""
    return Path(root) / PROCESSED / f"subj{number:02d}"


def array_path(root: Path, number: int, split: str, kind: str) -> Path:
    """Path of one array file: ``split`` train/test, ``kind`` fmri/stim/cap."""
    return subject_dir(root, number) / f"nsd_{split}_{KINDS[kind]}_sub{number}.npy"


@dataclass(frozen=True)
class Design:
    """The NSD trial design of one subject, as Brain-Diffuser reads it.

    Attributes
    ----------
    nsd_ids : int64 array (n_trials,)
        0-based 73k id of every trial (``subjectim[N-1, masterordering[t]-1] - 1``).
    test : bool array (n_trials,)
        ``masterordering[t] <= len(sharedix)`` (Brain-Diffuser: ``<= 1000``).
    session, run : int64 arrays (n_trials,)
        1-based session and run of every trial.
    session_stops : int64 array (n_sessions,)
        Trial count of the first 1, 2, ... sessions.
    """

    nsd_ids: np.ndarray
    test: np.ndarray
    session: np.ndarray
    run: np.ndarray
    session_stops: np.ndarray


def read_design(path: Path, number: int) -> Design:
    """Read ``nsd_expdesign.mat`` for subject ``number`` (1-based).

    Session and run sizes come from ``stimpattern`` (sessions x runs x slots, 1 = a stimulus
    trial) when its stimulus slots number the trials of ``masterordering``; otherwise they
    are the real 750 trials per session in 12 runs of 63/62.
    """
    import scipy.io

    d = _io.load_mat(path, ("masterordering", "subjectim", "sharedix"))
    with _io.reading(path, "MATLAB v5 .mat"):
        pattern = scipy.io.loadmat(str(path), variable_names=["stimpattern"]).get("stimpattern")
    order = d["masterordering"].ravel().astype(np.int64)
    subjectim = np.atleast_2d(d["subjectim"]).astype(np.int64)
    n_shared = int(d["sharedix"].size)
    if number > subjectim.shape[0]:
        raise ReaderError(f"{path}: expected a subjectim row for subject {number}; found "
                          f"{subjectim.shape[0]} rows")
    if order.min() < 1 or order.max() > subjectim.shape[1]:
        raise ReaderError(f"{path}: expected masterordering in 1..{subjectim.shape[1]}; found "
                          f"{order.min()}..{order.max()}")
    runs = (np.asarray(pattern) > 0).sum(axis=2).astype(np.int64) if (
        pattern is not None and np.ndim(pattern) == 3) else None  # (sessions, runs)
    if runs is None or runs.sum() != order.size:  # absent, or not one slot per trial
        n_sess = -(-order.size // TRIALS_PER_SESSION)
        runs = np.tile(np.array(RUN_SIZES, np.int64), (n_sess, 1))
    run_of = np.concatenate([np.repeat(np.arange(1, runs.shape[1] + 1), r) for r in runs])
    sess_of = np.repeat(np.arange(1, runs.shape[0] + 1), runs.sum(axis=1))
    n = min(order.size, run_of.size)
    stops = np.cumsum(runs.sum(axis=1))
    return Design(nsd_ids=subjectim[number - 1, order[:n] - 1] - 1, test=order[:n] <= n_shared,
                  session=sess_of[:n], run=run_of[:n], session_stops=stops[stops <= n])


def first_appearance(ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unique ids in order of first appearance and the (sorted) positions of each.

    Parameters
    ----------
    ids : int array (n,)

    Returns
    -------
    unique : int64 array (n_unique,)
    positions : list of int64 arrays, one per unique id, increasing
    """
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")  # sorted id -> row
    rows = rank[inverse]
    order = np.argsort(rows, kind="stable")
    cuts = np.flatnonzero(np.diff(rows[order])) + 1
    return uniq[np.argsort(first, kind="stable")], np.split(order.astype(np.int64), cuts)


@dataclass(frozen=True)
class SplitRows:
    """Rows of one split's files: the image of each row and the trials averaged into it.

    Attributes
    ----------
    nsd_ids : int64 array (n_rows,)
    trials : list of int64 arrays
        0-based trial indices (into the design) averaged into each row, increasing.
    """

    nsd_ids: np.ndarray
    trials: list[np.ndarray]


def design_rows(design: Design, n_sessions: int) -> dict[str, SplitRows]:
    """The train and test rows Brain-Diffuser makes from the first ``n_sessions`` sessions."""
    stop = int(design.session_stops[n_sessions - 1])
    out = {}
    for split, mask in (("train", ~design.test[:stop]), ("test", design.test[:stop])):
        where = np.flatnonzero(mask)
        uniq, pos = first_appearance(design.nsd_ids[where])
        out[split] = SplitRows(uniq, [where[p] for p in pos])
    return out


def find_sessions(design: Design, n_train: int, n_test: int, file: Path) -> int:
    """The smallest number of whole sessions whose unique train and test images number
    ``n_train`` and ``n_test`` (the row counts of the fMRI files).

    Raises
    ------
    ReaderError
        Naming ``file`` when no prefix of whole sessions fits.
    """
    seen_train: set[int] = set()
    seen_test: set[int] = set()
    start = 0
    for s, stop in enumerate(design.session_stops.tolist(), start=1):
        ids, test = design.nsd_ids[start:stop], design.test[start:stop]
        seen_train.update(ids[~test].tolist())
        seen_test.update(ids[test].tolist())
        start = stop
        if (len(seen_train), len(seen_test)) == (n_train, n_test):
            return s
        if len(seen_train) > n_train or len(seen_test) > n_test:
            break
    raise ReaderError(f"{file}: expected row counts of a prefix of whole sessions of the "
                      f"expdesign (train, test unique images); found {n_train} train and "
                      f"{n_test} test rows, which no prefix of the "
                      f"{design.session_stops.size} sessions gives")


def average_rows(betas: np.ndarray, trials: list[np.ndarray]) -> np.ndarray:
    """Brain-Diffuser's row values: float32 mean of each row's trials, stored float64.

    Parameters
    ----------
    betas : float32 array (n_trials, n_voxels)
    trials : list of int arrays, one per output row

    Returns
    -------
    rows : float64 array (len(trials), n_voxels)
    """
    out = np.empty((len(trials), betas.shape[1]), np.float64)
    for r, t in enumerate(trials):
        out[r] = betas[np.sort(t)].mean(0)
    return out


def caption_array(captions: list[list[str]] | np.ndarray) -> np.ndarray:
    """Captions as a fixed-width unicode (n, 5) array ('' = missing), loadable without
    pickle."""
    rows = [list(c)[:N_CAPTIONS] + [""] * (N_CAPTIONS - len(list(c)[:N_CAPTIONS]))
            for c in captions]
    width = max([len(s) for r in rows for s in r] + [1])
    return np.array(rows, dtype=f"<U{width}").reshape(len(rows), N_CAPTIONS)


def new_folder(target: Path) -> Path:
    """An empty scratch folder beside ``target`` (put in place with ``replace_path``)."""
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` one array (no pickled objects)."""
    if array.dtype == object:
        raise ValueError(f"{path}: expected a non-object array")
    np.save(path, array, allow_pickle=False)
