"""Normalization of betas: pure functions, statistics from training trials only."""

from __future__ import annotations

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
