"""Normalization of betas: pure functions, statistics from training trials only, and the
per-subject choice of method (``--normalization``, :func:`set_normalization`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from nfstore._names import subject_key
from nfstore.errors import OptionError, ReaderError

if TYPE_CHECKING:
    from nfstore.readers.base import Block, RawSubject


def zscore_groups(x: np.ndarray, groups: np.ndarray, fit: np.ndarray, ddof: int = 0
                  ) -> tuple[np.ndarray, int]:
    """Z-score every voxel within each group, with mean and std of the group's ``fit`` rows.

    Parameters
    ----------
    x : float array of shape (n_trials, n_voxels)
    groups : array of shape (n_trials,)
        Group label of each trial (NSD: session; GOD: run).
    fit : bool array of shape (n_trials,)
        Trials whose statistics are used (the training trials); the other trials of the group
        are transformed with the same statistics.
    ddof : int
        Delta degrees of freedom of the std (0: population std).

    Returns
    -------
    z : float32 array of shape (n_trials, n_voxels)
        Voxels whose std is zero (or a group without ``fit`` rows) become 0.
    n_zero : int
        Number of (group, voxel) pairs whose std was zero or undefined.
    """
    x = np.asarray(x, dtype=np.float32)
    z = np.zeros_like(x)
    n_zero = 0
    for g in np.unique(groups):
        rows = groups == g
        whole = bool(rows.all())
        xg = x if whole else x[rows]
        ref = xg if fit[rows].all() else xg[fit[rows]]
        if ref.shape[0] <= ddof:
            n_zero += x.shape[1]
            continue
        # float64 statistics; the output is centred and scaled in place, in float32
        mean = ref.mean(axis=0, dtype=np.float64)
        out = xg - mean.astype(np.float32)
        cref = out if ref is xg else out[fit[rows]]
        # float32 sums of squares of centred values: relative error ~1e-7 * n_rows, no upcast
        var = np.einsum("ij,ij->j", cref, cref).astype(np.float64) / (ref.shape[0] - ddof)
        ok = var > 0
        n_zero += int((~ok).sum())
        scale = np.divide(1.0, np.sqrt(var), out=np.zeros_like(var), where=ok)
        out *= scale.astype(np.float32)
        if whole:
            z = out
        else:
            z[rows] = out
    return z, n_zero


NORMALIZATIONS = ("session-train", "run", "train-global", "none")


def group_stats(blocks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], ddof: int = 0
                ) -> dict[object, tuple[np.ndarray, np.ndarray]]:
    """Per-group mean and 1/std of the ``fit`` rows, accumulated over blocks.

    For normalization groups that span several blocks (e.g. a whole subject). Blocks are
    combined with Chan et al.'s pairwise update of (count, mean, M2) in float64, so the result
    equals one pass over all rows up to rounding.

    Parameters
    ----------
    blocks : iterable of (x (n, V) float, groups (n,), fit (n,) bool), read once

    Returns
    -------
    stats : group -> (mean (V,) float64, scale (V,) float64; 0 where the std is zero)
    """
    acc: dict[object, tuple[int, np.ndarray, np.ndarray]] = {}
    for x, groups, fit in blocks:
        for g in np.unique(groups[fit]):
            rows = np.asarray(x[(groups == g) & fit], dtype=np.float64)
            n_b, mean_b = rows.shape[0], rows.mean(axis=0)
            m2_b = ((rows - mean_b) ** 2).sum(axis=0)
            if g in acc:
                n_a, mean_a, m2_a = acc[g]
                n = n_a + n_b
                delta = mean_b - mean_a
                acc[g] = (n, mean_a + delta * n_b / n, m2_a + m2_b + delta ** 2 * n_a * n_b / n)
            else:
                acc[g] = (n_b, mean_b, m2_b)
    out = {}
    for g, (n, mean, m2) in acc.items():
        var = m2 / max(n - ddof, 1) if n > ddof else np.zeros_like(m2)
        ok = var > 0
        out[g] = (mean, np.divide(1.0, np.sqrt(var), out=np.zeros_like(var), where=ok))
    return out


def apply_stats(x: np.ndarray, groups: np.ndarray,
                stats: dict[object, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, int]:
    """Z-score rows of ``x`` (n, V) with their group's precomputed statistics.

    Returns
    -------
    z : float32 array (n, V); rows of a group without statistics become 0
    n_zero : int, (group, voxel) pairs with zero or undefined std
    """
    z = np.zeros(np.shape(x), np.float32)
    n_zero = 0
    for g in np.unique(groups):
        rows = groups == g
        if g not in stats:
            n_zero += z.shape[1]
            continue
        mean, scale = stats[g]
        z[rows] = (np.asarray(x[rows], np.float32) - mean.astype(np.float32)) * scale.astype(
            np.float32)
        n_zero += int((scale == 0).sum())
    return z, n_zero


DEFAULT_NORMALIZATION = {"nsd": "session-train", "bold5000": "session-train", "god": "run"}


def set_normalization(raw: RawSubject, method: str | None) -> None:
    """Set the normalization groups, fit rows and description of ``raw`` for ``method``."""
    default = DEFAULT_NORMALIZATION[raw.dataset]
    method = method or default
    if method not in NORMALIZATIONS:
        raise OptionError(f"--normalization: expected one of {list(NORMALIZATIONS)}; got "
                          f"{method!r}")
    key = subject_key(raw.dataset, raw.subject)
    train = (raw.trials["split"] == "train").to_numpy()
    session = raw.trials["session"].to_numpy()
    base = {k: v for k, v in raw.normalization.items() if k == "scale"}
    if method == default:
        raw.normalization = {**raw.normalization, "option": method}
        return
    if method == "session-train":
        empty = sorted(int(s) for s in np.unique(session) if not train[session == s].any())
        if empty:
            raise OptionError(f"--normalization session-train: {key} sessions {empty} have no "
                              f"train trials to take statistics from; use run or train-global")
        raw.norm_group, raw.norm_fit = session, train
        desc = {"method": "zscore", "group": "session", "statistics_from": "train"}
    elif method == "run":
        raw.norm_group = session * 100000 + raw.trials["run"].to_numpy()
        raw.norm_fit = np.ones(raw.n_trials, bool)
        desc = {"method": "zscore", "group": "run (session, run)", "statistics_from": "run",
                "note": "each run z-scored by its own trials' statistics, test runs included"}
    elif method == "train-global":
        raw.norm_group, raw.norm_fit = np.zeros(raw.n_trials, np.int64), train
        desc = {"method": "zscore", "group": "subject", "statistics_from": "train"}
    else:
        raw.norm_group, raw.norm_fit = np.zeros(raw.n_trials, np.int64), train
        desc = {"method": "none", "group": "none", "statistics_from": "none"}
    raw.normalization = {**base, **desc, "ddof": 0, "option": method}


def spanning_stats(raw: RawSubject, fit: np.ndarray) -> dict[object, Any] | None:
    """Statistics of normalization groups that span several blocks (one extra read pass),
    or None when every group lies inside one block."""
    blocks_of: dict[object, set[int]] = {}
    for n, b in enumerate(raw.blocks):
        for g in np.unique(raw.norm_group[b.start:b.stop]).tolist():
            blocks_of.setdefault(g, set()).add(n)
    if all(len(v) == 1 for v in blocks_of.values()):
        return None
    parts = ((b.load(), raw.norm_group[b.start:b.stop], fit[b.start:b.stop])
             for b in raw.blocks)  # one block in memory at a time
    return group_stats(parts, int(raw.normalization.get("ddof", 0)))


def normalized_block(raw: RawSubject, block: Block, x: np.ndarray, stats: Any,
                     fit: np.ndarray, none: bool) -> tuple[np.ndarray, int]:
    """The block's z-scored betas and its count of zero-std (group, voxel) pairs."""
    want = (block.stop - block.start, raw.n_voxels)
    if x.shape != want:
        raise ReaderError(f"{block.files[0]}: expected betas of shape {want}; found {x.shape}")
    rows = slice(block.start, block.stop)
    if none:
        return np.asarray(x, np.float32), 0
    if stats is not None:
        return apply_stats(x, raw.norm_group[rows], stats)
    return zscore_groups(x, raw.norm_group[rows], fit[rows],
                         ddof=int(raw.normalization.get("ddof", 0)))
