"""``nf reconstruct``: decoded embeddings (or the true cached ones) -> images with SDXL +
IP-Adapter (diffusers), written as reconstruction sets (the format: :mod:`nfrecon.recon_sets`).
The pipeline itself (loading, generation, best of N) is :mod:`nfrecon.pipeline`.

What to reconstruct is a :class:`ReconOptions` (what ``nf reconstruct`` builds from its
flags), how to generate a :class:`~nfrecon.pipeline.ReconConfig`; :func:`reconstruct_sets`
runs them (:func:`reconstruct` is the same with the options as keywords). Every subject's set
is written through the store's transaction (:func:`nfstore.transaction`): staged row by row,
each batch a resume point (``rows_done``), and committed into place when complete.

Every set records what its images depend on (:func:`identity`: the parameters, the embeddings'
and init images' sha256, the weights' sha256, the nf version). A staged set resumes only with
the same identity (otherwise it restarts, so one set never mixes two models); a finished set
with the same identity is kept as it is (the pipeline is not even loaded), and one with another
identity is replaced only with ``overwrite=True``, once the new set is complete.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import nfstore
from nfrecon.decoded import check_name
from nfrecon.pipeline import (
    ReconConfig,
    choose,
    encoder_checksum,
    generate,
    image_seed,
    load_image_encoder,
    load_pipeline,
    weights_checksums,
)
from nfrecon.recon_sets import (
    ReconSummary,
    SetExistsError,
    create_group,
    differences,
    identity,
    read_reconstructions,
    recon_key,
    recon_subjects,
)
from nfstore import Transaction, __version__, transaction
from nfstore.errors import OptionError, StoreError
from nfstore.names import RECON_GROUP

__all__ = ["RECON_GROUP", "TRUE_EMBEDDING", "ReconConfig", "ReconOptions", "ReconSummary",
           "SetExistsError", "create_group", "identity", "differences", "read_reconstructions",
           "recon_subjects", "reconstruct", "reconstruct_sets"]

TRUE_EMBEDDING = "ip-adapter-sdxl"  # the embedding reconstructed without a decoded set


@dataclass
class ReconOptions:
    """What :func:`reconstruct_sets` reconstructs, from what, and how it reports progress (the
    options of ``nf reconstruct``; the generation settings are a :class:`ReconConfig`).

    Attributes
    ----------
    sdxl, ip_adapter : local SDXL (diffusers folder or single file) and IP-Adapter weights
    decoded : decoded set to reconstruct; None with ``from_embeddings``: the ``split``
        stimuli of ``subjects`` (default every subject of the store)
    name : the reconstruction set [``decoded``, ``<decoded>-oracle`` or ``oracle`` with
        ``from_embeddings``] (:meth:`set_name`)
    subjects : subjects to reconstruct [every subject of the decoded set]
    split : rows of this split (``test``, ``train``, ``imagery``)
    encoder : the image encoder of ``nf embed`` (its weights), to choose the best of samples
    from_embeddings : the true cached embeddings of the same stimuli (the oracle row)
    limit : at most this many rows per subject
    sdxl_config : the config folder of a single-file ``sdxl`` (see ``load_pipeline``)
    init, init_kind : img2img from this low-level set (:mod:`nfrecon.init_images`; ``auto``,
        ``images`` or ``latents``) at ``cfg.strength``; ``cfg.blend > 0`` also writes the
        pixel blend with it as the set ``<name>-blend<w>``
    stimuli : only these rows
    overwrite : replace a finished set made with other settings (it stays readable until the
        new one is complete)
    progress : show a progress bar
    on_row : called with the rows done after every batch
    on_step : called with (step, steps) after every denoising step (``nf serve`` jobs)
    """

    sdxl: str | Path
    ip_adapter: str | Path
    decoded: str | None = None
    name: str | None = None
    subjects: list[str] | None = None
    split: str = "test"
    encoder: str | Path | None = None
    from_embeddings: bool = False
    limit: int | None = None
    sdxl_config: str | Path | None = None
    init: str | None = None
    init_kind: str = "auto"
    stimuli: list[str] | None = None
    overwrite: bool = False
    progress: bool = False
    on_row: Callable[[int], None] | None = None
    on_step: Callable[[int, int], None] | None = None

    def set_name(self) -> str:
        """The reconstruction set written: ``name``, or its default."""
        if self.name is not None:
            return self.name
        if not self.from_embeddings:
            return str(self.decoded)
        return f"{self.decoded}-oracle" if self.decoded else "oracle"

    def check(self, cfg: ReconConfig) -> str:
        """One-line :class:`OptionError` naming the first option out of place, before anything
        is read or loaded; returns the set's name."""
        from nfrecon.init_images import check_blend

        cfg.check()
        if self.decoded is None and not self.from_embeddings:
            raise OptionError("decoded: expected a decoded set to reconstruct (or "
                              "from_embeddings=True for the true embeddings of the test "
                              "stimuli); found none")
        name = check_name(self.set_name())
        check_blend(cfg.blend, self.init)
        if cfg.samples > 1 and self.encoder is None:
            raise OptionError(f"encoder: expected the image encoder of `nf embed` (its weights "
                              f"path) to choose the best of samples={cfg.samples}; found none")
        return name


@dataclass
class _Job:
    """One subject's rows: row indices (seed source), stimuli, embeddings (n, D), attributes."""

    key: str
    rows: np.ndarray
    stim: np.ndarray
    embeddings: np.ndarray
    model: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    state: str = "new"  # new | same (finished, same identity) | replace (overwrite)


@dataclass
class _Context:
    """What every subject's run shares (``tx``: the open transaction, while writing)."""

    name: str
    cfg: ReconConfig
    opts: ReconOptions
    summary: ReconSummary
    t0: float
    tx: Transaction | None = None
    pipe: Any = None
    enc: Any = None

    def start(self, job: _Job) -> tuple[str, np.ndarray] | None:
        """The img2img start of the job's rows (kind, values), or None without ``init``."""
        from nfrecon.init_images import init_source

        if self.opts.init is None or self.tx is None:
            return None
        kind, values, _ = init_source(self.tx.root, self.opts.init, job.key, job.stim,
                                      self.cfg.size, self.opts.init_kind)
        return kind, values


def reconstruct(location: str | Path, decoded: str | None, sdxl: str | Path,
                ip_adapter: str | Path, name: str | None, cfg: ReconConfig,
                **options: Any) -> ReconSummary:
    """Reconstruct the rows of decoded set ``decoded`` into the set ``name`` (the keyword
    ``options`` are the other fields of :class:`ReconOptions`; see :func:`reconstruct_sets`).
    """
    opts = ReconOptions(sdxl=sdxl, ip_adapter=ip_adapter, decoded=decoded, name=name,
                        **options)
    return reconstruct_sets(location, opts, cfg)


def reconstruct_sets(location: str | Path, opts: ReconOptions, cfg: ReconConfig
                     ) -> ReconSummary:
    """Reconstruct the ``opts.split`` rows of decoded set ``opts.decoded`` (or, with
    ``opts.from_embeddings``, the true cached embeddings of the same stimuli) into the
    reconstruction set ``opts.set_name()`` of the store at ``location`` (a folder, or a
    versioned store URL: published as its next snapshot).

    A finished set made with the same settings is kept (nothing is loaded); one made with
    other settings is replaced only with ``opts.overwrite`` (the old one stays readable until
    the new one is complete). Options are checked before anything is read or loaded.
    """
    t0 = time.perf_counter()
    name = opts.check(cfg)
    store = nfstore.open_store(location)
    jobs = _plan(location, store, name, opts, cfg)
    ctx = _Context(name, cfg, opts, ReconSummary(name), t0)
    todo = [j for j in jobs if j.state != "same"]
    if todo:
        ctx.pipe = load_pipeline(opts.sdxl, opts.ip_adapter, cfg, opts.sdxl_config)
        if cfg.samples > 1:
            ctx.enc = load_image_encoder(opts.encoder, todo[0].model,  # type: ignore[arg-type]
                                         cfg.device)
    if todo or any(_blend_missing(store, ctx, j) for j in jobs):  # else nothing to write
        with transaction(location, f"nf reconstruct --name {name}") as tx:
            ctx.tx = tx
            for job in jobs:
                if job.state != "same":
                    _run(ctx, job)
                    ctx.summary.subjects.append(job.key)
                elif _blend_missing(store, ctx, job):
                    _write_blend(ctx, job, ctx.start(job))
    ctx.summary.kept = [j.key for j in jobs if j.state == "same"]
    ctx.summary.seconds = time.perf_counter() - t0
    return ctx.summary


def _plan(location: str | Path, store: nfstore.Store, name: str, opts: ReconOptions,
          cfg: ReconConfig) -> list[_Job]:
    """Every subject's job, described (:func:`_describe`) and settled (:func:`_settle`)
    before anything loads: the slow checksums come after the quick checks."""
    from nfrecon.init_images import check_blend, resolve

    keys = _subject_keys(store, opts.decoded, opts.subjects)
    for key in keys if opts.init is not None else []:
        check_blend(cfg.blend, opts.init, resolve(location, opts.init, key, opts.init_kind))
    jobs = [_select(store, opts, key) for key in keys]
    base = weights_checksums(opts.sdxl, opts.ip_adapter, opts.sdxl_config)
    sums = {m: encoder_checksum(opts.encoder, m)  # type: ignore[arg-type]
            for m in {j.model for j in jobs}} if cfg.samples > 1 else {}
    for job in jobs:
        weights = {**base, "encoder": sums[job.model]} if sums else base
        _describe(job, location, opts, cfg, weights)
        _settle(job, store, name, opts.overwrite)
    return jobs


def _subject_keys(store: nfstore.Store, decoded: str | None,
                  subjects: list[str] | None) -> list[str]:
    """``subjects``, else every subject of the decoded set (without one: of the store); a
    one-line error names any that have no rows."""
    have = store.decoded_subjects(decoded) if decoded is not None else store.subjects()
    keys = list(subjects) if subjects else have
    missing = [k for k in keys if k not in have]
    if missing or not keys:
        where = f"decoded set {decoded!r}" if decoded is not None else str(store.location)
        raise StoreError(f"subjects: expected subjects with rows in {where} ({have}); found "
                         f"{missing or 'none'}")
    return keys


def _select(store: nfstore.Store, opts: ReconOptions, key: str) -> _Job:
    """The rows of one subject: the ``split`` rows of the decoded set, or (no decoded set) the
    subject's ``split`` stimuli, one row per stimulus in stimulus-id order (as repeat-averaged
    betas and ``nf predict`` order them), with the true cached embeddings."""
    decoded, split = opts.decoded, opts.split
    if decoded is not None:
        d = store.decoded(decoded, key)
        ids, keep = d.stimulus.values, d["split"].values == split
        model, what = d.attrs.get("embedding", TRUE_EMBEDDING), f"decoded set {decoded!r}"
    else:
        ds = store.dataset(key)
        ids = np.unique(ds.stimulus.values[ds.split.values == split]).astype(object)
        keep, model, what = np.ones(ids.size, bool), TRUE_EMBEDDING, "the store"
    if opts.stimuli is not None:
        keep &= np.isin(ids, list(opts.stimuli))
    rows = np.flatnonzero(keep)[:opts.limit]
    if rows.size == 0:
        raise StoreError(f"split: expected {split} rows of {key} in {what}; found none")
    stim = ids[rows]
    oracle = opts.from_embeddings or decoded is None
    if oracle:
        emb = np.asarray(store.embeddings(model, stimuli=stim).values, np.float32)
    else:
        emb = np.asarray(d.values[rows], np.float32)
    return _Job(key, rows, stim, emb, model, "true embeddings (oracle)" if oracle else "decoded")


def _describe(job: _Job, location: str | Path, opts: ReconOptions, cfg: ReconConfig,
              weights: dict[str, str]) -> None:
    """Fill ``job.meta``: the attributes the set will carry (its :func:`identity`)."""
    from nfrecon.init_images import init_source

    job.meta = {"params": asdict(cfg), "decoded": opts.decoded, "split": opts.split,
                "source": job.source,
                "decoded_sha256": hashlib.sha256(job.embeddings.tobytes()).hexdigest(),
                "weights_sha256": weights, "subject": job.key,
                "selection": "best of samples by cosine of the nf-embed encoder's embedding"
                             " to the decoded embedding (never the ground truth)",
                "nf_version": __version__, "init": None}
    if opts.init is not None:  # the start images / latents enter the identity by their sha256
        _, values, info = init_source(location, opts.init, job.key, job.stim, cfg.size,
                                      opts.init_kind)
        job.meta.update(info, strength=cfg.strength, init_sha256=hashlib.sha256(
            np.ascontiguousarray(values).tobytes()).hexdigest())


def _settle(job: _Job, store: nfstore.Store, name: str, overwrite: bool) -> None:
    """``job.state``: ``new``, ``same`` (a finished set with the same identity: kept) or
    ``replace``; a finished set with another identity needs ``overwrite``."""
    key = recon_key(name, job.key)
    if not store.has(key):
        return
    old = identity(store.group(key).attrs)
    if old == identity(job.meta):
        job.state = "same"
    elif overwrite:
        job.state = "replace"
    else:
        diff = differences(old, identity(job.meta))
        raise SetExistsError(
            f"name: expected a new set, the same settings (nothing to do) or overwrite=True "
            f"to replace it; found reconstruction set {name!r} of {job.key} made with other "
            f"settings ({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''})")


def _stage(ctx: _Context, job: _Job) -> tuple[Any, dict[str, Any], int]:
    """The job's staged group, resumed if an earlier run left it with the same
    :func:`identity` (else made afresh): (zarr group, progress state, rows already done)."""
    import zarr

    assert ctx.tx is not None
    key = recon_key(ctx.name, job.key)
    prior = ctx.tx.state(key) or {}
    staged, state, resumed = ctx.tx.stage(key, identity=identity(job.meta), create=False)
    if resumed and "rows_done" in state:
        done = int(state["rows_done"])
        ctx.summary.resumed += done
        return zarr.open_group(str(staged), mode="r+"), state, done
    if not resumed:  # rows made with other settings (or weights) are discarded
        ctx.summary.restarted += int(prior.get("rows_done", 0))
    g = create_group(staged, job.stim, ctx.cfg.samples, ctx.cfg.size)
    g.attrs.update(job.meta)
    state = {**state, "rows_done": 0}
    ctx.tx.save(key, state)
    return g, state, 0


def _run(ctx: _Context, job: _Job) -> None:
    """Generate the job's missing rows into its staged group (each batch is a resume point),
    then commit the group into place (and write its blend set)."""
    from tqdm.auto import tqdm

    assert ctx.tx is not None
    cfg, summary, rows, E = ctx.cfg, ctx.summary, job.rows, job.embeddings
    start = ctx.start(job)
    g, state, done = _stage(ctx, job)
    key = recon_key(ctx.name, job.key)
    bar = tqdm(total=rows.size, initial=done, unit="row", desc=f"reconstruct {job.key}",
               disable=not ctx.opts.progress)
    for a in range(done, rows.size, cfg.batch):
        b = min(a + cfg.batch, rows.size)
        seeds = [[image_seed(cfg.seed, int(rows[r]), s, cfg.samples)
                  for s in range(cfg.samples)] for r in range(a, b)]
        imgs = generate(ctx.pipe, E[a:b], cfg, seeds,
                        None if start is None else (start[0], start[1][a:b]), ctx.opts.on_step)
        chosen, scores = choose(imgs, E[a:b], ctx.enc)
        g["images"][a:b] = imgs
        g["chosen"][a:b] = chosen
        g["scores"][a:b] = scores
        g["seeds"][a:b] = np.array(seeds)
        ctx.tx.save(key, {**state, "rows_done": b})  # resume point: a kill resumes after it
        summary.images += imgs.shape[0] * imgs.shape[1]
        bar.update(b - a)
        bar.set_postfix_str(f"{summary.images / (time.perf_counter() - ctx.t0):.2f} img/s")
        if ctx.opts.on_row is not None:
            ctx.opts.on_row(b)
    bar.close()
    ctx.tx.commit(key)
    if cfg.blend:
        _write_blend(ctx, job, start)


def _write_blend(ctx: _Context, job: _Job, start: tuple[str, np.ndarray] | None) -> None:
    """The pixel blend of the job's committed set with its init images (``cfg.blend``)."""
    from nfrecon.init_images import blend_name, write_blend_set

    assert ctx.tx is not None
    write_blend_set(ctx.tx, ctx.name, job.key, ctx.cfg.blend, blend_name(ctx.name, ctx.cfg.blend),
                    start[1] if start is not None else None)


def _blend_missing(store: nfstore.Store, ctx: _Context, job: _Job) -> bool:
    """A kept set without its blend set (a run stopped between committing the two)."""
    from nfrecon.init_images import blend_name

    return bool(ctx.cfg.blend) and job.state == "same" and not store.has(
        recon_key(blend_name(ctx.name, ctx.cfg.blend), job.key))
