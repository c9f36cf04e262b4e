"""``nf embed``: image embeddings cached in the store, one row per stimulus, resumable.

Layout: ``/embeddings/<model>`` with ``stimulus`` (row,) and ``embedding`` (row, feature) -- or
(row, token, feature) for token embeddings -- plus attributes naming the weights (checksum),
preprocessing, dtype and ``count``, the number of committed rows. Rows are appended batch by
batch and ``count`` is raised after both arrays are written (zarr writes metadata atomically), so
a killed run leaves a valid cache and the next run embeds only what is missing.
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

from nfstore import _layout, encoders
from nfstore.names import DATASETS, STIMULI_GROUP
from nfstore._version import __version__
from nfstore.errors import OptionError, ReaderError, StoreError

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

    if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or name in DATASETS or name in (
            STIMULI_GROUP, EMBEDDINGS_GROUP):
        raise OptionError(f"--pool-name: expected a name of letters, digits, '_' or '-' that is "
                          f"not a dataset name ({', '.join(DATASETS)}); got {name!r}")
    base = Path(folder)
    if not base.is_dir():
        raise OptionError(f"--pool: {base} is not a folder")
    files = sorted(p for p in base.rglob("*") if p.suffix.lower() in POOL_SUFFIXES)
    if not files:
        raise OptionError(f"--pool: expected images ({', '.join(POOL_SUFFIXES)}) under {base}; "
                          f"found none")
    rel = [p.relative_to(base).as_posix() for p in files]
    ids = [f"{name}/{r.rsplit('.', 1)[0]}" for r in rel]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if dup:
        raise OptionError(f"--pool: several files share the stimulus id {dup[0]!r} (same path, "
                          f"different extension)")
    return StimulusTable(name, np.array(ids, dtype=object), np.array(rel, dtype=object),
                         np.full(len(ids), -1, np.int64), base.resolve())


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
    path = _layout.local_store_path(store)
    with _layout.writing(path, "nf embed --pool"):
        _commit_pool(path, table, skip_bad)
    return len(table.stimulus)


class _Images:
    """torch Dataset of (row, pixels or None, error) read in DataLoader workers."""

    def __init__(self, items: list[tuple[str, str, int]]) -> None:
        self.items = items  # (path, key in brick or "", row)
        self._proc: Any = None
        self._h5: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        from PIL import Image

        from nfstore.imagefile import open_rgb

        path, key, row = self.items[i]
        if self._proc is None:
            self._proc = encoders.processor()
        try:
            if row >= 0:
                import h5py

                if path not in self._h5:
                    self._h5[path] = h5py.File(path, "r")
                img = Image.fromarray(self._h5[path][key][row])
            else:
                img = open_rgb(path)
            return i, encoders.preprocess(img, self._proc), ""
        except ReaderError as err:  # one line naming the file already
            return i, None, str(err)
        except Exception as err:  # reported per file by the caller
            return i, None, f"{path}{f' row {row}' if row >= 0 else ''}: {type(err).__name__}: " \
                            f"{' '.join(str(err).split())[:200]}"


def _collate(batch: list[tuple[int, np.ndarray | None, str]]) -> list[tuple[int, Any, str]]:
    return batch


def _clash(store: Path, name: str, meta: dict[str, Any], overwrite: bool) -> list[str]:
    """Attributes in which the cache ``/embeddings/<name>`` differs from ``meta`` (none if it
    does not exist); a difference without ``overwrite`` is a one-line error."""
    path = store / EMBEDDINGS_GROUP / name
    if not path.is_dir():
        return []
    old = dict(zarr.open_group(str(path), mode="r").attrs)
    clash = [k for k in ("weights_sha256", "dtype", "feature_shape") if old.get(k) != meta[k]]
    if clash and not overwrite:
        raise StoreError(f"{store}/{EMBEDDINGS_GROUP}/{name}: cached with other "
                         f"{', '.join(clash)} ({old.get('weights', {}).get('path')}); pass "
                         f"--overwrite to replace the cache")
    return clash


def _cache_group(store: Path, name: str, meta: dict[str, Any], shape: tuple[int, ...],
                 overwrite: bool) -> tuple[zarr.Group, Path | None]:
    """Open (or create) the cache ``/embeddings/<name>``; different weights need ``overwrite``.

    Returns the group to append to and, for an ``overwrite``, the staged path it lives at:
    the new cache is built under ``_staging`` (resumable there) and swapped in only when
    complete, so the old one stays readable until then.
    """
    path = store / EMBEDDINGS_GROUP / name
    staged = None
    if path.is_dir():
        clash = _clash(store, name, meta, overwrite)
        if not clash:
            return _resume(path, shape), None
        staged = _layout.staging_path(store, f"{EMBEDDINGS_GROUP}.{name}")
        if staged.is_dir() and all(dict(zarr.open_group(str(staged), mode="r").attrs).get(k)
                                   == meta[k] for k in ("weights_sha256", "dtype",
                                                        "feature_shape")):
            return _resume(staged, shape), staged  # an interrupted --overwrite goes on
        _layout.discard(staged)
        staged.parent.mkdir(parents=True, exist_ok=True)
        g = zarr.open_group(str(staged), mode="w", zarr_format=3)
    else:
        _layout.ensure_group(store, EMBEDDINGS_GROUP)
        g = zarr.open_group(str(store), mode="r+").create_group(f"{EMBEDDINGS_GROUP}/{name}")
    g.create_array("stimulus", shape=(0,), chunks=(ROW_CHUNK * 16,), dtype=str,
                   dimension_names=("stimulus",))
    dims = ("stimulus", "token", "feature") if len(shape) == 2 else ("stimulus", "feature")
    g.create_array("embedding", shape=(0, *shape), chunks=(ROW_CHUNK, *shape),
                   dtype=meta["dtype"], dimension_names=dims)
    g.attrs.update({**meta, "count": 0})
    return g, staged


def _resume(path: Path, shape: tuple[int, ...]) -> zarr.Group:
    """A cache group cut back to its committed rows."""
    g = zarr.open_group(str(path), mode="r+")
    count = int(g.attrs.get("count", 0))
    g["stimulus"].resize((count,))
    g["embedding"].resize((count, *shape))
    return g


def _todo(store: Any, datasets: list[str], done: set[str]) -> list[tuple[str, str, str, int]]:
    """(stimulus, absolute file, brick key, row) of every stimulus with pixels not yet cached."""
    out = []
    for ds in datasets:
        tab = store.stimuli(ds)
        root = Path(tab.attrs["raw_root"])  # the table read just above
        for sid, f, idx in zip(tab["stimulus"].values.tolist(), tab["file"].values.tolist(),
                               tab["index"].values.tolist()):
            if f and sid not in done:
                out.append((sid, str(root / f), "imgBrick" if idx >= 0 else "", int(idx)))
    return out


def embed_store(location: str | Path, model: str, weights: str | Path, *,
                stimuli: str = "all", pool: str | Path | None = None, pool_name: str = "pool",
                batch_size: int = 32, device: str = "cpu", dtype: str = "float32",
                tokens: bool = False, workers: int = 2, skip_bad: bool = False,
                overwrite: bool = False, progress: bool = False,
                on_batch: Callable[[int], None] | None = None) -> EmbedSummary:
    """Embed every stimulus image of the store that the cache does not hold yet.

    Every option, the weights (loaded) and the cache are checked before anything is written,
    so a call that fails on them leaves the store unchanged.

    Parameters
    ----------
    location : path of a local store
    model : {"ip-adapter-sdxl", "ip-adapter-sdxl-vit-h"}
    weights : path of the encoder (see :func:`nfstore.encoders.locate_weights`)
    stimuli : "all", a dataset name, "pool" (every pool) or a pool name; with ``pool``,
        "all" means that pool
    pool : folder, optional
        Register this folder of novel images as pool ``pool_name`` first
        (:func:`register_pool`), once the checks above have passed.
    dtype : {"float32", "float16"}
        Stored precision (the model also runs in float16 on CUDA).
    tokens : bool
        Cache the penultimate hidden states (tokens x hidden, IP-Adapter plus) under
        ``<model>-tokens`` instead of the global embedding.
    workers : int
        DataLoader worker processes decoding images.
    skip_bad : bool
        Report unreadable images (in :attr:`EmbedSummary.skipped`) and go on without them.
    on_batch : callable, optional
        Called with the number of committed rows after each batch.
    """
    import torch

    import nfstore

    t0 = time.perf_counter()
    spec = encoders.get_model(model)
    if dtype not in ("float32", "float16"):
        raise OptionError(f"--dtype: expected float32 or float16; got {dtype!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"--device: {device} requested but CUDA is not available")
    table = _pool_table(pool, pool_name) if pool is not None else None
    stimuli = pool_name if table is not None and stimuli == "all" else stimuli
    path = _layout.local_store_path(location)
    store = nfstore.open_store(path)
    with _layout.writing(path, f"nf embed --model {model}"):
        chosen = _chosen(store, path, stimuli, [pool_name] if table is not None else [])
        encoder, meta = _load(spec, model, weights, device, dtype, tokens)
        name = f"{model}-tokens" if tokens else model
        _clash(path, name, meta, overwrite)
        if table is not None:
            _commit_pool(path, table, skip_bad)
            store = nfstore.open_store(path)
        summary = _embed(store, path, encoder, name, meta, chosen, batch_size=batch_size,
                         device=device, dtype=dtype, tokens=tokens, workers=workers,
                         skip_bad=skip_bad, overwrite=overwrite, progress=progress,
                         on_batch=on_batch, t0=t0)
        summary.registered = 0 if table is None else len(table.stimulus)
        return summary


def _chosen(store: Any, path: Path, stimuli: str, new: list[str]) -> list[str]:
    """Stimulus tables named by ``stimuli`` (``new``: pools about to be registered)."""
    tables = store._children(STIMULI_GROUP) + [t for t in new
                                                if t not in store._children(STIMULI_GROUP)]
    pools = [t for t in tables if t not in DATASETS]
    chosen = {"all": tables, "pool": pools}.get(stimuli, [stimuli])
    unknown = [c for c in chosen if c not in tables]
    if unknown:
        raise OptionError(f"--stimuli: {unknown[0]!r} has no stimulus table in {path}; "
                          f"available: all, pool, {', '.join(tables)}")
    return chosen


def _load(spec: Any, model: str, weights: str | Path, device: str, dtype: str, tokens: bool
          ) -> tuple[Any, dict[str, Any]]:
    """The loaded encoder and the cache attributes it makes (output ``feature_shape``)."""
    import torch

    where = encoders.locate_weights(weights, spec)
    encoder = encoders.load_encoder(where, spec, device=device,
                                    dtype="float16" if device.startswith("cuda") else "float32",
                                    tokens=tokens)
    probe = encoder(torch.zeros(1, 3, 224, 224, device=device, dtype=next(
        encoder.model.parameters()).dtype), tokens=tokens)
    shape = tuple(int(s) for s in probe.shape[1:])
    meta = {"model": model, "weights": {"layout": where.layout, "path": str(where.path.resolve()),
                                        "files": [f.name for f in where.files]},
            "weights_sha256": encoders.checksum(where.files), "dtype": dtype,
            "feature_shape": list(shape), "preprocessing": encoders.PREPROCESSING,
            "output": "hidden_states[-2]" if tokens else "image_embeds (unnormalized)",
            "nf_version": __version__}
    return encoder, meta


def _embed(store: Any, path: Path, encoder: Any, name: str, meta: dict[str, Any],
           chosen: list[str], *, batch_size: int, device: str, dtype: str, tokens: bool,
           workers: int, skip_bad: bool, overwrite: bool, progress: bool,
           on_batch: Callable[[int], None] | None, t0: float) -> EmbedSummary:
    import torch
    from tqdm.auto import tqdm

    shape = tuple(meta["feature_shape"])
    group, staged = _cache_group(path, name, meta, shape, overwrite)
    count = int(group.attrs["count"])
    done = set(group["stimulus"][:count].tolist()) if count else set()
    todo = _todo(store, chosen, done)
    summary = EmbedSummary(name, cached=len(done))
    loader = torch.utils.data.DataLoader(_Images([(f, k, r) for _, f, k, r in todo]),
                                         batch_size=batch_size, num_workers=workers,
                                         collate_fn=_collate)
    bar = tqdm(total=len(todo), unit="img", desc=f"embed {name}", disable=not progress)
    try:
        for batch in loader:
            bad = [(i, e) for i, x, e in batch if x is None]
            if bad and not skip_bad:
                raise ReaderError(f"{bad[0][1]} (pass --skip-bad to go on without it)")
            summary.skipped += [e for _, e in bad]
            good = [(i, x) for i, x, _ in batch if x is not None]
            if good:
                x = torch.from_numpy(np.stack([g[1] for g in good])).to(
                    device, next(encoder.model.parameters()).dtype)
                emb = encoder(x, tokens=tokens).float().cpu().numpy().astype(dtype)
                n = len(good)
                group["embedding"].resize((count + n, *shape))
                group["embedding"][count:count + n] = emb
                group["stimulus"].resize((count + n,))
                group["stimulus"][count:count + n] = np.array([todo[i][0] for i, _ in good],
                                                              dtype=object)
                count += n
                group.attrs["count"] = count  # commit point
                summary.embedded += n
            bar.update(len(batch))
            bar.set_postfix_str(f"{summary.embedded / (time.perf_counter() - t0):.1f} img/s")
            if on_batch is not None:
                on_batch(count)
    finally:
        bar.close()
    if staged is not None:  # the new cache is complete: swap it in for the old one
        _layout.commit(path, staged, f"{EMBEDDINGS_GROUP}/{name}")
    summary.seconds = time.perf_counter() - t0
    return summary
