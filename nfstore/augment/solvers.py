"""Ridge regression from embeddings to voxels: pure solver functions (numpy).

Every voxel shares the design ``X`` (trials x features), so each fold needs one
eigendecomposition of the ``d x d`` Gram matrix, and voxels are independent columns: the
functions below work on one block of voxels, which :mod:`nfstore.augment.synthesis` maps over
voxel chunks with Dask.

Cross-validated alpha selection follows himalaya's ``RidgeCV`` (``solve_ridge_cv_svd``) exactly:
intercept by centering X and Y on each fold's training rows, score = negative mean squared error
on the validation rows, averaged over folds, ties broken towards larger alphas
(``+ 1e-10 * log(alpha)``), the best alpha per voxel. The work differs: himalaya multiplies an
(n_val x n_train) hat matrix per alpha into every voxel; here everything happens in the
eigenbasis of X, so the per-alpha cost is (n_val x d) @ (d x n_voxels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nfstore.errors import OptionError


@dataclass(frozen=True)
class Basis:
    """Eigenbasis of a centered design: ``Xc.T @ Xc = V @ diag(s2) @ V.T``.

    Attributes
    ----------
    mean : array of shape (n_features,)
        Column means removed from X (the intercept's counterpart).
    V : array of shape (n_features, n_features)
    s2 : array of shape (n_features,)
        Eigenvalues (squared singular values), clipped at 0.
    """

    mean: np.ndarray
    V: np.ndarray
    s2: np.ndarray


def basis(X: np.ndarray) -> Basis:
    """Eigenbasis of ``X`` (n_samples, n_features) centered on its column means."""
    mean = X.mean(0, dtype=np.float64).astype(X.dtype)
    Xc = X - mean
    s2, V = np.linalg.eigh(Xc.T @ Xc)
    return Basis(mean, V.astype(X.dtype), np.clip(s2, 0, None).astype(X.dtype))


def check_alphas(alphas: np.ndarray | list[float]) -> np.ndarray:
    a = np.asarray(alphas, dtype=np.float64).ravel()
    if a.size == 0 or not np.all(np.isfinite(a)) or (a <= 0).any():
        raise OptionError(f"--alphas: expected positive numbers; got {a.tolist()}")
    return a


def kfold(n_samples: int, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous K folds, as ``sklearn.model_selection.KFold(n_splits)`` (no shuffle)."""
    if not 2 <= n_splits <= n_samples:
        raise OptionError(f"--cv: expected 2 <= K <= {n_samples} trials; got {n_splits}")
    sizes = np.full(n_splits, n_samples // n_splits)
    sizes[: n_samples % n_splits] += 1
    edges = np.concatenate([[0], np.cumsum(sizes)])
    idx = np.arange(n_samples)
    return [(np.concatenate([idx[:a], idx[b:]]), idx[a:b]) for a, b in zip(edges[:-1], edges[1:])]


@dataclass(frozen=True)
class FoldBases:
    """Per-fold eigenbases and projected validation designs, shared by all voxel chunks."""

    folds: list[tuple[np.ndarray, np.ndarray]]
    bases: list[Basis]
    A: list[np.ndarray]  # (n_val, n_features): (X_val - mean_train) @ V


def fold_bases(X: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> FoldBases:
    bases = [basis(X[train]) for train, _ in folds]
    A = [(X[val] - b.mean) @ b.V for (_, val), b in zip(folds, bases)]
    return FoldBases(folds, bases, A)


def fold_projections(X: np.ndarray, Y: np.ndarray, fb: FoldBases
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per fold, ``C = V.T @ Xc_train.T @ Yc_train`` (n_features, n_voxels) and the training
    means of Y (n_voxels,): everything the fold's predictions need, for every alpha.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    Y : array of shape (n_samples, n_voxels)
    """
    XtY = X.T @ Y
    out = []
    for (train, val), b in zip(fb.folds, fb.bases):
        y_mean = Y[train].mean(0, dtype=np.float64).astype(Y.dtype)
        # centred cross-product of the training rows, without re-reading them
        Z = XtY - X[val].T @ Y[val] - train.size * np.outer(b.mean, y_mean).astype(Y.dtype)
        out.append((b.V.T @ Z, y_mean))
    return out


def cv_scores(Y: np.ndarray, fb: FoldBases, proj: list[tuple[np.ndarray, np.ndarray]],
              alphas: np.ndarray) -> np.ndarray:
    """Negative mean squared error of every alpha on every fold's validation rows.

    Parameters
    ----------
    Y : array of shape (n_samples, n_voxels)
    fb, proj : from :func:`fold_bases` and :func:`fold_projections`
    alphas : array of shape (n_alphas,)

    Returns
    -------
    scores : float64 array of shape (n_folds, n_alphas, n_voxels)
    """
    scores = np.empty((len(fb.folds), alphas.size, Y.shape[1]))
    for f, ((_, val), b, A, (C, y_mean)) in enumerate(zip(fb.folds, fb.bases, fb.A, proj)):
        g = 1.0 / (b.s2[None, :] + alphas[:, None].astype(Y.dtype))  # (n_alphas, n_features)
        stacked = (A[None, :, :] * g[:, None, :]).reshape(-1, A.shape[1])
        P = (stacked @ C).reshape(alphas.size, val.size, -1) + y_mean
        P -= Y[val][None]
        scores[f] = -np.einsum("avn,avn->an", P, P, dtype=np.float64) / val.size
    return scores


def oof_predictions(fb: FoldBases, proj: list[tuple[np.ndarray, np.ndarray]],
                    alpha: np.ndarray, n_samples: int) -> np.ndarray:
    """Out-of-fold predictions with one alpha per voxel.

    Returns
    -------
    predictions : array of shape (n_samples, n_voxels)
    """
    C0 = proj[0][0]
    out = np.empty((n_samples, C0.shape[1]), dtype=C0.dtype)
    alpha = np.asarray(alpha, dtype=C0.dtype)
    for (_, val), b, A, (C, y_mean) in zip(fb.folds, fb.bases, fb.A, proj):
        out[val] = A @ (C / (b.s2[:, None] + alpha[None, :])) + y_mean
    return out


def select_alphas(scores: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best alpha index per voxel (himalaya's rule) and the mean CV score at it.

    Parameters
    ----------
    scores : array of shape (n_folds, n_alphas, n_voxels)
    alphas : array of shape (n_alphas,)

    Returns
    -------
    best : int array of shape (n_voxels,), score : array of shape (n_voxels,)
    """
    mean = scores.mean(0) + (np.log(alphas) * 1e-10)[:, None]
    best = np.argmax(mean, 0)
    return best, scores.mean(0)[best, np.arange(scores.shape[2])]


def refit(X: np.ndarray, Y: np.ndarray, full: Basis, alpha: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Ridge weights and intercept on all rows with one alpha per voxel.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    Y : array of shape (n_samples, n_voxels)
    full : eigenbasis of X (:func:`basis`)
    alpha : array of shape (n_voxels,) (or a scalar)

    Returns
    -------
    W : array of shape (n_features, n_voxels)
    b : array of shape (n_voxels,)
        So that predictions are ``X @ W + b``.
    """
    y_mean = Y.mean(0, dtype=np.float64).astype(Y.dtype)
    Z = (X - full.mean).T @ (Y - y_mean)
    C = full.V.T @ Z
    alpha = np.broadcast_to(np.asarray(alpha, dtype=Y.dtype), (Y.shape[1],))
    C /= full.s2[:, None] + alpha[None, :]
    W = full.V @ C
    return W, y_mean - full.mean @ W
