"""Closed-form ridge decoders: betas -> embeddings (``nf decode-ridge``), decoded -> true
embeddings (refinement). The solvers of :mod:`nfstore.augment.solvers` (himalaya's CV rule, work
in the eigenbasis of the design), with Dask tasks over chunks of targets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nfstore.augment import solvers

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(0, 6, 13))


@dataclass
class RidgeFit:
    """``predict(X) = X @ W + b``; per-target alphas, out-of-fold predictions of the fit rows.

    Attributes
    ----------
    W : (n_features, n_targets)     b : (n_targets,)     alpha : (n_targets,)
    oof : (n_samples, n_targets), predictions of each fit row by the fold that left it out
    target_norm : mean L2 norm of the fitted targets' rows
    """

    W: np.ndarray
    b: np.ndarray
    alpha: np.ndarray
    oof: np.ndarray
    target_norm: float = float("nan")

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, np.float32) @ self.W + self.b


def _chunk(X: np.ndarray, Y: np.ndarray, fb: solvers.FoldBases, full: solvers.Basis,
           alphas: np.ndarray, shared_alpha: bool) -> tuple[np.ndarray, ...]:
    proj = solvers.fold_projections(X, Y, fb)
    stats = solvers.cv_scores(Y, fb, proj, alphas)
    scores = stats.scores
    if shared_alpha:  # one alpha for every target: the mean score over targets
        scores = np.broadcast_to(scores.mean(2, keepdims=True), scores.shape)
    best, _ = solvers.select_alphas(scores, alphas)
    alpha = alphas[best]
    W, b = solvers.refit(X, Y, full, alpha)
    return W, b, alpha, solvers.oof_predictions(fb, proj, alpha, X.shape[0])


def fit_ridge(X: np.ndarray, Y: np.ndarray, alphas: tuple[float, ...] = DEFAULT_ALPHAS,
              cv: int = 5, target_chunk: int = 256, shared_alpha: bool = False,
              workers: int | None = None) -> RidgeFit:
    """Ridge with intercept from ``X`` to every column of ``Y``, alphas by K-fold CV.

    Parameters
    ----------
    X : array (n_samples, n_features)
    Y : array (n_samples, n_targets)
    alphas : candidate alphas; each target gets its own (``shared_alpha``: one for all)
    cv : contiguous folds (as scikit-learn's ``KFold``)
    target_chunk : targets per Dask task (the fold bases are shared by all tasks)
    """
    import dask

    X = np.asarray(X, np.float32)
    Y = np.asarray(Y, np.float32)
    grid = solvers.check_alphas(list(alphas))
    fb = solvers.fold_bases(X, solvers.kfold(X.shape[0], cv))
    full = solvers.basis(X)
    if shared_alpha:
        target_chunk = Y.shape[1]
    tasks = [dask.delayed(_chunk, pure=False)(X, Y[:, a:a + target_chunk], fb, full, grid,
                                              shared_alpha)
             for a in range(0, Y.shape[1], target_chunk)]
    parts = dask.compute(*tasks, scheduler="threads", num_workers=workers)
    W, b, alpha, oof = (np.concatenate([p[i] for p in parts], axis=1 if i in (0, 3) else 0)
                        for i in range(4))
    return RidgeFit(W, b, alpha, oof, float(np.linalg.norm(Y, axis=1).mean()))
