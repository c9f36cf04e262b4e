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

The layer is three small modules: :mod:`~nfstore.decoding.solvers` (bases, CV scores, alpha
selection, refit), :mod:`~nfstore.decoding.fitted` (``fit_ridge``, ``fit_ridge_loo``) and
:mod:`~nfstore.decoding.retrieval`; every public name is importable from here.
"""

from __future__ import annotations

from nfstore.decoding.fitted import RidgeFit, fit_ridge, fit_ridge_loo
from nfstore.decoding.retrieval import RETRIEVAL, brain_retrieval, retrieval, two_way
from nfstore.decoding.solvers import (
    DEFAULT_ALPHAS,
    Basis,
    CVStats,
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

__all__ = ["DEFAULT_ALPHAS", "Basis", "CVStats", "FoldBases", "RETRIEVAL", "RidgeFit", "basis",
           "brain_retrieval", "check_alphas", "cv_scores", "fit_ridge", "fit_ridge_loo",
           "fold_bases", "fold_projections", "kfold", "oof_predictions", "refit", "retrieval",
           "select_alphas", "two_way"]
