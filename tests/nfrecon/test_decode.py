"""Decoding: the ridge solver against scikit-learn, decoded sets, refinement never sees test."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold, cross_val_predict

import nfstore
from nfrecon.decode import decode_ridge, fit_refinement, predict, refine
from nfstore.decoding import fit_ridge


@pytest.mark.parametrize("n_features", [40, 300])  # 300 > 120 samples: the thin basis
def test_fit_ridge_matches_scikit_learn(n_features: int) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, n_features))
    Y = X[:, :40] @ rng.standard_normal((40, 9)) + 3 * rng.standard_normal((120, 9))
    grid = (1.0, 10.0, 100.0, 1000.0)
    fit = fit_ridge(X, Y, alphas=grid, cv=5, target_chunk=4)  # 3 thread tasks
    assert len(set(fit.alpha.tolist())) > 1  # per-target alphas
    for j in range(9):
        cv_mse = [np.mean([((Ridge(alpha=a).fit(X[tr], Y[tr, j]).predict(X[va]) - Y[va, j]) ** 2
                            ).mean() for tr, va in KFold(5).split(X)]) for a in grid]
        assert fit.alpha[j] == grid[int(np.argmin(cv_mse))]
        ref = Ridge(alpha=fit.alpha[j]).fit(X, Y[:, j])
        np.testing.assert_allclose(fit.W[:, j], ref.coef_, atol=1e-3)
        np.testing.assert_allclose(fit.b[j], ref.intercept_, atol=1e-3)
        oof = cross_val_predict(Ridge(alpha=fit.alpha[j]), X, Y[:, j], cv=KFold(5))
        np.testing.assert_allclose(fit.oof[:, j], oof, atol=1e-3)


@pytest.fixture
def store(train_store_ro: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(train_store_ro, tmp_path / "nf.zarr"))


def test_decode_ridge_layout_and_it_never_reads_test_rows(store: Path) -> None:
    st = nfstore.open_store(store)
    rows = np.flatnonzero(st.dataset("nsd/subj01").split.values == "test")
    zarr.open_array(str(store / "nsd/subj01/betas"), mode="r+")[rows, :] = np.nan
    s = decode_ridge(store, "nsd/subj01", "ridge", split="train")  # fit reads train only
    d = nfstore.open_store(store).decoded("ridge", "nsd/subj01")
    train = st.betas("nsd/subj01", split="train", average_repeats=True)
    assert d.shape == (train.sizes["trial"], 1280) and s.rows["nsd/subj01"] == d.shape[0]
    assert np.isfinite(d.values).all() and d.out_of_sample.values.all()
    assert list(d.stimulus.values) == list(train.stimulus.values)
    assert d.attrs["decoder"] == "ridge" and "store_fingerprint" in d.attrs
    with pytest.raises(nfstore.OptionError, match="decoded rows are non-finite"):
        decode_ridge(store, "nsd/subj01", "ridge2", split="test")  # NaN test betas
    assert "ridge2" not in nfstore.open_store(store).decoded_sets()


def test_ridge_test_predictions_equal_a_direct_fit(store: Path) -> None:
    st = nfstore.open_store(store)
    decode_ridge(store, "god/sub-01", "ridge", alphas=(10.0, 1000.0))
    d = nfstore.open_store(store).decoded("ridge", "god/sub-01")
    train = st.betas("god/sub-01", split="train", average_repeats=True)
    test = st.betas("god/sub-01", split="test", average_repeats=True)
    fit = fit_ridge(train.values, st.embeddings("ip-adapter-sdxl", train.stimulus).values,
                    (10.0, 1000.0))
    got = d.values[d.split.values == "test"]
    np.testing.assert_allclose(got, fit.predict(test.values), rtol=1e-4, atol=1e-4)


def test_predict_and_refinement_never_see_test(store: Path, small_cfg) -> None:
    from nftrain.train import train

    summary = train(store, small_cfg(epochs=1))
    predict(store, summary.output_dir / "best", "nf", include_train=True)
    st = nfstore.open_store(store)
    d = st.decoded("nf", "nsd/subj01")
    assert set(d.split.values) == {"test", "train"}
    assert d.attrs["checkpoint_sha256"] and d.attrs["split"] == "test"
    train_oos = (d.split.values == "train") & d.out_of_sample.values
    assert 0 < train_oos.sum() < (d.split.values == "train").sum()  # validation pictures only
    # the refinement reads only out-of-sample train rows: NaN everywhere else changes nothing
    before, n = fit_refinement(st, "nf")
    for key in st.decoded_subjects("nf"):
        dd = st.decoded("nf", key)
        arr = zarr.open_array(str(store / "decoded/nf" / key / "embedding"), mode="r+")
        bad = np.flatnonzero(~((dd.split.values == "train") & dd.out_of_sample.values))
        arr[bad, :] = np.nan
    after, n2 = fit_refinement(nfstore.open_store(store), "nf")
    assert n == n2 and np.isfinite(after.W).all()
    np.testing.assert_array_equal(before.W, after.W)


def test_predict_reads_the_checkpoints_validation_stimuli(store: Path, small_cfg) -> None:
    import json

    from nftrain import checkpoint
    from nftrain.train import train

    best = train(store, small_cfg(epochs=1)).output_dir / "best"
    meta = json.loads((best / "config.json").read_text())
    st = nfstore.open_store(store)
    derived = checkpoint.validation_stimuli({k: v for k, v in meta.items()
                                             if k != checkpoint.VALIDATION_STIMULI}, st)
    assert derived  # old checkpoints: derived again from the train config
    if checkpoint.VALIDATION_STIMULI in meta:
        assert set(meta[checkpoint.VALIDATION_STIMULI]) == derived
    chosen = sorted(derived)[:2]  # the stored list wins over the train config
    meta[checkpoint.VALIDATION_STIMULI] = chosen
    (best / "config.json").write_text(json.dumps(meta))
    predict(store, best, "nf", include_train=True)
    d = nfstore.open_store(store).decoded("nf", "nsd/subj01")
    train_rows = d.split.values == "train"
    oos = set(d.stimulus.values[train_rows & d.out_of_sample.values].tolist())
    assert oos == set(chosen) & set(d.stimulus.values[train_rows].tolist())


def test_refine_writes_a_rescaled_set(store: Path) -> None:
    decode_ridge(store, "nsd/subj01", "ridge")
    s = refine(store, "ridge", "ridge-refined")
    st = nfstore.open_store(store)
    d = st.decoded("ridge-refined", "nsd/subj01")
    assert d.attrs["refined_from"] == "ridge" and s.rows["nsd/subj01"] == d.shape[0]
    norms = np.linalg.norm(d.values, axis=1)
    np.testing.assert_allclose(norms, d.attrs["rescaled_to_norm"], rtol=1e-5)
    assert not d.out_of_sample.values[d.split.values == "train"].any()  # refit on them


def test_decoded_errors(store: Path) -> None:
    st = nfstore.open_store(store)
    with pytest.raises(nfstore.QueryError, match="no decoded set 'nope'"):
        st.decoded("nope", "nsd/subj01")
    decode_ridge(store, "nsd/subj01", "ridge")
    with pytest.raises(nfstore.QueryError, match="'god/sub-01' has no rows in decoded set"):
        nfstore.open_store(store).decoded("ridge", "god/sub-01")
    with pytest.raises(nfstore.OptionError, match="^name: expected letters"):
        decode_ridge(store, "nsd/subj01", "../x")
