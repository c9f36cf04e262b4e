"""Retrieval metrics of decoded embeddings: top-k both ways, MindEye2's 300-image subsets and
2-way identification."""

from __future__ import annotations

import numpy as np

from nfstore.errors import OptionError, StoreError

RETRIEVAL = ("top1_brain_to_image", "top5_brain_to_image", "top1_image_to_brain",
             "top5_image_to_brain", "cosine")


def retrieval(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Retrieval metrics for matched rows: brain -> image (is the right image among the k
    embeddings most similar to a decoded vector), image -> brain, and the mean cosine.

    Parameters
    ----------
    pred, target : arrays of shape (n, D); row i of each belongs to stimulus i

    A wrong candidate that ties with the right one counts against it (rank = number of other
    candidates scoring at least as high). Non-finite or all-zero rows are an error.

    Returns
    -------
    ``{name: value}`` for :data:`RETRIEVAL` and ``n_candidates``.
    """
    for param, name, a in (("pred", "predictions", pred), ("target", "targets", target)):
        bad = ~np.isfinite(a).all(axis=1) | ~(np.abs(a).sum(axis=1) > 0)
        if bad.any():
            raise StoreError(f"{param}: {int(bad.sum())} of {len(a)} {name} are non-finite or "
                             f"zero (rows {np.flatnonzero(bad)[:5].tolist()}); no score computed")
    p = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    t = target / np.linalg.norm(target, axis=1, keepdims=True)
    sim = p @ t.T
    diag = np.diag(sim)
    others = ~np.eye(len(diag), dtype=bool)
    rank_b2i = ((sim >= diag[:, None]) & others).sum(1)  # other images at least as close
    rank_i2b = ((sim >= diag[None, :]) & others).sum(0)
    return {"top1_brain_to_image": float((rank_b2i < 1).mean()),
            "top5_brain_to_image": float((rank_b2i < 5).mean()),
            "top1_image_to_brain": float((rank_i2b < 1).mean()),
            "top5_image_to_brain": float((rank_i2b < 5).mean()),
            "cosine": float(diag.mean()), "n_candidates": int(len(diag))}


def brain_retrieval(pred: np.ndarray, target: np.ndarray, seed: int = 0, subset: int = 300,
                    n_subsets: int = 30) -> dict[str, object]:
    """:func:`retrieval` of decoded vs. true embeddings (n, D), plus MindEye2's protocol
    (``n_subsets`` random subsets of ``subset`` rows, top-1, seeded) when there are at least
    ``subset`` rows (``out["mindeye2_300"]``)."""
    out: dict[str, object] = dict(retrieval(pred, target))
    if len(pred) >= subset:
        rng = np.random.default_rng(seed)
        tops = []
        for _ in range(n_subsets):
            idx = rng.choice(len(pred), subset, replace=False)
            r = retrieval(pred[idx], target[idx])
            tops.append((r["top1_brain_to_image"], r["top1_image_to_brain"]))
        t = np.array(tops)
        out["mindeye2_300"] = {"top1_brain_to_image": float(t[:, 0].mean()),
                               "top1_image_to_brain": float(t[:, 1].mean()),
                               "subsets": n_subsets}
    return out


def two_way(gt: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Per-image 2-way identification, as brain-diffuser and MindEye compute it:
    ``r = corrcoef(gt, rec)[:N, N:]``; image j scores ``sum_i [r[i, j] < r[j, j]] / (N - 1)``.

    Parameters
    ----------
    gt, rec : arrays (N, ...) of features; flattened per image

    Returns
    -------
    score : array (N,) in [0, 1]; the metric is its mean (chance 0.5)
    """
    n = gt.shape[0]
    if n < 2:
        raise OptionError(f"gt: expected at least 2 images for 2-way identification; found {n}")
    r = np.corrcoef(gt.reshape(n, -1), rec.reshape(n, -1))[:n, n:]
    return (r < np.diag(r)[None, :]).sum(0) / (n - 1)

