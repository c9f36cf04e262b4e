"""The pixel cache: stimulus images inside the store, so a store copied to object storage is
self-contained (``/stimuli/<table>/pixels``).

Layout of the cache group: ``images (row, y, x, rgb)`` uint8, one image per chunk; ``stimulus``,
``file`` and ``index`` (row) name each row's stimulus and the raw file (and brick row) its
pixels came from; attrs ``count`` (rows committed, batch by batch: a killed run resumes),
``size`` (height, width) and ``resized``. Rows are found by stimulus id, and a row whose file
or brick row differs from the stimulus table's (the dataset was re-ingested from other files)
is not used. The cache lives inside the table's group and moves with it when the table is
rewritten (:func:`nfstore.stimuli.commit_stimulus_table`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from nfstore.errors import MissingFileError, OptionError, QueryError
from nfstore.names import STIMULI_GROUP, STIMULUS

PIXELS = "pixels"
BATCH = 32


@dataclass
class PixelSummary:
    tables: dict[str, int]  # table -> rows cached by this call
    size: dict[str, tuple[int, int]]
    seconds: float

    def line(self) -> str:
        n = sum(self.tables.values())
        parts = ", ".join(f"{t}: {c} at {self.size[t][0]}x{self.size[t][1]}"
                          for t, c in self.tables.items())
        return (f"cached pixels of {n} stimuli ({parts or 'nothing new'}) in "
                f"{self.seconds:.1f} s ({n / max(self.seconds, 1e-9):.1f} images/s)")


def pixel_key(table: str) -> str:
    return f"{STIMULI_GROUP}/{table}/{PIXELS}"


def select_pixels(store: Any, stimuli: Any, size: tuple[int, int] | None = None
                  ) -> xr.DataArray:
    """:meth:`nfstore.Store.images`: DataArray (stimulus, y, x, rgb) uint8, dask-backed."""
    from nfstore.stimuli import lazy_pixels

    ids = np.asarray(getattr(stimuli, "values", stimuli), dtype=object).ravel()
    tables = {str(s).split("/", 1)[0] for s in ids}
    if len(tables) != 1:
        raise QueryError(f"images: expected stimuli of one dataset; got {sorted(tables)}")
    name = tables.pop()
    tab = store.stimuli(name)
    import pandas as pd

    pos = pd.Index(tab[STIMULUS].values).get_indexer(ids)
    if (pos < 0).any():
        raise QueryError(f"images: stimuli {ids[pos < 0][:3].tolist()} are not in the stimulus "
                         f"table")
    files, index = tab["file"].values[pos], tab["index"].values[pos]
    cached = _from_cache(store, name, ids, files, index, size)
    if cached is not None:
        pixels = cached
    else:
        try:
            pixels = lazy_pixels(files, index, Path(tab.attrs["raw_root"]), size)
        except MissingFileError as err:
            if not store.remote:
                raise
            raise MissingFileError(f"{err}; the store at {store.location} has no pixel cache "
                                   f"for these {name} stimuli: cache them before copying it "
                                   f"(nf ingest ... --cache-pixels, nf embed STORE "
                                   f"--cache-pixels)") from None
    return xr.DataArray(pixels, dims=(STIMULUS, "y", "x", "rgb"), coords={STIMULUS: ids},
                        name="pixels")


def _from_cache(store: Any, table: str, ids: np.ndarray, files: np.ndarray,
                index: np.ndarray, size: tuple[int, int] | None) -> Any:
    """The cached pixels of ``ids`` (dask array), or None unless the cache holds all of them
    from the same files."""
    import dask.array as da
    import pandas as pd

    try:
        g = store.group(pixel_key(table))
    except QueryError:  # no cache for this table
        return None
    count = int(g.attrs.get("count", 0))
    if count == 0:
        return None
    have = pd.Index(np.array(g["stimulus"][:count].tolist(), dtype=object))
    rows = have.get_indexer(ids)
    if (rows < 0).any():
        return None
    same = ((np.array(g["file"][:count].tolist(), dtype=object)[rows] == files)
            & (np.asarray(g["index"][:count])[rows] == index))
    if not same.all():
        return None
    arr = da.from_zarr(g["images"])[rows]
    cached = tuple(int(v) for v in g.attrs["size"])
    # as from the raw files: rows of an image brick (index >= 0) keep the brick's size
    if size is None or tuple(size) == cached or (index >= 0).all():
        return arr
    return arr.map_blocks(_resize, tuple(size), dtype=np.uint8,
                          chunks=(arr.chunks[0], *size, 3))


def _resize(block: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size[1], size[0]),
                                                           Image.Resampling.BICUBIC))
                     for im in block]) if len(block) else np.zeros((0, *size, 3), np.uint8)


def cache_pixels(location: str | Path, stimuli: list[str] | None = None,
                 pixel_size: int | None = None, progress: bool = False,
                 storage_options: dict[str, Any] | None = None) -> PixelSummary:
    """Copy the pixels of every stimulus with an image into ``/stimuli/<table>/pixels``.

    Parameters
    ----------
    location : path of a store, or the URL of a versioned store (published as its next
        snapshot when every table is cached); a transaction (:func:`nfstore.transaction`)
    stimuli : stimulus tables (datasets, pools); default every table
    pixel_size : int, optional
        Resize to ``pixel_size`` x ``pixel_size`` (bicubic). Default: the images' own size,
        which must be the same for every image of a table (NSD's bricks; BOLD5000 and GOD
        images differ: give ``pixel_size``).
    storage_options : fsspec options of a URL ``location`` (``endpoint_url``, ...)

    Resumable: rows are committed batch by batch; a rerun adds only what is missing. A cache
    of another size is an error (remove it with ``--overwrite`` in the CLI).
    """
    import nfstore
    from nfstore.transaction import transaction

    t0 = time.perf_counter()
    out: dict[str, int] = {}
    sizes: dict[str, tuple[int, int]] = {}
    with transaction(location, "nf cache pixels", storage_options=storage_options,
                     progress=progress) as tx:
        store = nfstore.open_store(tx.root)
        names = stimuli or store.stimulus_tables()
        unknown = [t for t in names if t not in store.stimulus_tables()]
        if unknown:
            raise OptionError(f"stimuli: no stimulus table {unknown}; available: "
                              f"{store.stimulus_tables()}")
        for name in names:
            done = _cache_table(tx, store, name, pixel_size, progress)
            if done is not None:
                out[name], sizes[name] = done
    return PixelSummary(out, sizes, time.perf_counter() - t0)


def _cache_table(tx: Any, store: Any, name: str, pixel_size: int | None, progress: bool
                 ) -> tuple[int, tuple[int, int]] | None:
    """Append the missing pixels of one stimulus table to its cache, batch by batch.

    Returns
    -------
    tuple of (int, (int, int)) or None
        Images added and the cached (height, width); None when no stimulus of the table has
        an image.
    """
    from tqdm.auto import tqdm

    tab = store.stimuli(name)
    ids = np.array([s for s, f in zip(tab[STIMULUS].values, tab["file"].values) if f],
                   dtype=object)
    if ids.size == 0:
        return None
    want = (pixel_size, pixel_size) if pixel_size else None
    pixels = select_pixels(store, ids, want) if want else _native(store, name, ids)
    hw = tuple(int(v) for v in pixels.shape[1:3])
    g = _open_cache(tx, name, hw, want is not None)
    count = int(g.attrs["count"])
    done = set(np.array(g["stimulus"][:count].tolist(), dtype=object).tolist())
    todo = np.flatnonzero([s not in done for s in ids.tolist()])
    pos = {s: i for i, s in enumerate(tab[STIMULUS].values.tolist())}
    bar = tqdm(total=todo.size, desc=f"pixels {name}", unit="img", disable=not progress)
    for a in range(0, todo.size, BATCH):
        sel = todo[a:a + BATCH]
        block = np.asarray(pixels[sel].values)
        rows = slice(count, count + sel.size)
        for arr in ("stimulus", "file", "index", "images"):
            g[arr].resize((rows.stop, *g[arr].shape[1:]))
        p = [pos[s] for s in ids[sel]]
        g["stimulus"][rows] = ids[sel]
        g["file"][rows] = tab["file"].values[p]
        g["index"][rows] = tab["index"].values[p]
        g["images"][rows] = block
        count = rows.stop
        g.attrs["count"] = count  # the commit point of this batch
        bar.update(sel.size)
    bar.close()
    return int(todo.size), hw  # type: ignore[return-value]


def _native(store: Any, name: str, ids: np.ndarray) -> Any:
    try:
        return select_pixels(store, ids)
    except QueryError as err:
        if "different sizes" in str(err):
            raise OptionError(f"pixel_size: the {name} images differ in size; give a "
                              f"size to cache them at (e.g. 256)") from None
        raise


def _open_cache(tx: Any, table: str, size: tuple[int, int], resized: bool) -> Any:
    """The cache group of ``table`` in the transaction ``tx``'s store, written in place (its
    ``count`` attribute is the commit point), created empty for ``size`` if missing."""
    from zarr.codecs import BloscCodec

    key = pixel_key(table)
    g = tx.require_group(key)
    if "size" in g.attrs:
        have = tuple(int(v) for v in g.attrs["size"])
        if have != size:
            raise OptionError(f"pixel_size: {tx.location}/{key} holds {have[0]}x{have[1]} pixels; "
                              f"asked for {size[0]}x{size[1]} (remove the cache first)")
        count = int(g.attrs.get("count", 0))
        for arr in ("stimulus", "file", "index", "images"):  # cut back to committed rows
            g[arr].resize((count, *g[arr].shape[1:]))
        return g
    g.create_array("stimulus", shape=(0,), chunks=(4096,), dtype=str)
    g.create_array("file", shape=(0,), chunks=(4096,), dtype=str)
    g.create_array("index", shape=(0,), chunks=(4096,), dtype="int64")
    g.create_array("images", shape=(0, *size, 3), chunks=(1, *size, 3), dtype="uint8",
                   compressors=[BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")],
                   dimension_names=("row", "y", "x", "rgb"))
    g.attrs.update({"count": 0, "size": list(size), "resized": resized,
                    "purpose": "stimulus pixels, one image per chunk (nfstore.pixels)"})
    return g
