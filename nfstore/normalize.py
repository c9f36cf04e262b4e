"""Normalization of betas: pure functions, statistics from training trials only."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


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
