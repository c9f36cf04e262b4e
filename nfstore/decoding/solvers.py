"""Closed-form ridge solvers in the eigenbasis of the design, with himalaya's CV rule (see
:mod:`nfstore.decoding`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nfstore.errors import OptionError

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(0, 6, 13))
"""Candidate alphas of the decoders (``nf decode-ridge``, refinement, baselines)."""


@dataclass(frozen=True)
class Basis:
    """Eigenbasis of a centered design: ``Xc.T @ Xc = V @ diag(s2) @ V.T``.

    Attributes
    ----------
    mean : array of shape (n_features,)
        Column means removed from X (the intercept's counterpart).
    V : array of shape (n_features, k)
        ``k = n_features``, or the rank for fewer samples than features (thin basis)
    s2 : array of shape (k,)
        Eigenvalues (squared singular values), clipped at 0.
    """

    mean: np.ndarray
    V: np.ndarray
    s2: np.ndarray


def basis(X: np.ndarray) -> Basis:
    """Eigenbasis of ``X`` (n_samples, n_features) centered on its column means.

    With fewer samples than features (decoding: voxels -> targets) the thin basis comes from
    the (n_samples, n_samples) Gram matrix instead, ``V = Xc.T @ U / s`` over its non-zero
    eigenvalues: the ridge solution lies in the row space of ``Xc``, so the result is the
    same at O(n^2 d) instead of O(d^3) work and (d, n) instead of (d, d) memory.
    """
    mean = X.mean(0, dtype=np.float64).astype(X.dtype)
    Xc = X - mean
    if X.shape[0] < X.shape[1]:
        s2, U = np.linalg.eigh((Xc @ Xc.T).astype(np.float64))
        keep = s2 > max(s2.max(), 0) * 1e-7
        V = Xc.T @ (U[:, keep] / np.sqrt(s2[keep])).astype(X.dtype)
        return Basis(mean, V, s2[keep].astype(X.dtype))
    s2, V = np.linalg.eigh(Xc.T @ Xc)
    return Basis(mean, V.astype(X.dtype), np.clip(s2, 0, None).astype(X.dtype))


def check_alphas(alphas: np.ndarray | list[float] | tuple[float, ...]) -> np.ndarray:
    """The candidate alphas as a float64 array (n_alphas,); each must be finite and > 0."""
    a = np.asarray(alphas, dtype=np.float64).ravel()
    if a.size == 0 or not np.all(np.isfinite(a)) or (a <= 0).any():
        raise OptionError(f"alphas: expected positive numbers; found {a.tolist()}")
    return a


def kfold(n_samples: int, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous K folds, as ``sklearn.model_selection.KFold(n_splits)`` (no shuffle)."""
    if not 2 <= n_splits <= n_samples:
        raise OptionError(f"cv: expected 2 <= K <= {n_samples} rows; found {n_splits}")
    sizes = np.full(n_splits, n_samples // n_splits)
    sizes[: n_samples % n_splits] += 1
    edges = np.concatenate([[0], np.cumsum(sizes)])
    idx = np.arange(n_samples)
    return [(np.concatenate([idx[:a], idx[b:]]), idx[a:b]) for a, b in zip(edges[:-1], edges[1:])]


@dataclass(frozen=True)
class FoldBases:
    """Per-fold eigenbases and projected validation designs, shared by all target chunks.

    Attributes
    ----------
    A : list of arrays (n_val, n_features)
        ``(X_val - mean_train) @ V``: the validation rows in the fold's eigenbasis.
    G : list of arrays (n_features, n_features)
        ``A.T @ A``.
    a : list of arrays (n_features,)
        Column sums of ``A``.
    """

    folds: list[tuple[np.ndarray, np.ndarray]]
    bases: list[Basis]
    A: list[np.ndarray]
    G: list[np.ndarray]
    a: list[np.ndarray]


def fold_bases(X: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> FoldBases:
    """The eigenbasis of each fold's training rows of ``X`` (n_samples, n_features)."""
    bases = [basis(X[train]) for train, _ in folds]
    A = [(X[val] - b.mean) @ b.V for (_, val), b in zip(folds, bases)]
    return FoldBases(folds, bases, A, [x.T @ x for x in A], [x.sum(0) for x in A])


def fold_projections(X: np.ndarray, Y: np.ndarray, fb: FoldBases,
                     XtY: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per fold, ``C = V.T @ Xc_train.T @ Yc_train`` (n_features, n_targets) and the training
    means of Y (n_targets,): everything the fold's predictions need, for every alpha.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    Y : array of shape (n_samples, n_targets)
    XtY : array of shape (n_features, n_targets), optional
        ``X.T @ Y`` if already computed.
    """
    XtY = X.T @ Y if XtY is None else XtY
    out = []
    for (train, val), b in zip(fb.folds, fb.bases):
        y_mean = Y[train].mean(0, dtype=np.float64).astype(Y.dtype)
        # centred cross-product of the training rows, without re-reading them
        Z = XtY - X[val].T @ Y[val] - train.size * np.outer(b.mean, y_mean).astype(Y.dtype)
        out.append((b.V.T @ Z, y_mean))
    return out


@dataclass
class CVStats:
    """Per fold and alpha, sums over the fold's validation rows (float64, shape
    (n_folds, n_alphas, n_targets)): squared error, predictions, predictions x targets and
    squared predictions -- enough for scores, residual moments and CV correlations."""

    sse: np.ndarray
    sum_p: np.ndarray
    sum_py: np.ndarray
    sum_pp: np.ndarray
    n_val: np.ndarray  # (n_folds,)

    @property
    def scores(self) -> np.ndarray:
        """Negative mean squared error, (n_folds, n_alphas, n_targets)."""
        return -self.sse / self.n_val[:, None, None]

    def at(self, best: np.ndarray) -> dict[str, np.ndarray]:
        """Sums over all rows (all folds) at each target's chosen alpha index, (n_targets,)."""
        cols = np.arange(best.size)
        return {k: getattr(self, k)[:, best, cols].sum(0)
                for k in ("sse", "sum_p", "sum_py", "sum_pp")}


def cv_scores(Y: np.ndarray, fb: FoldBases, proj: list[tuple[np.ndarray, np.ndarray]],
              alphas: np.ndarray) -> CVStats:
    """Validation statistics of every alpha on every fold, without forming predictions.

    With ``Yt = Y_val - mean_train``, ``g = 1 / (s2 + alpha)`` and ``P = A diag(g) C`` the
    centred predictions, ``|Yt - P|^2 = |Yt|^2 - 2 sum_j g_j D_j C_j + sum_j g_j C_j (G g C)_j``
    with ``D = A.T @ Yt``: per alpha a (d x d) @ (d x n_targets) product instead of
    (n_val x d) @ (d x n_targets).

    Parameters
    ----------
    Y : array of shape (n_samples, n_targets)
    fb, proj : from :func:`fold_bases` and :func:`fold_projections`
    alphas : array of shape (n_alphas,)
    """
    shape = (len(fb.folds), alphas.size, Y.shape[1])
    out = CVStats(*(np.empty(shape) for _ in range(4)),
                  n_val=np.array([val.size for _, val in fb.folds], dtype=np.float64))
    for f, ((_, val), b, A, G, a, (C, mu)) in enumerate(zip(fb.folds, fb.bases, fb.A, fb.G,
                                                           fb.a, proj)):
        Yt = Y[val] - mu
        D = A.T @ Yt  # (n_features, n_targets)
        yy = np.einsum("nv,nv->v", Yt, Yt, dtype=np.float64)
        sum_yt = Yt.sum(0, dtype=np.float64)
        mu64 = mu.astype(np.float64)
        for k, alpha in enumerate(alphas):
            gC = C / (b.s2[:, None] + np.asarray(alpha, dtype=C.dtype))
            cross = np.einsum("jv,jv->v", gC, D, dtype=np.float64)  # sum P * Yt
            quad = np.einsum("jv,jv->v", gC, G @ gC, dtype=np.float64)  # sum P^2
            sp = a.astype(np.float64) @ gC.astype(np.float64)  # sum P
            out.sse[f, k] = yy - 2 * cross + quad
            # back to uncentred predictions p = P + mu and targets y = Yt + mu
            out.sum_p[f, k] = sp + val.size * mu64
            out.sum_py[f, k] = cross + mu64 * sp + mu64 * sum_yt + val.size * mu64 ** 2
            out.sum_pp[f, k] = quad + 2 * mu64 * sp + val.size * mu64 ** 2
    return out


def oof_predictions(fb: FoldBases, proj: list[tuple[np.ndarray, np.ndarray]],
                    alpha: np.ndarray, n_samples: int) -> np.ndarray:
    """Out-of-fold predictions with one alpha per target.

    Returns
    -------
    predictions : array of shape (n_samples, n_targets)
    """
    C0 = proj[0][0]
    out = np.empty((n_samples, C0.shape[1]), dtype=C0.dtype)
    alpha = np.asarray(alpha, dtype=C0.dtype)
    for (_, val), b, A, (C, y_mean) in zip(fb.folds, fb.bases, fb.A, proj):
        out[val] = A @ (C / (b.s2[:, None] + alpha[None, :])) + y_mean
    return out


def select_alphas(scores: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best alpha index per target (himalaya's rule) and the mean CV score at it.

    Parameters
    ----------
    scores : array of shape (n_folds, n_alphas, n_targets)
    alphas : array of shape (n_alphas,)

    Returns
    -------
    best : int array of shape (n_targets,), score : array of shape (n_targets,)
    """
    mean = scores.mean(0) + (np.log(alphas) * 1e-10)[:, None]
    best = np.argmax(mean, 0)
    return best, scores.mean(0)[best, np.arange(scores.shape[2])]


def refit(X: np.ndarray, Y: np.ndarray, full: Basis, alpha: np.ndarray,
          XtY: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ridge weights and intercept on all rows with one alpha per target.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    Y : array of shape (n_samples, n_targets)
    full : eigenbasis of X (:func:`basis`)
    alpha : array of shape (n_targets,) (or a scalar)
    XtY : array of shape (n_features, n_targets), optional
        ``X.T @ Y`` if already computed.

    Returns
    -------
    W : array of shape (n_features, n_targets)
    b : array of shape (n_targets,)
        So that predictions are ``X @ W + b``.
    """
    y_mean = Y.mean(0, dtype=np.float64).astype(Y.dtype)
    if XtY is None:
        Z = (X - full.mean).T @ (Y - y_mean)
    else:  # centred cross-product from the uncentred one
        Z = XtY - X.shape[0] * np.outer(full.mean, y_mean).astype(Y.dtype)
    C = full.V.T @ Z
    alpha = np.broadcast_to(np.asarray(alpha, dtype=Y.dtype), (Y.shape[1],))
    C /= full.s2[:, None] + alpha[None, :]
    W = full.V @ C
    return W, y_mean - full.mean @ W


