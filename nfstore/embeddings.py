"""``nf embed``: image features cached in the store, one row per stimulus, resumable: the one
cache writer of every featurizer (:mod:`nfstore.featurizers`).

Layout: ``/embeddings/<name>`` with ``stimulus`` (row,) and ``embedding`` (row, *feature_shape)
-- (row, feature), or (row, token, feature) for token embeddings -- plus attributes naming the
model, weights (checksum), preprocessing, dtype and ``count``, the number of committed rows.
Rows are appended batch by batch and ``count`` is raised after both arrays are written (zarr
writes metadata atomically): the commit point a run resumes from.

A new cache, or one replaced by ``overwrite``, is built staged in a transaction
(:func:`nfstore.transaction`) and committed when complete, so readers never see half of it and
an old cache stays readable until then; a killed run resumes the staged rows. Stimuli added
to an existing cache with the same weights (a new pool) are appended to it in place, resuming
at its committed row count.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from nfstore._version import __version__
from nfstore.errors import OptionError, ReaderError, StoreError
from nfstore.featurizers import Featurizer, get_featurizer, make_featurizer
from nfstore.imagebatches import batches, todo_images
from nfstore.names import STIMULI_GROUP, dataset_names
from nfstore.transaction import Transaction, transaction

EMBEDDINGS_GROUP = "embeddings"
ROW_CHUNK = 256
POOL_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class EmbedSummary:
    model: str
    embedded: int = 0
    cached: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    registered: int = 0  # images of a pool registered first (``pool``)
    pixels: str = ""  # what ``cache_pixels`` did
    ran: bool = True  # False: only ``cache_pixels`` was asked (no weights)

    def line(self) -> str:
        rate = self.embedded / self.seconds if self.seconds else 0.0
        return (f"embedded {self.embedded} images with {self.model} in {self.seconds:.1f} s "
                f"({rate:.1f} images/s); {self.cached} already cached"
                + (f"; skipped {len(self.skipped)} unreadable" if self.skipped else ""))


def _pool_table(folder: str | Path, name: str) -> Any:
    """The stimulus table of a folder of novel images (checks only; nothing is written).

    Returns
    -------
    nfstore.readers.base.StimulusTable with ids ``<name>/<relative path stem>``
    """
    from nfstore.readers.base import StimulusTable

    if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or name in dataset_names() or name in (
            STIMULI_GROUP, EMBEDDINGS_GROUP):
        raise OptionError(f"pool_name: expected a name of letters, digits, '_' or '-' that is "
                          f"not a dataset name ({', '.join(dataset_names())}); found {name!r}")
    base = Path(folder)
    if not base.is_dir():
        raise OptionError(f"pool: expected a folder of images; found {base} (not a folder)")
    files = sorted(p for p in base.rglob("*") if p.suffix.lower() in POOL_SUFFIXES)
    if not files:
        raise OptionError(f"pool: expected images ({', '.join(POOL_SUFFIXES)}) under {base}; "
                          f"found none")
    rel = [p.relative_to(base).as_posix() for p in files]
    ids = [f"{name}/{r.rsplit('.', 1)[0]}" for r in rel]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if dup:
        raise OptionError(f"pool: expected one file per stimulus id; found several for "
                          f"{dup[0]!r} (same path, different extension)")
    return StimulusTable(name, np.array(ids, dtype=object), np.array(rel, dtype=object),
                         np.full(len(ids), -1, np.int64), base.resolve())


def _commit_pool_in(tx: Transaction, table: Any, skip_bad: bool) -> list[str]:
    """:func:`_commit_pool` in the transaction ``tx`` (on a URL the previous table of the
    pool, whose fingerprints are reused, is brought into the scratch folder first)."""
    tx.path(f"stimuli/{table.dataset}")
    return _commit_pool(tx.root, table, skip_bad)


def _commit_pool(path: Path, table: Any, skip_bad: bool) -> list[str]:
    """Fingerprint the pool's images, then write its stimulus table (the caller holds the
    write lock). An unreadable image (decompression bombs included) is a one-line error
    before anything is written, unless ``skip_bad``: then it is registered without a
    fingerprint (``nf embed`` skips it) and its line returned."""
    from nfstore.stimuli import commit_stimulus_table, fingerprints_to_compute

    errors: list[str] = []
    known = fingerprints_to_compute(path, table, list(table.stimulus), errors=errors)
    if errors and not skip_bad:
        raise ReaderError(f"{errors[0]} ({len(errors)} of {len(table.stimulus)} pool images "
                          f"unreadable; skip_bad goes on without them)")
    commit_stimulus_table(path, table, known=known)
    return errors


def register_pool(store: Path, folder: str | Path, name: str, skip_bad: bool = False) -> int:
    """Add a folder of novel images as stimuli ``<name>/<relative path stem>``; returns count.

    Parameters
    ----------
    skip_bad : bool
        Register unreadable images (without fingerprint) instead of failing on the first.
    """
    table = _pool_table(folder, name)
    with transaction(store, "nf embed --pool") as tx:
        _commit_pool_in(tx, table, skip_bad)
    return len(table.stimulus)


IDENTITY = ("weights_sha256", "dtype", "feature_shape")  # a cache with others is another cache


def _clash(root: Path, name: str, meta: dict[str, Any], overwrite: bool) -> list[str]:
    """Attributes in which the cache ``/embeddings/<name>`` differs from ``meta`` (none if it
    does not exist); a difference without ``overwrite`` is a one-line error."""
    path = root / EMBEDDINGS_GROUP / name
    if not path.is_dir():
        return []
    old = dict(zarr.open_group(str(path), mode="r").attrs)
    clash = [k for k in IDENTITY if old.get(k) != meta[k]]
    if clash and not overwrite:
        raise StoreError(f"overwrite: expected {root}/{EMBEDDINGS_GROUP}/{name} made with these "
                         f"weights, or overwrite to replace it; found it cached with other "
                         f"{', '.join(clash)} ({old.get('weights', {}).get('path')})")
    return clash


def _open_cache(tx: Transaction, name: str, meta: dict[str, Any], overwrite: bool
                ) -> tuple[zarr.Group, bool]:
    """The group to append rows to, cut back to its committed ``count``, and whether it is
    staged (a new cache, or an ``overwrite``; committed by the caller when complete) rather
    than the existing cache with the same weights (appended in place)."""
    key = f"{EMBEDDINGS_GROUP}/{name}"
    shape = tuple(meta["feature_shape"])
    if tx.path(key).is_dir() and not _clash(tx.root, name, meta, overwrite):
        g, staged = tx.require_group(key), False
    else:
        path, _, _ = tx.stage(key, identity={k: meta[k] for k in IDENTITY})
        g, staged = zarr.open_group(str(path), mode="r+"), True
    if "embedding" not in g:
        g.create_array("stimulus", shape=(0,), chunks=(ROW_CHUNK * 16,), dtype=str,
                       dimension_names=("stimulus",))
        dims = ("stimulus", "token", "feature") if len(shape) == 2 else ("stimulus", "feature")
        g.create_array("embedding", shape=(0, *shape), chunks=(ROW_CHUNK, *shape),
                       dtype=meta["dtype"], dimension_names=dims)
        g.attrs.update({**meta, "count": 0})
    count = int(g.attrs.get("count", 0))
    g["stimulus"].resize((count,))
    g["embedding"].resize((count, *shape))
    return g, staged


def write_cache(tx: Transaction, feat: Featurizer, meta: dict[str, Any], tables: list[str], *,
                batch_size: int = 32, workers: int = 0, skip_bad: bool = False,
                overwrite: bool = False, progress: bool = False,
                on_batch: Callable[[int], None] | None = None) -> EmbedSummary:
    """Featurize every stimulus of ``tables`` not cached yet into ``/embeddings/<cache
    name>``, resumably (see the module docstring); the one writer of every cache.

    Parameters
    ----------
    tx : the open transaction on the store
    meta : cache attributes (``model``, the featurizer's fingerprint, ``dtype``,
        ``feature_shape``)
    on_batch : called with the number of committed rows after each batch
    """
    from tqdm.auto import tqdm

    import nfstore

    t0 = time.perf_counter()
    name = feat.cache_name
    group, staged = _open_cache(tx, name, meta, overwrite)
    count = int(group.attrs["count"])
    done = set(group["stimulus"][:count].tolist()) if count else set()
    store = nfstore.open_store(tx.root)
    todo = todo_images(store, tables, done)
    summary = EmbedSummary(name, cached=len(done))
    shape = tuple(meta["feature_shape"])
    with tqdm(total=len(todo), unit="img", desc=f"embed {name}", disable=not progress) as bar:
        for batch in batches(store, feat, todo, batch_size, workers):
            bad = [e for _, x, e in batch if x is None]
            if bad and not skip_bad:
                raise ReaderError(f"{bad[0]} (skip_bad goes on without it)")
            summary.skipped += bad
            good = [(s, x) for s, x, _ in batch if x is not None]
            if good:
                emb = np.asarray(feat.encode(np.stack([x for _, x in good])), np.float32)
                n = len(good)
                group["embedding"].resize((count + n, *shape))
                group["embedding"][count:count + n] = emb.astype(meta["dtype"])
                group["stimulus"].resize((count + n,))
                group["stimulus"][count:count + n] = np.array([s for s, _ in good], dtype=object)
                count += n
                group.attrs["count"] = count  # commit point
                if staged:
                    tx.save(f"{EMBEDDINGS_GROUP}/{name}", {**(tx.state(
                        f"{EMBEDDINGS_GROUP}/{name}") or {}), "rows_done": count})
                summary.embedded += n
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(count)
    if staged:  # the new cache is complete: swap it in (for the old one, if any)
        tx.commit(f"{EMBEDDINGS_GROUP}/{name}")
    summary.seconds = time.perf_counter() - t0
    return summary


def embed_store(location: str | Path, model: str = "ip-adapter-sdxl",
                weights: str | Path | None = None, *, options: dict[str, Any] | None = None,
                stimuli: str = "all", pool: str | Path | None = None, pool_name: str = "pool",
                batch_size: int = 32, device: str = "cpu", dtype: str = "float32",
                tokens: bool = False, workers: int = 2, skip_bad: bool = False,
                overwrite: bool = False, progress: bool = False,
                on_batch: Callable[[int], None] | None = None, cache_pixels: bool = False,
                pixel_size: int | None = None) -> EmbedSummary:
    """Featurize every stimulus image of the store that the cache does not hold yet.

    Every option, the weights (loaded) and the cache are checked before anything is written,
    so a call that fails on them leaves the store unchanged.

    Parameters
    ----------
    location : local store, or the URL of a versioned store
    model : a featurizer name (:func:`nfstore.featurizers.featurizer_names`)
    weights : the featurizer's weights (for the IP-Adapter models see
        :func:`nfstore.encoders.locate_weights`; ``sdxl-vae``: a diffusers SDXL folder)
    options : featurizer options (``size`` for pixels, ``latent_size`` for sdxl-vae,
        ``tokens`` for the IP-Adapter models); keys the featurizer does not declare are ignored
    stimuli : "all", a dataset name, "pool" (every pool) or a pool name; with ``pool``, "all"
        means that pool. "all" holds the pools only for featurizers that include them.
    pool : folder, optional
        Register this folder of novel images as pool ``pool_name`` first
        (:func:`register_pool`), once the checks above have passed.
    dtype : {"float32", "float16"}
        Stored precision.
    tokens : bool
        Same as ``options={"tokens": True}``: cache the penultimate hidden states (tokens x
        hidden, IP-Adapter plus) under ``<model>-tokens``.
    workers : int
        DataLoader worker processes decoding images (featurizers reading images at their
        own size).
    skip_bad : bool
        Report unreadable images (in :attr:`EmbedSummary.skipped`) and go on without them.
    on_batch : callable, optional
        Called with the number of committed rows after each batch.
    cache_pixels : bool
        Also copy the images of the chosen tables into the store (:mod:`nfstore.pixels`,
        at ``pixel_size``); without ``weights`` for a model that needs them, only that.
    """
    t0 = time.perf_counter()
    cls = get_featurizer(model)
    _check_options(dtype, device)
    table = _pool_table(pool, pool_name) if pool is not None else None
    stimuli = pool_name if table is not None and stimuli == "all" else stimuli
    opts = {**(options or {}), **({"tokens": True} if tokens else {})}
    with transaction(location, f"nf embed --model {model}", progress=progress) as tx:
        new = [pool_name] if table is not None else []
        chosen = _chosen(_open(tx), tx.root, stimuli, new, cls.include_pools)
        if weights is None and cls.needs_weights and cache_pixels and table is None:
            return EmbedSummary(model, ran=False, pixels=_cache_pixels(
                tx, chosen, pixel_size, progress))
        summary = _featurize(tx, cls, model, weights, opts, table, chosen, device=device,
                             dtype=dtype, batch_size=batch_size, workers=workers,
                             skip_bad=skip_bad, overwrite=overwrite, progress=progress,
                             on_batch=on_batch, cache_pixels=cache_pixels,
                             pixel_size=pixel_size)
    summary.seconds = time.perf_counter() - t0
    return summary


def _featurize(tx: Transaction, cls: type, model: str, weights: str | Path | None,
               opts: dict[str, Any], table: Any, chosen: list[str], *, device: str,
               dtype: str, batch_size: int, workers: int, skip_bad: bool, overwrite: bool,
               progress: bool, on_batch: Callable[[int], None] | None, cache_pixels: bool,
               pixel_size: int | None) -> EmbedSummary:
    """Load the featurizer, check the cache, register the pool and write the embeddings.

    Parameters are :func:`embed_store`'s; ``cls`` is the featurizer class, ``table`` the pool's
    stimulus table (or None) and ``chosen`` the stimulus tables to featurize.
    """
    replace = overwrite or not cls.needs_weights
    feat = make_featurizer(model, weights, device=device, options=opts, strict=False)
    meta = {"model": feat.name, **feat.fingerprint(), "dtype": dtype,
            "feature_shape": list(feat.feature_shape), "nf_version": __version__}
    _clash(tx.root, feat.cache_name, meta, replace)
    if table is not None:
        _commit_pool_in(tx, table, skip_bad)
    line = _cache_pixels(tx, chosen, pixel_size, progress) if cache_pixels else ""
    summary = write_cache(tx, feat, meta, chosen, batch_size=batch_size, workers=workers,
                          skip_bad=skip_bad, overwrite=replace, progress=progress,
                          on_batch=on_batch)
    summary.registered = 0 if table is None else len(table.stimulus)
    summary.pixels = line
    return summary


def _open(tx: Transaction) -> Any:
    import nfstore

    return nfstore.open_store(tx.root)


def _check_options(dtype: str, device: str) -> None:
    if dtype not in ("float32", "float16"):
        raise OptionError(f"dtype: expected float32 or float16; found {dtype!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise OptionError(f"device: expected cpu or an available CUDA device; found "
                              f"{device} (CUDA is not available)")


def _cache_pixels(tx: Transaction, tables: list[str], pixel_size: int | None,
                  progress: bool) -> str:
    """``cache_pixels``: copy the images of ``tables`` into the store; its summary line."""
    from nfstore.pixels import cache_pixels

    return str(cache_pixels(tx.root, tables, pixel_size, progress).line())


def _chosen(store: Any, path: Path, stimuli: str, new: list[str], pools: bool = True
            ) -> list[str]:
    """Stimulus tables named by ``stimuli`` (``new``: pools about to be registered; ``pools``:
    whether "all" includes the pools)."""
    tables = store.stimulus_tables() + [t for t in new if t not in store.stimulus_tables()]
    in_pools = [t for t in tables if t not in dataset_names()]
    every = tables if pools else [t for t in tables if t in dataset_names()]
    chosen = {"all": every, "pool": in_pools}.get(stimuli, [stimuli])
    unknown = [c for c in chosen if c not in tables]
    if unknown:
        raise OptionError(f"stimuli: expected all, pool or a table of {path} "
                          f"({', '.join(tables)}); found {unknown[0]!r} (no stimulus table)")
    return chosen
