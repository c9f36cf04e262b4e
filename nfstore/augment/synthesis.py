"""``nf augment``: ridge encoding model per subject -> synthetic trials for novel images.

Pass 1 (one Dask task per voxel chunk, with the solvers of :mod:`nfstore.decoding`): read the
chunk's train betas, score every alpha by K-fold CV, pick each voxel's alpha, refit on all
train trials, and keep the CV residual statistics. Pass 2 (one task per chunk): predict the
pool images, add noise, write the rows.
No task holds more than a few (n_trials x chunk) blocks; the noise of a chunk comes from its own
seeded generator, so the same seed gives the same trials whatever the scheduler (the number of
workers changes BLAS threading, hence float rounding, by ~1e-6 at most).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from nfstore import decoding
from nfstore.augment import noise as nz

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(1, 6, 8))
SKETCH_OVERSAMPLE = 10
# random streams: chunk noise [seed, first voxel]; shared ones use keys past any voxel index
LATENT_STREAM = 2**32 - 1
SKETCH_STREAM = 2**32 - 2


@dataclass(frozen=True)
class AugmentConfig:
    """Options of one augmentation run (see ``nf augment --help``)."""

    pool: str
    n: int | None = None
    fraction: float | None = None
    noise: str = "gaussian"
    noise_scale: float = 1.0
    alpha: float | None = None
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    cv: int = 5
    rank: int = 16
    name: str | None = None
    seed: int = 0
    embedding: str = "ip-adapter-sdxl"
    voxel_chunk: int = 1024
    workers: int | None = None
    scheduler: str | None = None
    blas_threads: int | None = None  # per local worker; default: CPU cores / workers


@dataclass
class ChunkFit:
    cols: slice
    alpha: np.ndarray
    cv_score: np.ndarray
    cv_corr: np.ndarray
    W: np.ndarray
    b: np.ndarray
    resid_var: np.ndarray
    resid_msq: np.ndarray
    sketch: np.ndarray | None = None


@dataclass
class Model:
    """The fitted encoding model of one subject (all voxels)."""

    alpha: np.ndarray
    cv_corr: np.ndarray
    W: np.ndarray
    b: np.ndarray
    resid_var: np.ndarray
    resid_msq: np.ndarray
    chunks: list[slice] = field(default_factory=list)


def _blas_threads(cfg: AugmentConfig) -> int:
    if cfg.blas_threads:
        return cfg.blas_threads
    return max(1, (os.cpu_count() or 1) // max(cfg.workers or (os.cpu_count() or 1), 1))


@dataclass(frozen=True)
class BetasRef:
    """A subject's measured betas as a task names them: the store location (path or URL, with
    its fsspec options) and the subject; each worker opens the store itself, once."""

    location: str
    subject: str
    storage_options: str = "{}"  # JSON (hashable; nested options such as client_kwargs)
    version: str | None = None

    def open(self) -> zarr.Array:
        import json

        import nfstore

        if self not in _OPEN_BETAS:
            store = nfstore.open_store(self.location, check=False, version=self.version,
                                       storage_options=json.loads(self.storage_options))
            _OPEN_BETAS[self] = store.betas_array(self.subject)
        return _OPEN_BETAS[self]


_OPEN_BETAS: dict[BetasRef, zarr.Array] = {}  # per process (a Dask worker, or this one)


def _read(betas: BetasRef | str, rows: np.ndarray, cols: slice) -> np.ndarray:
    """Rows x voxel columns of a subject's betas (or of a bare zarr array at a path)."""
    arr = betas.open() if isinstance(betas, BetasRef) else zarr.open_array(betas, mode="r")
    return np.asarray(arr.get_orthogonal_selection((rows, cols)), dtype=np.float32)


def shared(*values: Any) -> list[Any]:
    """Each value as one Dask graph key, so tasks depend on it instead of each embedding a
    copy (on a cluster it is sent once to each worker that needs it)."""
    import dask

    return [dask.delayed(v, pure=True, traverse=False) for v in values]


def fit_chunk(betas: BetasRef | str, rows: np.ndarray, cols: slice, X: np.ndarray,
              fb: decoding.FoldBases, full: decoding.Basis, alphas: np.ndarray,
              omega_seed: int | None, sketch_k: int) -> ChunkFit:
    """Pass 1 for voxels ``cols``: CV alpha per voxel, refit, residual statistics."""
    Y = _read(betas, rows, cols)
    XtY = X.T @ Y
    proj = decoding.fold_projections(X, Y, fb, XtY)
    stats = decoding.cv_scores(Y, fb, proj, alphas)
    if alphas.size > 1:
        best, score = decoding.select_alphas(stats.scores, alphas)
    else:
        best = np.zeros(Y.shape[1], int)
        score = stats.scores.mean(0)[0]
    alpha = alphas[best]
    W, b = decoding.refit(X, Y, full, alpha, XtY)
    m = stats.at(best)
    n = Y.shape[0]
    sum_y = Y.sum(0, dtype=np.float64)
    sum_yy = np.einsum("nv,nv->v", Y, Y, dtype=np.float64)
    cov = m["sum_py"] - m["sum_p"] * sum_y / n
    var_p = m["sum_pp"] - m["sum_p"] ** 2 / n
    var_y = sum_yy - sum_y ** 2 / n
    denom = np.sqrt(np.clip(var_p * var_y, 0, None))
    corr = np.divide(cov, denom, out=np.zeros(Y.shape[1]), where=denom > 0)
    msq = m["sse"] / n  # mean squared CV residual
    resid_mean = (sum_y - m["sum_p"]) / n
    var = np.clip(msq - resid_mean ** 2, 0, None)
    sketch = None
    if omega_seed is not None:  # randomized range sketch of the residuals (lowrank noise)
        R = Y - decoding.oof_predictions(fb, proj, alpha, n)
        omega = np.random.default_rng([omega_seed, SKETCH_STREAM, cols.start]).standard_normal(
            (R.shape[1], sketch_k)).astype(np.float32)
        sketch = R @ omega
    return ChunkFit(cols, alpha, score, corr.astype(np.float32), W, b, var, msq, sketch)


def project_chunk(betas: BetasRef | str, rows: np.ndarray, cols: slice, X: np.ndarray,
                  fb: decoding.FoldBases, alpha: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``Q.T @ R`` for voxels ``cols`` (R recomputed: CV residuals of the chosen alphas)."""
    Y = _read(betas, rows, cols)
    proj = decoding.fold_projections(X, Y, fb)
    R = Y - decoding.oof_predictions(fb, proj, alpha[cols], Y.shape[0])
    return q.T @ R


def synth_chunk(out: str, cols: slice, X_pool: np.ndarray, W: np.ndarray, b: np.ndarray,
                model: nz.NoiseModel, scale: float, seed: int, dtype: str) -> int:
    """Pass 2 for voxels ``cols``: predictions for the pool images plus noise, written."""
    y = X_pool @ W[:, cols] + b[cols]
    if scale:
        rng = np.random.default_rng([seed, cols.start])
        y += scale * nz.draw(model, cols, X_pool.shape[0], rng)
    zarr.open_array(out, mode="r+")[:, cols] = y.astype(dtype)
    return cols.stop - cols.start


def compute(tasks: list[Any], cfg: AugmentConfig, label: str, progress: bool) -> list[Any]:
    """Run Dask tasks on the local threaded scheduler or the cluster at ``cfg.scheduler``."""
    import dask

    if cfg.scheduler:
        from distributed import Client

        with Client(cfg.scheduler) as client:
            return list(client.gather(client.compute(tasks)))
    from contextlib import nullcontext

    from dask.diagnostics import ProgressBar
    from threadpoolctl import threadpool_limits

    # BLAS threads per worker thread: the limit is process-wide, so it is set once here by the
    # driver (tasks entering and leaving it concurrently would leave it changed afterwards)
    with threadpool_limits(limits=_blas_threads(cfg), user_api="blas"):
        if progress:
            print(label)
        with ProgressBar(dt=0.5) if progress else nullcontext():
            return list(dask.compute(*tasks, scheduler="threads", num_workers=cfg.workers))


def fit_model(betas: BetasRef | str, rows: np.ndarray, X: np.ndarray, n_voxels: int,
              cfg: AugmentConfig, progress: bool = False
              ) -> tuple[Model, nz.NoiseModel | None, dict[str, Any]]:
    """Pass 1 over all voxel chunks; returns the model and what the noise model needs."""
    import dask

    alphas = decoding.check_alphas([cfg.alpha] if cfg.alpha is not None else cfg.alphas)
    X = np.asarray(X, dtype=np.float32)
    fb = decoding.fold_bases(X, decoding.kfold(X.shape[0], cfg.cv))
    full = decoding.basis(X)
    chunks = [slice(a, min(a + cfg.voxel_chunk, n_voxels))
              for a in range(0, n_voxels, cfg.voxel_chunk)]
    lowrank = cfg.noise == "lowrank"
    k = cfg.rank + SKETCH_OVERSAMPLE
    fit = dask.delayed(fit_chunk, pure=False)
    t0 = time.perf_counter()
    rows_, X_, fb_, full_, alphas_ = shared(rows, X, fb, full, alphas)
    parts = compute([fit(betas, rows_, c, X_, fb_, full_, alphas_,
                         cfg.seed if lowrank else None, k)
                     for c in chunks], cfg, "fitting ridge per voxel chunk", progress)
    model = Model(alpha=np.concatenate([p.alpha for p in parts]),
                  cv_corr=np.concatenate([p.cv_corr for p in parts]),
                  W=np.concatenate([p.W for p in parts], axis=1),
                  b=np.concatenate([p.b for p in parts]),
                  resid_var=np.concatenate([p.resid_var for p in parts]).astype(np.float32),
                  resid_msq=np.concatenate([p.resid_msq for p in parts]), chunks=chunks)
    timing = {"fit_seconds": time.perf_counter() - t0}
    if not lowrank:
        return model, None, timing
    q = nz.range_basis(sum(p.sketch for p in parts))  # type: ignore[misc]
    proj = dask.delayed(project_chunk, pure=False)
    alpha_, q_ = shared(model.alpha, q)
    blocks = compute([proj(betas, rows_, c, X_, fb_, alpha_, q_) for c in chunks],
                     cfg, "residual principal components", progress)
    comps, rest = nz.lowrank_components(q, blocks, model.resid_var, cfg.rank, X.shape[0])
    timing["lowrank_seconds"] = time.perf_counter() - t0 - timing["fit_seconds"]
    return model, nz.NoiseModel("lowrank", rest, comps), timing


def noise_model(model: Model, lowrank: nz.NoiseModel | None, kind: str, n: int, rank: int,
                seed: int) -> nz.NoiseModel:
    """The noise model of ``kind`` from the fitted model's residual statistics."""
    if kind not in nz.NOISE_MODELS:
        from nfstore.errors import OptionError

        raise OptionError(f"noise: expected one of {list(nz.NOISE_MODELS)}; found {kind!r}")
    if kind == "gaussian":
        return nz.NoiseModel("gaussian", np.sqrt(model.resid_var).astype(np.float32))
    if kind == "paper-histogram":
        density, edges = np.histogram(model.resid_msq, bins=5, density=True)
        return nz.NoiseModel("paper-histogram", np.zeros(0, np.float32), hist=(density, edges))
    assert lowrank is not None
    latent = np.random.default_rng([seed, LATENT_STREAM]).standard_normal((n, rank))
    latent = latent.astype(np.float32)
    return nz.NoiseModel("lowrank", lowrank.std, lowrank.components, latent)


def synthesize(out: str, X_pool: np.ndarray, model: Model, noise: nz.NoiseModel,
               cfg: AugmentConfig, dtype: str, progress: bool = False) -> None:
    """Pass 2: write ``X_pool @ W + b + scale * noise`` into the (n, n_voxels) array ``out``."""
    import dask

    task = dask.delayed(synth_chunk, pure=False)
    X_pool, W, b, noise_ = shared(np.asarray(X_pool, dtype=np.float32), model.W, model.b, noise)
    compute([task(out, c, X_pool, W, b, noise_, cfg.noise_scale, cfg.seed, dtype)
             for c in model.chunks], cfg, "synthesizing trials", progress)
