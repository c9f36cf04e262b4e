"""Fitted ridge decoders: per-target alphas by K-fold CV, or one alpha by exact leave-one-out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nfstore.decoding.solvers import (
    DEFAULT_ALPHAS,
    Basis,
    FoldBases,
    basis,
    check_alphas,
    cv_scores,
    fold_bases,
    fold_projections,
    kfold,
    oof_predictions,
    refit,
    select_alphas,
)


@dataclass
class RidgeFit:
    """``predict(X) = X @ W + b``; per-target alphas, out-of-fold predictions of the fit rows.

    Attributes
    ----------
    W : (n_features, n_targets)     b : (n_targets,)     alpha : (n_targets,)
    oof : (n_samples, n_targets), predictions of each fit row by the fold that left it out
        ((0, n_targets) for :func:`fit_ridge_loo`)
    target_norm : mean L2 norm of the fitted targets' rows
    """

    W: np.ndarray
    b: np.ndarray
    alpha: np.ndarray
    oof: np.ndarray
    target_norm: float = float("nan")

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions (n_rows, n_targets) of ``X`` (n_rows, n_features), float32."""
        return np.asarray(X, np.float32) @ self.W + self.b


def _fit_chunk(X: np.ndarray, Y: np.ndarray, fb: FoldBases, full: Basis, alphas: np.ndarray,
               shared_alpha: bool) -> tuple[np.ndarray, ...]:
    proj = fold_projections(X, Y, fb)
    scores = cv_scores(Y, fb, proj, alphas).scores
    if shared_alpha:  # one alpha for every target: the mean score over targets
        scores = np.broadcast_to(scores.mean(2, keepdims=True), scores.shape)
    best, _ = select_alphas(scores, alphas)
    alpha = alphas[best]
    W, b = refit(X, Y, full, alpha)
    return W, b, alpha, oof_predictions(fb, proj, alpha, X.shape[0])


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
    target_chunk : targets per thread task (the fold bases are shared by all tasks)
    workers : threads (default: the standard library's pool size)
    """
    from concurrent.futures import ThreadPoolExecutor

    X = np.asarray(X, np.float32)
    Y = np.asarray(Y, np.float32)
    grid = check_alphas(alphas)
    fb = fold_bases(X, kfold(X.shape[0], cv))
    full = basis(X)
    step = Y.shape[1] if shared_alpha else max(int(target_chunk), 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(lambda a: _fit_chunk(X, Y[:, a:a + step], fb, full, grid,
                                                   shared_alpha), range(0, Y.shape[1], step)))
    W, b, alpha, oof = (np.concatenate([p[i] for p in parts], axis=1 if i in (0, 3) else 0)
                        for i in range(4))
    return RidgeFit(W, b, alpha, oof, float(np.linalg.norm(Y, axis=1).mean()))


def fit_ridge_loo(X: np.ndarray, Y: np.ndarray,
                  alphas: tuple[float, ...] = DEFAULT_ALPHAS) -> RidgeFit:
    """Ridge with intercept and ONE alpha for all targets, chosen by exact leave-one-out CV
    (scikit-learn's ``RidgeCV()`` default: the mean squared LOO error over all rows and
    targets, the first best alpha on ties), in float64.

    With ``A = Xc @ V`` (n_samples, k) in the eigenbasis of the centered design, the hat
    matrix is ``1/n + A diag(1 / (s2 + alpha)) A.T`` and the LOO residual of row i is the fit's
    residual divided by ``1 - H_ii``.

    Parameters
    ----------
    X : array (n_samples, n_features)
    Y : array (n_samples, n_targets)

    Returns
    -------
    RidgeFit with float32 ``W``, ``b``; ``alpha`` (n_targets,) repeats the chosen alpha.
    """
    grid = check_alphas(alphas)
    X64 = np.asarray(X, np.float64)
    Y64 = np.asarray(Y, np.float64)
    n = X64.shape[0]
    full = basis(X64)
    A = (X64 - full.mean) @ full.V  # (n, k)
    y_mean = Y64.mean(0)
    C = A.T @ (Y64 - y_mean)  # (k, n_targets)
    best, best_score = 0, -np.inf
    for k, alpha in enumerate(grid):
        g = 1 / (full.s2 + alpha)
        resid = Y64 - y_mean - A @ (g[:, None] * C)
        h = 1 / n + np.einsum("nk,k,nk->n", A, g, A)
        score = -np.mean((resid / (1 - h)[:, None]) ** 2)
        if score > best_score:
            best, best_score = k, score
    W, b = refit(X64, Y64, full, grid[best])
    return RidgeFit(W.astype(np.float32), b.astype(np.float32), np.full(W.shape[1], grid[best]),
                    np.empty((0, W.shape[1]), np.float32),
                    float(np.linalg.norm(Y64, axis=1).mean()))


