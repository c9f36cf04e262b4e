"""Ingest, writing one subject: the staged group's template and the block pipeline (load in a
thread -> normalize -> write in a thread). :mod:`nfstore.ingest` drives it inside the store's
transaction; :mod:`nfstore.ingest_cluster` is the distributed alternative to
:func:`stage_here`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from nfstore._version import __version__
from nfstore.names import (
    BETAS,
    INCOMPLETE,
    MEASURED,
    ROI,
    ROI_MASK,
    SOURCE,
    STATUS_ATTR,
    TRIAL,
    VOXEL,
)
from nfstore.normalize import normalized_block
from nfstore.readers.base import Block, RawSubject


def stage_here(raw: RawSubject, todo: list[Block], betas: Any, stats: Any, fit: np.ndarray,
                none: bool, dtype: str, done: Callable[[Block, int, int], None]) -> None:
    """Three-stage pipeline: load (thread) -> normalize (here) -> write (thread)."""
    with ThreadPoolExecutor(max_workers=1) as writer:
        previous = None
        for block, x in prefetched(todo):
            z, n_zero, n_bad = normalized_block(raw, block, x, stats, fit, none)
            del x
            future = writer.submit(betas.__setitem__, slice(block.start, block.stop),
                                   z.astype(dtype, copy=False))
            if previous is not None:
                previous[0].result()
                done(*previous[1:])
            previous = (future, block, n_zero, n_bad)
        if previous is not None:
            previous[0].result()
            done(*previous[1:])


def prefetched(blocks: list[Block]) -> Iterator[tuple[Block, np.ndarray]]:
    """Yield ``(block, block.load())``, loading the next block in a thread meanwhile.

    Decompression (zlib, HDF5) and the store's codecs release the GIL, so reading session
    k + 1 overlaps normalizing and writing session k; at most two blocks are in memory.
    """
    if not blocks:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(blocks[0].load)
        for n, block in enumerate(blocks):
            x = pending.result()
            if n + 1 < len(blocks):
                pending = pool.submit(blocks[n + 1].load)
            yield block, x
            del x


def write_template(raw: RawSubject, staged: Path, dtype: str, voxel_chunk: int,
                    raw_root: str, reader: str) -> None:
    """Create the subject group: coordinates written, betas allocated (filled by blocks)."""
    t_chunk = max(b.stop - b.start for b in raw.blocks)
    chunks = (min(t_chunk, raw.n_trials), min(voxel_chunk, raw.n_voxels))
    coords: dict[str, Any] = {}
    for col in raw.trials.columns:
        values = raw.trials[col].to_numpy()
        coords[col] = (TRIAL, values.astype(object) if values.dtype == object else values)
    coords[SOURCE] = (TRIAL, np.full(raw.n_trials, MEASURED, dtype=object))
    for name, values in raw.voxels.items():
        coords[name] = (VOXEL, np.asarray(values))
    coords[ROI] = (ROI, np.array(raw.roi_names, dtype=object))
    coords[ROI_MASK] = ((ROI, VOXEL), raw.roi_mask.astype(bool))
    xr.Dataset(coords=coords).to_zarr(str(staged), mode="w", zarr_format=3, consolidated=False)
    zarr.create_array(str(staged), name=BETAS, shape=(raw.n_trials, raw.n_voxels),
                      chunks=chunks, dtype=dtype, fill_value=np.nan,
                      compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
                      dimension_names=(TRIAL, VOXEL))
    group = zarr.open_group(str(staged), mode="r+")
    group.attrs.update({
        STATUS_ATTR: INCOMPLETE, "dataset": raw.dataset, "subject": raw.subject,
        "reader": reader, "nf_version": __version__,
        "raw_root": raw_root, "dtype": dtype, "normalization": raw.normalization,
        **raw.attrs,
    })
