"""The decoder layer: closed-form ridge solvers and retrieval metrics (numpy only).

Every linear map of the project is fitted here: the encoding models of ``nf augment``
(embeddings -> voxels, :mod:`nfstore.augment.synthesis`), ``nf decode-ridge`` and the
evaluation baseline (betas -> embeddings), the ridge start of training (``ridge_init``) and
the refinement (decoded -> true embeddings); and every retrieval figure (``nf evaluate``,
``nf metrics``) is scored here. Pure functions of arrays; nothing reads or writes a store.

Every target shares the design ``X`` (n_samples, n_features), so each fold needs one
eigendecomposition of the centered design, and targets are independent columns: the functions
work on one block of targets, which callers map over chunks.

Cross-validated alpha selection follows himalaya's ``RidgeCV`` (``solve_ridge_cv_svd``) exactly:
intercept by centering X and Y on each fold's training rows, score = negative mean squared error
on the validation rows, averaged over folds, ties broken towards larger alphas
(``+ 1e-10 * log(alpha)``), the best alpha per target. The work differs: himalaya multiplies an
(n_val x n_train) hat matrix per alpha into every target; here everything happens in the
eigenbasis of X, so the per-alpha cost is (n_val x d) @ (d x n_targets).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nfstore.errors import OptionError, StoreError

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(0, 6, 13))
"""Candidate alphas of the decoders (``nf decode-ridge``, refinement, baselines)."""


# --------------------------------------------------------------------------- solvers
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


# --------------------------------------------------------------------------- fitted decoders
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


# --------------------------------------------------------------------------- retrieval
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
