"""Normalization of betas: pure functions, statistics from training trials only, the
per-subject choice of method (``--normalization``, :func:`set_normalization`), and the check
every loaded block passes first (finite values of a sane magnitude, :func:`checked_betas`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from nfstore.errors import OptionError, ReaderError
from nfstore.names import subject_key

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
    equals one pass over all rows up to rounding. NaN values are left out: every voxel keeps its
    own count.

    Parameters
    ----------
    blocks : iterable of (x (n, V) float, groups (n,), fit (n,) bool), read once

    Returns
    -------
    stats : group -> (mean (V,) float64, scale (V,) float64; 0 where the std is zero or
        undefined)
    """
    acc: dict[object, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for x, groups, fit in blocks:
        for g in np.unique(groups[fit]):
            part = _moments(np.asarray(x[(groups == g) & fit], dtype=np.float64))
            acc[g] = _merge(acc[g], part) if g in acc else part
    out = {}
    for g, (n, mean, m2) in acc.items():
        var = np.divide(m2, n - ddof, out=np.zeros_like(m2), where=n > ddof)
        ok = var > 0
        out[g] = (mean, np.divide(1.0, np.sqrt(var), out=np.zeros_like(var), where=ok))
    return out


def _moments(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-voxel (count, mean, M2) of the non-NaN values of ``rows`` (n, V) float64."""
    ok = ~np.isnan(rows)
    if ok.all():
        mean = rows.mean(axis=0)
        return np.full(rows.shape[1], rows.shape[0], np.int64), mean, ((rows - mean) ** 2).sum(0)
    n = ok.sum(axis=0)
    mean = np.divide(np.where(ok, rows, 0.0).sum(0), n, out=np.zeros(rows.shape[1]),
                     where=n > 0)
    return n, mean, (np.where(ok, rows - mean, 0.0) ** 2).sum(0)


def _merge(a: tuple[np.ndarray, np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray,
           np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chan et al.'s pairwise update of per-voxel (count, mean, M2)."""
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    n = n_a + n_b
    frac = np.divide(n_b, n, out=np.zeros(n.shape), where=n > 0)
    delta = mean_b - mean_a
    return n, mean_a + delta * frac, m2_a + m2_b + delta ** 2 * n_a * frac


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


def default_normalization(dataset: str) -> str:
    """The ``normalization`` a dataset's reader declares (``Reader.normalization``): nsd and
    bold5000 ``session-train``, god ``run``."""
    from nfstore.readers import get_reader

    return get_reader(dataset).normalization

NONFINITE = ("error", "zero")
MAX_ABS = 1e6  # larger betas (in the reader's units, e.g. percent signal change) are refused


def set_nonfinite(raw: RawSubject, policy: str) -> None:
    """Record how non-finite betas of ``raw`` are treated (call after set_normalization).

    ``"error"`` (the default, not recorded) refuses them; ``"zero"`` leaves them out of the
    statistics and stores 0, and is recorded in ``raw.normalization`` (so in the fingerprint).
    """
    if policy not in NONFINITE:
        raise OptionError(f"nonfinite: expected one of {list(NONFINITE)}; found {policy!r}")
    if policy != "error":
        raw.normalization = {**raw.normalization, "nonfinite": policy}


def checked_betas(block: Block, x: np.ndarray, policy: str = "error"
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """The block's betas as float32 after checking their values.

    Parameters
    ----------
    block : Block
        Names the file and trials in messages.
    x : array of shape (n_trials, n_voxels)
    policy : {"error", "zero"}
        Non-finite values (NaN, or inf: also float64 values beyond float32's range) are a
        one-line :class:`ReaderError` naming the file and the count, or (``"zero"``) become NaN
        here, are left out of the statistics and are stored as 0.

    Returns
    -------
    x : float32 array of shape (n_trials, n_voxels)
    bad : bool array of the same shape marking the non-finite values, or None if there are none

    Finite values of magnitude above :data:`MAX_ABS` are refused whatever the policy.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.asarray(x, dtype=np.float32)
        peak = max(float(np.abs(x.max())), float(np.abs(x.min()))) if x.size else 0.0
    bad = None
    if not np.isfinite(peak):
        bad = ~np.isfinite(x)
        if policy != "zero":
            n_nan = int(np.isnan(x).sum())
            raise ReaderError(
                f"{block.files[0]}: expected finite betas; found {n_nan} NaN and "
                f"{int(bad.sum()) - n_nan} infinite (as float32) values in "
                f"{int(bad.any(axis=1).sum())} of {x.shape[0]} trials ({block.label}); pass "
                f"nonfinite='zero' to store them as 0")
        x = np.where(bad, np.float32(np.nan), x)
        peak = float(np.abs(x[~bad]).max(initial=0.0))
    if peak > MAX_ABS:
        raise ReaderError(f"{block.files[0]}: expected betas of magnitude at most {MAX_ABS:g} "
                          f"({block.label}); found {peak:.4g}")
    return x, bad


def set_normalization(raw: RawSubject, method: str | None, default: str | None = None
                      ) -> None:
    """Set the normalization groups, fit rows and description of ``raw`` for ``method``
    (``default``: the reader's own, which ``raw`` already describes; when None, that of the
    reader named ``raw.dataset``)."""
    default = default or default_normalization(raw.dataset)
    method = method or default
    if method not in NORMALIZATIONS:
        raise OptionError(f"normalization: expected one of {list(NORMALIZATIONS)}; found "
                          f"{method!r}")
    key = subject_key(raw.dataset, raw.subject)
    train = (raw.trials["split"] == "train").to_numpy()
    session = raw.trials["session"].to_numpy()
    # what the source did before us (a scale, values a source already z-scored) stays recorded
    base = {k: v for k, v in raw.normalization.items()
            if k in ("scale", "as_provided", "peer_scale")}
    if method == default:
        raw.normalization = {**raw.normalization, "option": method}
        return
    if method == "session-train":
        empty = sorted(int(s) for s in np.unique(session) if not train[session == s].any())
        if empty:
            raise OptionError(f"normalization: session-train needs train trials in every "
                              f"session; {key} sessions {empty} have none; use run or "
                              f"train-global")
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
    policy = raw.normalization.get("nonfinite", "error")
    parts = ((checked_betas(b, b.load(), policy)[0], raw.norm_group[b.start:b.stop],
              fit[b.start:b.stop]) for b in raw.blocks)  # one block in memory at a time
    return group_stats(parts, int(raw.normalization.get("ddof", 0)))


def normalized_block(raw: RawSubject, block: Block, x: np.ndarray, stats: Any,
                     fit: np.ndarray, none: bool) -> tuple[np.ndarray, int, int]:
    """The block's normalized betas, its count of zero-std (group, voxel) pairs and its count
    of non-finite values stored as 0 (``raw.normalization["nonfinite"] == "zero"``)."""
    want = (block.stop - block.start, raw.n_voxels)
    if x.shape != want:
        raise ReaderError(f"{block.files[0]}: expected betas of shape {want}; found {x.shape}")
    x, bad = checked_betas(block, x, raw.normalization.get("nonfinite", "error"))
    rows = slice(block.start, block.stop)
    ddof = int(raw.normalization.get("ddof", 0))
    if none:
        z, n_zero = x, 0
    elif stats is not None:
        z, n_zero = apply_stats(x, raw.norm_group[rows], stats)
    elif bad is None:
        z, n_zero = zscore_groups(x, raw.norm_group[rows], fit[rows], ddof=ddof)
    else:  # statistics of the finite values only
        groups = raw.norm_group[rows]
        z, n_zero = apply_stats(x, groups, group_stats([(x, groups, fit[rows])], ddof))
    if bad is None:
        return z, n_zero, 0
    z[bad] = 0.0
    return z, n_zero, int(bad.sum())
