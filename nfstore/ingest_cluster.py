"""Ingest on a Dask distributed cluster (``nf ingest --scheduler``): one task per block.

A worker reopens the subject from the raw files (never shipped: only the reader's inputs
travel), normalizes the block exactly as a local ingest does (:mod:`nfstore.normalize`) and
writes its rows, which are whole trial chunks, so tasks never share a chunk. The process that
called :func:`nfstore.ingest` keeps the progress file and commits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr

from nfstore.errors import OptionError
from nfstore.normalize import normalized_block, set_nonfinite, set_normalization
from nfstore.readers import get_reader
from nfstore.readers.base import Block, RawSubject


@dataclass(frozen=True)
class ClusterRun:
    """What a worker needs to reopen a subject: the reader's inputs, not the opened files."""

    dataset: str
    root: Path
    options: Any
    normalization: str | None
    scheduler: str | None = None
    nonfinite: str = "error"


def connect(scheduler: str | None) -> Any:
    if not scheduler:
        return None
    from distributed import Client

    try:
        return Client(scheduler, timeout="30s")
    except OSError as err:
        raise OptionError(f"scheduler: no Dask scheduler answered at {scheduler} ({err})"
                          ) from None


def stage_on_cluster(client: Any, run: ClusterRun, raw: RawSubject, todo: list[Block],
                     betas: str, stats: Any, dtype: str,
                     done: Callable[[Block, int, int], None]) -> None:
    """One task per block: a worker reopens the subject, loads, normalizes and writes the
    block's rows (whole trial chunks, so tasks never share a chunk); this process records each
    block as it completes."""
    from distributed import as_completed

    n_of = {id(b): n for n, b in enumerate(raw.blocks)}
    stats_f = client.scatter(stats, broadcast=True) if stats is not None else None
    futures = {client.submit(_write_block, run, raw.subject, n_of[id(b)], betas, stats_f,
                             dtype, pure=False): b for b in todo}
    try:
        for future in as_completed(futures):
            done(futures[future], *future.result())
    finally:
        client.cancel(list(futures))


_OPENED: dict[tuple[Any, ...], RawSubject] = {}  # per worker process: subjects reopened


def _write_block(run: ClusterRun, subject: str, n: int, betas: str, stats: Any, dtype: str
                 ) -> tuple[int, int]:
    """A cluster task: write block ``n`` of ``subject``; returns its zero-std pair count and
    its count of non-finite values stored as 0."""
    block, z, n_zero, n_bad = _rows(run, subject, n, stats, dtype)
    zarr.open_array(betas, mode="r+")[block.start:block.stop] = z
    return n_zero, n_bad


def write_block_to_fork(run: ClusterRun, subject: str, n: int, fork: Any, path: str,
                        stats: Any, dtype: str) -> tuple[int, int, Any]:
    """A cluster task on a versioned store URL: write block ``n`` of ``subject`` into the
    array ``path`` of ``fork`` (an Icechunk fork of the work branch's session, which carries
    the URL and credentials: the worker needs no shared filesystem). Returns the zero-std
    pair count, the non-finite count and the fork, for the driver to merge."""
    block, z, n_zero, n_bad = _rows(run, subject, n, stats, dtype)
    zarr.open_array(fork.store, path=path, mode="r+")[block.start:block.stop] = z
    return n_zero, n_bad, fork


def _rows(run: ClusterRun, subject: str, n: int, stats: Any, dtype: str
          ) -> tuple[Block, Any, int, int]:
    """Block ``n`` of ``subject`` reopened from the raw files and normalized: (block, rows of
    shape (trials of the block, voxels) in ``dtype``, zero-std pairs, non-finite values)."""
    key = (run.dataset, str(run.root), subject, repr(run.options), run.normalization,
           run.nonfinite)
    if key not in _OPENED:
        reader = get_reader(run.dataset)
        raw = reader.open_subject(run.root, subject, run.options)
        set_normalization(raw, run.normalization, reader.normalization)
        set_nonfinite(raw, run.nonfinite)
        _OPENED.clear()  # one subject at a time is enough: blocks come subject by subject
        _OPENED[key] = raw
    raw = _OPENED[key]
    block = raw.blocks[n]
    fit = raw.norm_fit if raw.norm_fit is not None else (raw.trials["split"] == "train"
                                                          ).to_numpy()
    none = raw.normalization.get("method") == "none"
    z, n_zero, n_bad = normalized_block(raw, block, block.load(), stats, fit, none)
    return block, z.astype(dtype, copy=False), n_zero, n_bad


def stage_on_forks(client: Any, run: ClusterRun, raw: RawSubject, todo: list[Block],
                   work: Any, path: str, stats: Any, dtype: str,
                   done: Callable[[Block, int, int], None]) -> None:
    """:func:`stage_on_cluster` for a versioned store URL (``work``: the transaction's
    :class:`nfstore.direct.RemoteWork`): blocks go out in waves of twice the workers; each task
    writes its block into a fork of the work branch's session, and this process merges the
    wave's forks, commits the branch (a resume point) and records the blocks."""
    n_of = {id(b): n for n, b in enumerate(raw.blocks)}
    stats_f = client.scatter(stats, broadcast=True) if stats is not None else None
    wave = max(2, 2 * len(client.scheduler_info().get("workers", {})))
    for i in range(0, len(todo), wave):
        blocks = todo[i:i + wave]
        session = work.writable()
        futures = [client.submit(write_block_to_fork, run, raw.subject, n_of[id(b)],
                                 session.fork(), path, stats_f, dtype, pure=False)
                   for b in blocks]
        try:
            results = client.gather(futures)
        finally:
            client.cancel(futures)
        work.merge_forks(session, [r[2] for r in results], path)
        for block, (n_zero, n_bad, _) in zip(blocks, results):
            done(block, n_zero, n_bad)
