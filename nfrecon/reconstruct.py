"""``nf reconstruct``: decoded embeddings (or the true cached ones) -> images with SDXL +
IP-Adapter (diffusers), written as reconstruction sets. The pipeline itself (loading,
generation, best of N) is :mod:`nfrecon.pipeline`. Output: ``/reconstructions/<name>/<subject>``:
``images`` uint8 (row, sample, y, x, rgb), one image per chunk; ``stimulus``, ``chosen``,
``scores`` and ``seeds``; built under ``_staging`` row by row (resumable after a kill) and
renamed into place when complete.

Every set records what its images depend on (:func:`identity`: the parameters, the embeddings'
and init images' sha256, the weights' sha256, the nf version). A staged set resumes only with
the same identity (otherwise it restarts, so one set never mixes two models); a finished set
with the same identity is kept as it is (the pipeline is not even loaded), and one with another
identity is replaced only with ``overwrite=True``, once the new set is complete.
"""

from __future__ import annotations

import hashlib
import json
import time
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
from nfstore import _layout
from nfstore.names import RECON_GROUP
from nfstore import __version__
from nfstore.errors import OptionError, StoreError

TRUE_EMBEDDING = "ip-adapter-sdxl"  # the embedding reconstructed without a decoded set


class SetExistsError(StoreError):
    """A finished reconstruction set exists with other settings (``overwrite`` replaces it)."""


@dataclass
class ReconSummary:
    name: str
    images: int = 0
    resumed: int = 0
    restarted: int = 0  # staged rows discarded because they were made with other settings
    seconds: float = 0.0
    subjects: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # finished with the same settings

    def line(self) -> str:
        if not self.subjects:
            return (f"/{RECON_GROUP}/{self.name} is complete for {', '.join(self.kept)} with "
                    f"the same settings: nothing to do")
        return (f"reconstructed {self.images} images into /{RECON_GROUP}/{self.name} "
                f"({', '.join(self.subjects)}) in {self.seconds:.1f} s "
                f"({self.images / max(self.seconds, 1e-9):.2f} images/s)"
                + (f"; {self.resumed} rows resumed" if self.resumed else "")
                + (f"; {self.restarted} staged rows made with other settings discarded"
                   if self.restarted else "")
                + (f"; kept {', '.join(self.kept)} (complete, same settings)"
                   if self.kept else ""))


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


def identity(attrs: dict[str, Any]) -> dict[str, Any]:
    """What a set's images depend on: its attributes without the progress counter, as JSON
    values (so stored and fresh attributes compare equal)."""
    return json.loads(json.dumps({k: v for k, v in dict(attrs).items() if k != "rows_done"},
                                 default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every differing entry (one level into dicts), values shortened."""
    def flat(d: dict[str, Any]) -> dict[str, Any]:
        return {k if s is None else f"{k}.{s}": w for k, v in d.items()
                for s, w in (v.items() if isinstance(v, dict) else [(None, v)])}

    def short(v: Any) -> str:
        return repr(v) if len(repr(v)) <= 20 else repr(v)[:16] + "..."

    a, b = flat(old), flat(new)
    return [f"{k}: {short(a.get(k))} -> {short(b.get(k))}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def _staged_group(store: Path, name: str, subject: str, cfg: ReconConfig,
                  meta: dict[str, Any], stimuli: np.ndarray) -> tuple[Any, Path, int, int]:
    """Open or create the staged output; returns (group, path, rows already done, staged rows
    discarded). A staged group resumes only if it was made with the same :func:`identity`."""
    import zarr

    staged = _layout.staging_path(store, f"{RECON_GROUP}.{name}.{subject.replace('/', '.')}")
    discarded = 0
    if staged.is_dir():
        try:
            g = zarr.open_group(str(staged), mode="r+")
            same = identity(g.attrs) == identity(meta)
            done = int(g.attrs.get("rows_done", 0))
        except (OSError, ValueError, KeyError):  # a group whose creation was cut short
            same, done = False, 0
        if same:
            return g, staged, done, 0
        discarded = done
        _layout.discard(staged)
    g = create_group(staged, stimuli, cfg.samples, cfg.size)
    g.attrs.update({**meta, "rows_done": 0})
    return g, staged, 0, discarded


def create_group(staged: Path, stimuli: np.ndarray, samples: int, size: int) -> Any:
    """A new reconstruction group at ``staged``: ``images`` uint8 (row, sample, size, size, 3),
    one image per chunk, ``stimulus`` filled, ``chosen``/``scores``/``seeds`` allocated."""
    import zarr

    staged.parent.mkdir(parents=True, exist_ok=True)
    g = zarr.open_group(str(staged), mode="w", zarr_format=3)
    n_rows = len(stimuli)
    g.create_array("images", shape=(n_rows, samples, size, size, 3),
                   chunks=(1, 1, size, size, 3), dtype="uint8",
                   dimension_names=("row", "sample", "y", "x", "rgb"))
    g.create_array("stimulus", shape=(n_rows,), dtype=str, dimension_names=("row",))
    g["stimulus"][:] = np.asarray(stimuli, dtype=object)
    for arr, dt, shape, dims in (("chosen", "int64", (n_rows,), ("row",)),
                                 ("scores", "float32", (n_rows, samples), ("row", "sample")),
                                 ("seeds", "int64", (n_rows, samples), ("row", "sample"))):
        g.create_array(arr, shape=shape, dtype=dt, dimension_names=dims)
    return g


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


def _select(store: nfstore.Store, decoded: str | None, key: str, split: str,
            stimuli: list[str] | None, limit: int | None, from_embeddings: bool) -> _Job:
    """The rows of one subject: the ``split`` rows of the decoded set, or (no decoded set) the
    subject's ``split`` stimuli, one row per stimulus in stimulus-id order (as repeat-averaged
    betas and ``nf predict`` order them), with the true cached embeddings."""
    if decoded is not None:
        d = store.decoded(decoded, key)
        ids, keep = d.stimulus.values, d["split"].values == split
        model, what = d.attrs.get("embedding", TRUE_EMBEDDING), f"decoded set {decoded!r}"
    else:
        ds = store.dataset(key)
        ids = np.unique(ds.stimulus.values[ds.split.values == split]).astype(object)
        keep, model, what = np.ones(ids.size, bool), TRUE_EMBEDDING, "the store"
    if stimuli is not None:
        keep &= np.isin(ids, list(stimuli))
    rows = np.flatnonzero(keep)[:limit]
    if rows.size == 0:
        raise StoreError(f"{key}: {what} has no {split} rows")
    stim = ids[rows]
    if from_embeddings or decoded is None:
        emb = np.asarray(store.embeddings(model, stimuli=stim).values, np.float32)
    else:
        emb = np.asarray(d.values[rows], np.float32)
    oracle = from_embeddings or decoded is None
    return _Job(key, rows, stim, emb, model, "true embeddings (oracle)" if oracle else "decoded")


def _describe(job: _Job, path: Path, decoded: str | None, split: str, cfg: ReconConfig,
              weights: dict[str, str], init: str | None, init_kind: str) -> None:
    """Fill ``job.meta``: the attributes the set will carry (its :func:`identity`)."""
    from nfrecon.init_images import init_source

    job.meta = {"params": asdict(cfg), "decoded": decoded, "split": split, "source": job.source,
                "decoded_sha256": hashlib.sha256(job.embeddings.tobytes()).hexdigest(),
                "weights_sha256": weights, "subject": job.key,
                "selection": "best of samples by cosine of the nf-embed encoder's embedding"
                             " to the decoded embedding (never the ground truth)",
                "nf_version": __version__, "init": None}
    if init is not None:  # the start images / latents enter the identity by their sha256
        _, values, info = init_source(path, init, job.key, job.stim, cfg.size, init_kind)
        job.meta.update(info, strength=cfg.strength, init_sha256=hashlib.sha256(
            np.ascontiguousarray(values).tobytes()).hexdigest())


def _settle(job: _Job, path: Path, name: str, overwrite: bool) -> None:
    """``job.state``: ``new``, ``same`` (a finished set with the same identity: kept) or
    ``replace``; a finished set with another identity needs ``overwrite``."""
    import zarr

    final = path / RECON_GROUP / name / job.key
    if not final.is_dir():
        return
    old = identity(zarr.open_group(str(final), mode="r").attrs)
    if old == identity(job.meta):
        job.state = "same"
    elif overwrite:
        job.state = "replace"
    else:
        diff = differences(old, identity(job.meta))
        raise SetExistsError(
            f"name: reconstruction set {name!r} of {job.key} exists, made with other settings "
            f"({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); expected the same "
            f"settings (nothing to do) or overwrite=True to replace it")


def reconstruct(location: str | Path, decoded: str | None, sdxl: str | Path,
                ip_adapter: str | Path, name: str, cfg: ReconConfig, *,
                subjects: list[str] | None = None, split: str = "test",
                encoder: str | Path | None = None, from_embeddings: bool = False,
                limit: int | None = None, progress: bool = False, on_row: Any = None,
                sdxl_config: str | Path | None = None, init: str | None = None,
                init_kind: str = "auto", stimuli: list[str] | None = None,
                on_step: Any = None, overwrite: bool = False) -> ReconSummary:
    """Reconstruct the ``split`` rows of decoded set ``decoded`` (or, ``from_embeddings``,
    the true cached embeddings of the same stimuli: the oracle row; ``decoded=None`` with
    ``from_embeddings``: the ``split`` stimuli of ``subjects``, default every subject).
    ``sdxl_config``: the config folder of a single-file ``sdxl`` (see `load_pipeline`).
    ``init``: img2img from a low-level set (:mod:`nfrecon.init_images`; ``init_kind`` auto,
    images or latents) at ``cfg.strength``; ``cfg.blend > 0`` also writes the pixel blend with
    it as the set ``<name>-blend<w>``. ``stimuli``: only these rows; ``on_step(step, steps)``
    after every denoising step (``nf serve`` job progress). A finished set made with the same
    settings is kept (nothing is loaded); one made with other settings is replaced only with
    ``overwrite`` (the old one stays readable until the new one is complete)."""
    from nfrecon.init_images import blend_name, check_blend, resolve, write_blend_set

    t0 = time.perf_counter()
    cfg.check()
    check_name(name)
    check_blend(cfg.blend, init)
    if decoded is None and not from_embeddings:
        raise OptionError("decoded: expected a decoded set to reconstruct (or from_embeddings="
                          "True for the true embeddings of the test stimuli); found none")
    if cfg.samples > 1 and encoder is None:
        raise OptionError(f"encoder: expected the image encoder of `nf embed` (its weights "
                          f"path) to choose the best of samples={cfg.samples}; found none")
    path = _layout.local_store_path(location)
    store = nfstore.open_store(path)
    keys = _subject_keys(store, decoded, subjects)
    for key in keys if init is not None else []:  # before the (slow) checksums and load
        check_blend(cfg.blend, init, resolve(path, init, key, init_kind))
    jobs = [_select(store, decoded, key, split, stimuli, limit, from_embeddings)
            for key in keys]
    base = weights_checksums(sdxl, ip_adapter, sdxl_config)
    sums = {m: encoder_checksum(encoder, m)  # type: ignore[arg-type]
            for m in {j.model for j in jobs}} if cfg.samples > 1 else {}
    for job in jobs:
        weights = {**base, "encoder": sums[job.model]} if sums else base
        _describe(job, path, decoded, split, cfg, weights, init, init_kind)
        _settle(job, path, name, overwrite)
    ctx = _Context(path, name, cfg, ReconSummary(name), t0, init=init, init_kind=init_kind,
                   progress=progress, on_row=on_row, on_step=on_step)
    todo = [j for j in jobs if j.state != "same"]
    if todo:
        ctx.pipe = load_pipeline(sdxl, ip_adapter, cfg, sdxl_config)
        if cfg.samples > 1:
            ctx.enc = load_image_encoder(encoder, todo[0].model, cfg.device)  # type: ignore
    if todo or any(_blend_missing(ctx, j) for j in jobs):  # else nothing to write: no lock
        with _layout.writing(path, f"nf reconstruct --name {name}"):
            for job in jobs:
                if job.state == "same" and _blend_missing(ctx, job):
                    start = ctx.start(job)
                    write_blend_set(path, name, job.key, cfg.blend, blend_name(name, cfg.blend),
                                    start[1] if start is not None else None)
                elif job.state != "same":
                    _run(ctx, job)
                    ctx.summary.subjects.append(job.key)
    ctx.summary.kept = [j.key for j in jobs if j.state == "same"]
    ctx.summary.seconds = time.perf_counter() - t0
    return ctx.summary


@dataclass
class _Context:
    """What every subject's run shares."""

    path: Path
    name: str
    cfg: ReconConfig
    summary: ReconSummary
    t0: float
    pipe: Any = None
    enc: Any = None
    init: str | None = None
    init_kind: str = "auto"
    progress: bool = False
    on_row: Any = None
    on_step: Any = None

    def start(self, job: _Job) -> tuple[str, np.ndarray] | None:
        """The img2img start of the job's rows (kind, values), or None without ``init``."""
        from nfrecon.init_images import init_source

        if self.init is None:
            return None
        kind, values, _ = init_source(self.path, self.init, job.key, job.stim, self.cfg.size,
                                      self.init_kind)
        return kind, values


def _run(ctx: _Context, job: _Job) -> None:
    """Generate the job's missing rows into its staged group (a row at a time is the commit
    point), then rename the group into place (and write its blend set)."""
    from tqdm.auto import tqdm

    from nfrecon.init_images import blend_name, write_blend_set

    cfg, summary, rows, E = ctx.cfg, ctx.summary, job.rows, job.embeddings
    start = ctx.start(job)
    g, staged, done, discarded = _staged_group(ctx.path, ctx.name, job.key, cfg, job.meta,
                                               job.stim)
    summary.resumed += done
    summary.restarted += discarded
    bar = tqdm(total=rows.size, initial=done, unit="row", desc=f"reconstruct {job.key}",
               disable=not ctx.progress)
    for a in range(done, rows.size, cfg.batch):
        b = min(a + cfg.batch, rows.size)
        seeds = [[image_seed(cfg.seed, int(rows[r]), s, cfg.samples)
                  for s in range(cfg.samples)] for r in range(a, b)]
        imgs = generate(ctx.pipe, E[a:b], cfg, seeds,
                        None if start is None else (start[0], start[1][a:b]), ctx.on_step)
        chosen, scores = choose(imgs, E[a:b], ctx.enc)
        g["images"][a:b] = imgs
        g["chosen"][a:b] = chosen
        g["scores"][a:b] = scores
        g["seeds"][a:b] = np.array(seeds)
        g.attrs["rows_done"] = b  # commit point: a kill resumes after this row
        summary.images += imgs.shape[0] * imgs.shape[1]
        bar.update(b - a)
        bar.set_postfix_str(f"{summary.images / (time.perf_counter() - ctx.t0):.2f} img/s")
        if ctx.on_row is not None:
            ctx.on_row(b)
    bar.close()
    _layout.ensure_group(ctx.path, f"{RECON_GROUP}/{ctx.name}/{job.key.split('/')[0]}")
    _layout.commit(ctx.path, staged, f"{RECON_GROUP}/{ctx.name}/{job.key}")
    if cfg.blend:
        write_blend_set(ctx.path, ctx.name, job.key, cfg.blend, blend_name(ctx.name, cfg.blend),
                        start[1] if start is not None else None)


def _blend_missing(ctx: _Context, job: _Job) -> bool:
    """A kept set without its blend set (a run stopped between committing the two)."""
    from nfrecon.init_images import blend_name

    return bool(ctx.cfg.blend) and job.state == "same" and not (
        ctx.path / RECON_GROUP / blend_name(ctx.name, ctx.cfg.blend) / job.key).is_dir()


def read_reconstructions(location: str | Path | nfstore.Store, name: str, subject: str
                         ) -> dict[str, Any]:
    """``images`` (row, sample, y, x, rgb) lazily (dask), ``stimulus``, ``chosen``, ``scores``,
    ``attrs`` of a reconstruction set (``location``: a path, URL or opened store)."""
    import dask.array as da

    store = nfstore.open_store(location, check=False)
    key = f"{RECON_GROUP}/{name}/{subject}"
    try:
        g = store.group(key)
    except nfstore.QueryError:
        raise StoreError(f"--reconstructions: no set {name!r} for {subject} in "
                         f"{store.location}") from None
    return {"images": da.from_zarr(g["images"]), "stimulus": np.array(g["stimulus"][:].tolist(),
                                                                      dtype=object),
            "chosen": g["chosen"][:], "scores": g["scores"][:], "attrs": dict(g.attrs)}


def recon_subjects(location: str | Path | nfstore.Store, name: str,
                   subjects: list[str] | None = None) -> list[str]:
    """Subjects of reconstruction set ``name`` (``subjects`` if given); a one-line error if the
    set does not exist."""
    store = nfstore.open_store(location, check=False)
    sets = store.reconstruction_sets()
    if name not in sets:
        raise nfstore.QueryError(f"--reconstructions: no set {name!r} in {store.location}")
    return list(subjects) if subjects else sets[name]
