"""Ridge synthesis of augmented trials (``nf augment``); see :mod:`.synthesis`."""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from nfstore._version import __version__
from nfstore.augment.synthesis import (
    AugmentConfig,
    BetasRef,
    fit_model,
    noise_model,
    synthesize,
)
from nfstore.errors import OptionError, QueryError, StoreError
from nfstore.leakage import find_leakage
from nfstore.names import BETAS, SPLIT, STIMULUS, TRIAL, VOXEL, dataset_names

SYNTHETIC = "synthetic"

__all__ = ["AugmentConfig", "AugmentSummary", "augment"]


@dataclass
class AugmentSummary:
    subject: str
    name: str
    n_train: int
    n_synthetic: int
    n_voxels: int
    cv_corr: np.ndarray
    alphas: np.ndarray
    seconds: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)
    excluded: int = 0

    def lines(self) -> list[str]:
        q = np.percentile(self.cv_corr, [5, 25, 50, 75, 95])
        values, counts = np.unique(self.alphas, return_counts=True)
        top = ", ".join(f"{v:g} ({c})" for v, c in zip(values, counts))
        return [
            f"per-voxel CV correlation (train trials, {self.n_voxels} voxels): mean "
            f"{self.cv_corr.mean():.3f}; 5/25/50/75/95%: " + " / ".join(f"{v:.3f}" for v in q)
            + f"; > 0.1: {100 * (self.cv_corr > 0.1).mean():.0f}% of voxels",
            f"alphas chosen (voxels): {top}",
            f"synthesized {self.n_synthetic} trials for {self.subject} as '{self.name}' from "
            f"{self.n_train} train trials in {self.seconds:.1f} s "
            f"({self.n_synthetic / max(self.seconds, 1e-9):.0f} trials/s); left out "
            f"{self.excluded} pool images that are copies of held-out pictures",
        ]


def _number(name: str, value: Any, lo: float, closed: bool) -> None:
    """A one-line :class:`OptionError` unless ``value`` is a finite real number ``>= lo``
    (``closed``) or ``> lo``."""
    want = f"a finite number {'>=' if closed else '>'} {lo:g}"
    real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool)
    if not real or not np.isfinite(value) or value < lo or (value == lo and not closed):
        raise OptionError(f"{name}: expected {want}; found {value!r}")


def _integer(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise OptionError(f"{name}: expected an integer >= {lo}; found {value!r}")


def _check(cfg: AugmentConfig, name: str) -> None:
    """Every option of ``cfg`` (and the set's ``name``) for its type, finiteness and range;
    those that depend on the data (``n``, ``cv``, ``rank``) are checked again against it."""
    if (cfg.n is None) == (cfg.fraction is None):
        raise OptionError(f"n: expected exactly one of n and fraction; found "
                          f"{'both' if cfg.n is not None else 'neither'}")
    if cfg.n is not None:
        _integer("n", cfg.n, 1)
    if cfg.fraction is not None:
        _number("fraction", cfg.fraction, 0, closed=False)
    _number("noise_scale", cfg.noise_scale, 0, closed=True)
    if cfg.alpha is not None:
        _number("alpha", cfg.alpha, 0, closed=False)
    if cfg.pool in dataset_names():
        raise OptionError(f"pool: {cfg.pool!r} is a dataset, not a pool of novel images; "
                          f"register one with `nf embed STORE --pool DIR --pool-name NAME`")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise OptionError(f"name: expected letters, digits, '_', '.' or '-'; found {name!r}")
    for field_name, lo in (("seed", 0), ("cv", 2), ("rank", 1), ("voxel_chunk", 1)):
        _integer(field_name, getattr(cfg, field_name), lo)
    for field_name in ("workers", "blas_threads"):
        if getattr(cfg, field_name) is not None:
            _integer(field_name, getattr(cfg, field_name), 1)


def _check_rank(cfg: AugmentConfig, subject: str, n_train: int, n_voxels: int) -> None:
    """``lowrank`` noise has at most min(train trials, voxels) residual components."""
    most = min(n_train, n_voxels)
    if cfg.noise == "lowrank" and cfg.rank > most:
        raise OptionError(f"rank: expected an integer in [1, {most}] ({subject} has {n_train} "
                          f"train trials and {n_voxels} voxels); found {cfg.rank}")


def augment(location: str | Path, subject: str, cfg: AugmentConfig, *, overwrite: bool = False,
            dtype: str = "float32", progress: bool = False,
            storage_options: dict[str, Any] | None = None) -> AugmentSummary:
    """Fit the subject's encoding model on its train trials and write synthetic trials.

    The result lands in ``/<dataset>/<subject>/synthetic/<name>`` (staged, then committed in
    a transaction on ``location``: a local folder, or a versioned store's URL, published as
    its next snapshot); ``store.betas(subject, synthetic=True)`` returns it with the measured
    trials. ``storage_options``: fsspec options of a URL ``location``.
    """
    import nfstore
    from nfstore.transaction import transaction

    t0 = time.perf_counter()
    name = cfg.name or f"{cfg.pool}-{cfg.noise}"
    _check(cfg, name)
    if dtype not in ("float32", "float16"):
        raise OptionError(f"dtype: expected float32 or float16; found {dtype!r}")
    with transaction(location, f"nf augment {subject}", storage_options=storage_options,
                     progress=progress) as tx:
        return _augment(nfstore.open_store(tx.root), tx, subject, cfg, name, overwrite, dtype,
                        progress, t0)


def _train_embeddings(store: Any, tx: Any, subject: str, cfg: AugmentConfig,
                      ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray, xr.DataArray]:
    """The subject's train trials and their embeddings, after checking folds and rank.

    Returns
    -------
    train : ndarray
        int (n_train,), positions of the train trials.
    X : ndarray
        (n_train, n_features) embeddings of the train stimuli.
    cache : xarray.DataArray
        (n_stimuli, n_features) every stored embedding of ``cfg.embedding``.
    """
    train = np.flatnonzero(ds[SPLIT].values == "train")
    if train.size <= cfg.cv:
        raise StoreError(f"cv: expected fewer folds than {subject}'s {train.size} train trials; "
                         f"found {cfg.cv}")
    _check_rank(cfg, subject, int(train.size), int(ds.sizes[VOXEL]))
    stimuli = ds[STIMULUS].values[train]
    try:
        X = store.embeddings(cfg.embedding, stimuli=stimuli).values
    except QueryError as err:
        raise QueryError(f"{subject}: train stimuli need {cfg.embedding} embeddings ({err}); "
                         f"run `nf embed {tx.location} --model {cfg.embedding} --weights ...`"
                         ) from None
    cache = store.embeddings(cfg.embedding)  # exists: X was read from it
    return train, X, cache


def _choose_pool(store: Any, tx: Any, subject: str, cfg: AugmentConfig, n_train: int,
                 cache: xr.DataArray) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw the pool images to synthesize trials for.

    Pool copies of any test or imagery stimulus are never drawn.

    Returns
    -------
    chosen : ndarray
        object (n,), the drawn pool stimuli, in pool order.
    X_pool : ndarray
        (n, n_features) their embeddings.
    excluded : int
        Pool images left out as copies of held-out pictures.
    """
    pool_ids = [s for s in cache[STIMULUS].values.tolist() if s.startswith(f"{cfg.pool}/")]
    if not pool_ids:
        raise QueryError(f"pool: no {cfg.embedding} embeddings of pool {cfg.pool!r}; register "
                         f"and embed it with `nf embed {tx.location} --pool DIR --pool-name "
                         f"{cfg.pool}`")
    # never synthesize a held-out picture: pool copies of any test/imagery stimulus are left out
    held_out_copies = find_leakage(store).excluded()
    n_pool = len(pool_ids)
    pool_ids = [s for s in pool_ids if s not in held_out_copies]
    excluded = n_pool - len(pool_ids)
    asked = cfg.n if cfg.n is not None else cfg.fraction * n_train  # type: ignore
    if asked >= len(pool_ids) + 0.5:  # more than the pool holds once rounded
        raise OptionError(f"{'n' if cfg.n is not None else 'fraction'}: {asked:.0f} synthetic "
                          f"trials asked; pool "
                          f"{cfg.pool!r} has "
                          f"{len(pool_ids)} embedded images that are not copies of held-out "
                          f"pictures ({excluded} are; `nf leakage` lists them)")
    n = int(round(asked))
    if n < 1:
        raise OptionError(f"fraction: expected at least one synthetic trial; found {n} "
                          f"({cfg.fraction} x {n_train} train trials of {subject})")
    rng = np.random.default_rng(cfg.seed)
    chosen = np.array(pool_ids, dtype=object)[np.sort(rng.choice(len(pool_ids), n,
                                                                 replace=False))]
    return chosen, cache.sel({STIMULUS: chosen}).values, excluded


def _set_attrs(staged: Path, store: Any, subject: str, cfg: AugmentConfig, name: str,
               model: Any, emb_attrs: Any, excluded: int, n_train: int, dtype: str) -> None:
    """Record how the synthetic set was made in the staged group's attributes."""
    zarr.open_group(str(staged), mode="r+").attrs.update({
        "name": name, "subject": subject, "source": "ridge synthesis (nf augment)",
        "nf_version": __version__, "config": dataclasses.asdict(cfg),
        "embedding": cfg.embedding, "embedding_weights_sha256": emb_attrs["weights_sha256"],
        "alphas": list(map(float, np.atleast_1d(cfg.alpha if cfg.alpha is not None
                                                else cfg.alphas))),
        "alpha_selection": "fixed" if cfg.alpha is not None else
        f"per voxel, {cfg.cv}-fold CV (negative MSE, himalaya rule)",
        "cv_corr_summary": {k: float(v) for k, v in zip(
            ("p5", "p25", "median", "p75", "p95"),
            np.percentile(model.cv_corr, [5, 25, 50, 75, 95]))} | {
            "mean": float(model.cv_corr.mean())},
        "noise": cfg.noise, "noise_scale": cfg.noise_scale, "seed": cfg.seed,
        "excluded_held_out_copies": int(excluded),
        "n_train_trials": int(n_train), "measured_fingerprint":
            store.attrs(subject).get("ingest_fingerprint"), "dtype": dtype})


def _betas_ref(tx: Any, subject: str) -> BetasRef:
    """The measured betas as tasks name them (workers open the store themselves): the local
    folder, or on a URL the snapshot of the work branch (the scratch folder holds no betas)."""
    import json

    if tx.remote is not None:
        return BetasRef(tx.location, subject, json.dumps(tx.remote.opts or {}),
                        tx.remote.snapshot)
    return BetasRef(str(tx.root.resolve()), subject)


def _augment(store: Any, tx: Any, subject: str, cfg: AugmentConfig, name: str,
             overwrite: bool, dtype: str, progress: bool, t0: float) -> AugmentSummary:
    """Fit the ridge model of one subject and write a synthetic set (see :func:`augment`)."""
    ds = store.dataset(subject)
    train, X, cache = _train_embeddings(store, tx, subject, cfg, ds)
    chosen, X_pool, excluded = _choose_pool(store, tx, subject, cfg, int(train.size), cache)
    n = int(chosen.size)

    key = f"{subject}/{SYNTHETIC}/{name}"
    if tx.path(key).exists() and not overwrite:
        raise StoreError(f"name: {subject} already has a synthetic set '{name}' in "
                         f"{tx.location}; pass overwrite=True to replace it or another name")
    betas = _betas_ref(tx, subject)
    model, lowrank, timing = fit_model(betas, train, X, int(ds.sizes[VOXEL]), cfg, progress)
    noise = noise_model(model, lowrank, cfg.noise, n, cfg.rank, cfg.seed)

    tx.discard(key)  # written whole: nothing to resume
    staged, _, _ = tx.stage(key, create=False)
    try:
        _write_group(staged, chosen, model, dtype, name, int(ds.sizes[VOXEL]), cfg.voxel_chunk)
        t1 = time.perf_counter()
        synthesize(str(staged / BETAS), X_pool, model, noise, cfg, dtype, progress)
        timing["synthesis_seconds"] = time.perf_counter() - t1
        _set_attrs(staged, store, subject, cfg, name, model, cache.attrs, excluded,
                   int(train.size), dtype)
        tx.commit(key)
    except BaseException:
        tx.discard(key)
        raise
    summary = AugmentSummary(subject, name, int(train.size), n, int(ds.sizes[VOXEL]),
                             model.cv_corr, model.alpha, time.perf_counter() - t0, timing,
                             excluded)
    return summary


def _write_group(staged: Path, chosen: np.ndarray, model: Any, dtype: str, name: str,
                 n_voxels: int, voxel_chunk: int) -> None:
    """Coordinates and per-voxel model arrays; betas allocated with the tasks' voxel chunks, so
    that no two tasks ever write into the same zarr chunk."""
    n = chosen.size
    coords = {STIMULUS: (TRIAL, chosen.astype(object)),
              SPLIT: (TRIAL, np.full(n, "train", dtype=object)),
              "session": (TRIAL, np.zeros(n, np.int64)), "run": (TRIAL, np.zeros(n, np.int64)),
              "repeat": (TRIAL, np.zeros(n, np.int64)),
              "source": (TRIAL, np.full(n, name, dtype=object))}
    ds = xr.Dataset({"alpha": (VOXEL, model.alpha.astype(np.float64)),
                     "cv_corr": (VOXEL, model.cv_corr.astype(np.float32))}, coords=coords)
    ds.to_zarr(str(staged), mode="w", zarr_format=3, consolidated=False)
    zarr.create_array(str(staged), name=BETAS, shape=(n, n_voxels),
                      chunks=(n, min(voxel_chunk, n_voxels)), dtype=dtype,
                      fill_value=np.nan, dimension_names=(TRIAL, VOXEL))
