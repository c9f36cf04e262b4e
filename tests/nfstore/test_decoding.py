"""The decoder layer (nfstore.decoding): LOO ridge vs scikit-learn, errors, no torch import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import nfstore
from nfstore import decoding as D


@pytest.mark.parametrize("n, d", [(80, 30), (40, 120)])
def test_fit_ridge_loo_matches_scikit_learn_ridgecv(n: int, d: int) -> None:
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(5)
    X = rng.standard_normal((n, d)).astype(np.float32)
    Y = (X @ rng.standard_normal((d, 12)) * 0.3 + rng.standard_normal((n, 12))).astype(np.float32)
    fit = D.fit_ridge_loo(X, Y)
    ref = RidgeCV(alphas=np.asarray(D.DEFAULT_ALPHAS)).fit(X, Y)
    assert fit.alpha[0] == pytest.approx(ref.alpha_) and (fit.alpha == fit.alpha[0]).all()
    np.testing.assert_allclose(fit.W, ref.coef_.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fit.b, ref.intercept_, rtol=1e-4, atol=1e-5)
    assert fit.oof.shape == (0, 12)


def test_fit_ridge_shared_alpha_and_threads_agree() -> None:
    rng = np.random.default_rng(2)
    X = rng.standard_normal((60, 10))
    Y = X @ rng.standard_normal((10, 9)) + rng.standard_normal((60, 9))
    one = D.fit_ridge(X, Y, target_chunk=2, workers=1)
    many = D.fit_ridge(X, Y, target_chunk=2, workers=4)
    np.testing.assert_array_equal(one.W, many.W)
    shared = D.fit_ridge(X, Y, shared_alpha=True)
    assert len(set(shared.alpha.tolist())) == 1


def test_errors_name_the_parameter() -> None:
    with pytest.raises(nfstore.OptionError, match=r"^alphas: expected positive numbers; found"):
        D.check_alphas([1.0, 0.0])
    with pytest.raises(nfstore.OptionError, match=r"^cv: expected 2 <= K <= 4 rows; found 5$"):
        D.kfold(4, 5)
    t = np.eye(4)
    with pytest.raises(nfstore.StoreError, match=r"^pred: 1 of 4 predictions are non-finite"):
        D.retrieval(np.where(np.arange(4)[:, None] == 1, np.nan, t), t)


def test_retrieval_ranks_ties_against_the_right_candidate() -> None:
    t = np.eye(6) + 0.01
    assert D.retrieval(t, t)["top1_brain_to_image"] == 1.0
    same = np.ones((6, 3))
    assert D.retrieval(same, same)["top1_brain_to_image"] == 0.0


def test_importable_without_torch() -> None:
    code = ("import sys, nfstore.decoding; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
