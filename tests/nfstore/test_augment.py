"""`nf augment`: solvers vs scikit-learn and himalaya, noise models, determinism, errors."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold, cross_val_predict

import nfstore
from nfstore import decoding as S
from nfstore.augment import AugmentConfig, augment
from nfstore.embeddings import embed_store, register_pool
from nfstore.schema import validate_store
from nfstore.synth import _signal, synthesize
from nfstore.synth.images import write_images
from nfstore.tiny import write_tiny_encoder
from tests.conftest import tree_state

ALPHAS = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)


@pytest.fixture(scope="module")
def aug_store_ro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One NSD subject (240 trials), embedded, plus an embedded pool of 400 novel images."""
    base = tmp_path_factory.mktemp("aug")
    synthesize("nsd", base / "raw", subjects=(1,), sessions=4, trials_per_session=60,
               images_per_subject=150, shared=10, image_size=32, grid=(14, 16, 14), seed=11)
    store = base / "nf.zarr"
    nfstore.ingest("nsd", base / "raw", store)
    rng = np.random.default_rng(3)
    write_images([base / "pool" / f"p{i:03d}.png" for i in range(400)],
                 _signal.render_images(_signal.latents(400, rng), 32, rng))
    register_pool(store, base / "pool", "novel")
    weights = write_tiny_encoder(base / "enc")["hf"]
    embed_store(store, "ip-adapter-sdxl", weights, workers=0, batch_size=100)
    return store


@pytest.fixture
def aug_store(aug_store_ro: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(aug_store_ro, tmp_path / "nf.zarr"))


def _train_xy(store: nfstore.Store) -> tuple[np.ndarray, np.ndarray]:
    y = store.betas("nsd/subj01", split="train")
    return store.embeddings("ip-adapter-sdxl", stimuli=y.stimulus).values, y.values


def _synthetic(store: nfstore.Store, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = store.betas("nsd/subj01", synthetic=[name])
    rows = x.source.values == name
    return x.values[rows], x.stimulus.values[rows]


def test_solvers_match_sklearn_and_himalaya_in_float64() -> None:
    from himalaya.ridge import RidgeCV

    rng = np.random.default_rng(0)
    X = rng.standard_normal((240, 30))
    Y = X @ rng.standard_normal((30, 60)) * rng.random(60) * 0.4 + rng.standard_normal((240, 60))
    W, b = S.refit(X, Y, S.basis(X), 7.0)
    np.testing.assert_allclose(X @ W + b, Ridge(alpha=7.0).fit(X, Y).predict(X), atol=1e-10)
    alphas = np.array(ALPHAS)
    fb = S.fold_bases(X, S.kfold(240, 5))
    proj = S.fold_projections(X, Y, fb)
    stats = S.cv_scores(Y, fb, proj, alphas)
    best, _ = S.select_alphas(stats.scores, alphas)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = RidgeCV(alphas=alphas, cv=KFold(5), fit_intercept=True).fit(X, Y)
    np.testing.assert_allclose(alphas[best], h.best_alphas_, rtol=1e-9)
    assert len(set(best.tolist())) > 1  # the grid matters on this data
    oof = S.oof_predictions(fb, proj, np.full(60, 7.0), 240)
    np.testing.assert_allclose(oof, cross_val_predict(Ridge(7.0), X, Y, cv=KFold(5)), atol=1e-10)
    # the moment expansion equals sums over explicit out-of-fold predictions
    k = 3
    P = S.oof_predictions(fb, proj, np.full(60, alphas[k]), 240)
    m = stats.at(np.full(60, k))
    np.testing.assert_allclose(m["sse"], ((Y - P) ** 2).sum(0), rtol=1e-9)
    np.testing.assert_allclose(m["sum_p"], P.sum(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(m["sum_py"], (P * Y).sum(0), rtol=1e-9)
    np.testing.assert_allclose(m["sum_pp"], (P * P).sum(0), rtol=1e-9)
    W2, b2 = S.refit(X, Y, S.basis(X), 7.0, X.T @ Y)
    np.testing.assert_allclose(W2, W, atol=1e-12)
    np.testing.assert_allclose(b2, b, atol=1e-12)


def test_fixed_alpha_zero_noise_equals_sklearn(aug_store: Path) -> None:
    augment(aug_store, "nsd/subj01", AugmentConfig(pool="novel", n=100, alpha=50.0,
                                                   noise_scale=0.0, name="pure"))
    store = nfstore.open_store(aug_store)
    X, Y = _train_xy(store)
    syn, ids = _synthetic(store, "pure")
    X_pool = store.embeddings("ip-adapter-sdxl", stimuli=ids).values
    want = Ridge(alpha=50.0).fit(X.astype(np.float64), Y).predict(X_pool.astype(np.float64))
    np.testing.assert_allclose(syn, want, atol=1e-4)
    assert set(ids.tolist()) <= {f"novel/p{i:03d}" for i in range(400)} and len(set(ids)) == 100
    assert validate_store(store) == []


def test_cv_alphas_equal_himalaya(aug_store: Path) -> None:
    from himalaya.ridge import RidgeCV

    augment(aug_store, "nsd/subj01", AugmentConfig(pool="novel", n=10, alphas=ALPHAS, cv=4,
                                                   name="cv", voxel_chunk=300))
    store = nfstore.open_store(aug_store)
    X, Y = _train_xy(store)
    ours = store.betas("nsd/subj01", synthetic=["cv"])  # alphas are stored per voxel
    import zarr

    alpha = zarr.open_array(str(aug_store / "nsd/subj01/synthetic/cv/alpha"))[:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = RidgeCV(alphas=np.array(ALPHAS), cv=KFold(4), fit_intercept=True).fit(
            X.astype(np.float64), Y.astype(np.float64))
    agree = np.isclose(alpha, h.best_alphas_, rtol=1e-6)
    assert agree.mean() > 0.99, agree.mean()  # float32 vs float64: only exact ties may differ
    assert len(np.unique(alpha)) > 1 and ours.sizes["voxel"] == alpha.size


def test_gaussian_noise_mean_zero_std_of_cv_residuals(aug_store: Path) -> None:
    for name, scale in (("pure", 0.0), ("noisy", 1.0)):
        augment(aug_store, "nsd/subj01", AugmentConfig(pool="novel", n=390, alpha=100.0,
                                                       noise_scale=scale, name=name, seed=4))
    store = nfstore.open_store(aug_store)
    noise = _synthetic(store, "noisy")[0] - _synthetic(store, "pure")[0]
    X, Y = _train_xy(store)
    resid = Y - cross_val_predict(Ridge(100.0), X, Y, cv=KFold(5))
    want = resid.std(0)
    assert np.abs(noise.mean(0)).max() < 5 * want.max() / np.sqrt(400)
    np.testing.assert_allclose(noise.std(0), want, rtol=0.25)
    assert abs(np.median(noise.std(0) / want) - 1) < 0.03


def test_same_seed_same_trials_any_worker_count(aug_store: Path) -> None:
    common = dict(pool="novel", n=60, noise="lowrank", rank=3, voxel_chunk=200)
    augment(aug_store, "nsd/subj01", AugmentConfig(**common, seed=1, workers=2, name="a"))
    augment(aug_store, "nsd/subj01", AugmentConfig(**common, seed=1, workers=2, name="a2"))
    augment(aug_store, "nsd/subj01", AugmentConfig(**common, seed=1, workers=1, name="b"))
    augment(aug_store, "nsd/subj01", AugmentConfig(**common, seed=2, name="c"))
    store = nfstore.open_store(aug_store)
    a, a2, b, c = (_synthetic(store, n) for n in ("a", "a2", "b", "c"))
    assert np.isfinite(a[0]).all()  # every chunk written (tasks own their zarr chunks)
    np.testing.assert_array_equal(a[0], a2[0])  # same seed, same run: identical
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], atol=1e-4)  # other BLAS threading: rounding only
    assert not np.allclose(a[0], c[0])


def test_lowrank_keeps_voxel_correlations(aug_store: Path) -> None:
    for name, noise in (("g", "gaussian"), ("l", "lowrank"), ("pure", "gaussian")):
        augment(aug_store, "nsd/subj01", AugmentConfig(
            pool="novel", n=390, alpha=100.0, noise=noise, rank=5, name=name,
            noise_scale=0.0 if name == "pure" else 1.0))
    store = nfstore.open_store(aug_store)
    pure = _synthetic(store, "pure")[0]
    X, Y = _train_xy(store)
    resid = Y - cross_val_predict(Ridge(100.0), X, Y, cv=KFold(5))

    def mean_abs_corr(a: np.ndarray) -> float:
        c = np.corrcoef(a.T)
        return float(np.abs(c[np.triu_indices_from(c, 1)]).mean())

    g, lr = _synthetic(store, "g")[0] - pure, _synthetic(store, "l")[0] - pure
    assert mean_abs_corr(lr) > 1.5 * mean_abs_corr(g)  # gaussian: independent voxels
    assert abs(mean_abs_corr(lr) - mean_abs_corr(resid)) < 0.5 * mean_abs_corr(resid)
    np.testing.assert_allclose(lr.std(0), resid.std(0), rtol=0.3)  # total variance kept


def test_paper_histogram_noise_is_positive(aug_store: Path) -> None:
    augment(aug_store, "nsd/subj01", AugmentConfig(pool="novel", n=50, alpha=100.0,
                                                   noise="paper-histogram", name="p"))
    augment(aug_store, "nsd/subj01", AugmentConfig(pool="novel", n=50, alpha=100.0,
                                                   noise_scale=0.0, name="pure"))
    store = nfstore.open_store(aug_store)
    noise = _synthetic(store, "p")[0] - _synthetic(store, "pure")[0]
    assert noise.min() > -1e-4 and noise.mean() > 0.1  # squared errors: the paper's offset


def test_measured_and_synthetic_together(aug_store: Path) -> None:
    augment(aug_store, "nsd/subj01", AugmentConfig(pool="novel", fraction=0.5, name="half"))
    store = nfstore.open_store(aug_store)
    assert store.synthetic_sets("nsd/subj01") == ["half"]
    x = store.betas("nsd/subj01", roi="V1", synthetic=True)
    measured = store.betas("nsd/subj01", roi="V1")
    n_train = int((measured.split.values == "train").sum())
    assert (x.source.values == "half").sum() == round(0.5 * n_train)
    np.testing.assert_array_equal(x.values[: measured.sizes["trial"]], measured.values)
    test_only = store.betas("nsd/subj01", split="test", synthetic=True)
    assert set(test_only.source.values.tolist()) == {"measured"}
    assert store.info()["nsd/subj01"]["synthetic"] == {"half": round(0.5 * n_train)}
    with pytest.raises(nfstore.QueryError, match=r"synthetic: \['nope'\] not found"):
        store.betas("nsd/subj01", synthetic=["nope"])


@pytest.mark.parametrize("cfg, exc, message", [
    (dict(pool="novel"), nfstore.OptionError,
     "^n: expected exactly one of n and fraction; found neither$"),
    (dict(pool="novel", n=5000), nfstore.OptionError, r"pool 'novel' has \d+ embedded images"),
    (dict(pool="imagenet", n=5), nfstore.QueryError, "no ip-adapter-sdxl embeddings of pool"),
    (dict(pool="novel", n=5, embedding="ip-adapter-sdxl-vit-h"), nfstore.QueryError,
     "train stimuli need ip-adapter-sdxl-vit-h embeddings"),
    (dict(pool="novel", n=5, alphas=(1.0, -2.0)), nfstore.OptionError,
     "^alphas: expected positive numbers"),
    (dict(pool="novel", n=5, noise="pink"), nfstore.OptionError, "^noise: expected one of"),
    (dict(pool="novel", n=5, noise_scale=float("nan")), nfstore.OptionError,
     r"^noise_scale: expected a finite number >= 0; found nan$"),
    (dict(pool="novel", n=5, noise_scale=float("inf")), nfstore.OptionError,
     r"^noise_scale: expected a finite number >= 0; found inf$"),
    (dict(pool="novel", n=5, noise_scale=-1.0), nfstore.OptionError,
     r"^noise_scale: expected a finite number >= 0; found -1.0$"),
    (dict(pool="novel", fraction=float("inf")), nfstore.OptionError,
     r"^fraction: expected a finite number > 0; found inf$"),
    (dict(pool="novel", fraction=float("nan")), nfstore.OptionError, r"^fraction: expected"),
    (dict(pool="novel", fraction=1e308), nfstore.OptionError,
     r"^fraction: inf synthetic trials asked; pool 'novel' has \d+ embedded images"),
    (dict(pool="novel", fraction=1e-4), nfstore.OptionError,
     r"^fraction: expected at least one synthetic trial; found 0 \(0.0001 x 210 train"),
    (dict(pool="novel", n=5, alpha=float("nan")), nfstore.OptionError,
     r"^alpha: expected a finite number > 0; found nan$"),
    (dict(pool="novel", n=5, alphas=(10.0, float("inf"))), nfstore.OptionError,
     "^alphas: expected positive numbers"),
    (dict(pool="novel", n=2.5), nfstore.OptionError, r"^n: expected an integer >= 1; found 2.5$"),
    (dict(pool="novel", n=5, seed=-1), nfstore.OptionError, r"^seed: expected an integer >= 0"),
    (dict(pool="novel", n=5, noise="lowrank", rank=100000), nfstore.OptionError,
     r"^rank: expected an integer in \[1, 210\] \(nsd/subj01 has 210 train trials and \d+ "
     r"voxels\); found 100000$"),
])
def test_errors_name_the_option(aug_store: Path, cfg: dict, exc: type, message: str) -> None:
    before = tree_state(aug_store)
    with pytest.raises(exc, match=message):
        augment(aug_store, "nsd/subj01", AugmentConfig(**cfg))
    assert nfstore.open_store(aug_store).synthetic_sets("nsd/subj01") == []
    assert tree_state(aug_store) == before


def test_existing_set_needs_overwrite(aug_store: Path) -> None:
    cfg = AugmentConfig(pool="novel", n=5, name="x")
    augment(aug_store, "nsd/subj01", cfg)
    with pytest.raises(nfstore.StoreError, match="already has a synthetic set 'x'"):
        augment(aug_store, "nsd/subj01", cfg)
    augment(aug_store, "nsd/subj01", AugmentConfig(pool="novel", n=7, name="x"), overwrite=True)
    assert nfstore.open_store(aug_store).info()["nsd/subj01"]["synthetic"] == {"x": 7}


def test_distributed_scheduler_gives_the_same_trials(aug_store: Path) -> None:
    """--scheduler ADDRESS: the chunk tasks run on a Dask distributed cluster."""
    from distributed import LocalCluster

    common = dict(pool="novel", n=30, noise="gaussian", voxel_chunk=256, seed=5)
    augment(aug_store, "nsd/subj01", AugmentConfig(**common, name="local"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        augment(aug_store, "nsd/subj01", AugmentConfig(**common, name="cluster",
                                                       scheduler=cluster.scheduler_address))
    store = nfstore.open_store(aug_store)
    a, b = _synthetic(store, "local"), _synthetic(store, "cluster")
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], atol=1e-4)  # other BLAS threading: rounding only
    assert np.isfinite(b[0]).all()


def test_tasks_share_large_inputs_and_name_the_store() -> None:
    """Each large input is one graph key that every chunk task depends on (sent once per
    worker), and tasks name the store and subject rather than a path to an array."""
    import dask
    from dask.base import collections_to_expr

    from nfstore.augment.synthesis import BetasRef, fit_chunk, shared

    X = np.ones((50, 8), np.float32)
    rows = np.arange(50)
    X_, rows_ = shared(X, rows)
    ref = BetasRef("/some/store", "nsd/subj01")
    tasks = [dask.delayed(fit_chunk, pure=False)(ref, rows_, slice(a, a + 4), X_, None, None,
                                                 None, None, 0) for a in (0, 4, 8)]
    graph = dict(collections_to_expr(tasks).__dask_graph__())
    holding_x = [k for k, v in graph.items() if getattr(v, "value", v) is X]
    assert len(holding_x) == 1  # one key holds X; three tasks depend on it
    assert sum(holding_x[0] in getattr(v, "dependencies", ()) for v in graph.values()) == 3


def test_augment_leaves_the_process_blas_settings_alone(aug_store: Path) -> None:
    """Thread limits are process-wide: parallel tasks must not leave them changed."""
    from threadpoolctl import threadpool_info

    def state() -> list[tuple[str, int]]:
        return [(i["internal_api"], i["num_threads"]) for i in threadpool_info()]

    before = state()
    augment(aug_store, "nsd/subj01", AugmentConfig(pool="novel", n=20, noise="lowrank", rank=2,
                                                   voxel_chunk=128, workers=2, name="t"))
    assert state() == before


def test_cluster_workers_read_the_betas_by_url(aug_store: Path, s3: dict) -> None:
    """Chunk tasks on a 2-process LocalCluster open a store on S3 themselves (by URL, with
    its options) and fit the same model as local threads reading the folder."""
    import json

    from distributed import LocalCluster

    from nfstore.augment.synthesis import BetasRef, fit_model

    s3["fs"].put(str(aug_store), "nf-test/aug.zarr", recursive=True)
    st = nfstore.open_store(aug_store)
    x = st.betas("nsd/subj01", split="train")
    X = st.embeddings("ip-adapter-sdxl", stimuli=x.stimulus).values
    rows = np.flatnonzero(st.dataset("nsd/subj01").split.values == "train")
    common = dict(pool="novel", noise="gaussian", voxel_chunk=256, alpha=100.0)
    here, _, _ = fit_model(BetasRef(str(aug_store), "nsd/subj01"), rows, X,
                           x.sizes["voxel"], AugmentConfig(**common))
    ref = BetasRef("s3://nf-test/aug.zarr", "nsd/subj01", json.dumps(s3["options"]))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        there, _, _ = fit_model(ref, rows, X, x.sizes["voxel"],
                                AugmentConfig(**common, scheduler=cluster.scheduler_address))
    np.testing.assert_allclose(there.W, here.W, atol=1e-4)
    np.testing.assert_array_equal(there.alpha, here.alpha)
