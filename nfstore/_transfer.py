"""Copying zarr objects between two stores, many in flight at once: what ``nf push`` and the
pull of a working copy do (:mod:`nfstore.versioned`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nfstore.errors import StoreError

SKIP = ("_staging/", "_trash/", ".nf-write.lock")  # never published: writes in progress
PARTIAL = ".partial"  # zarr LocalStore's temporary files (a write killed half-way leaves one)


def published(key: str) -> bool:
    return not key.startswith(SKIP) and not key.endswith(PARTIAL)


CONCURRENCY = 16  # objects in flight at once


async def copy(src: Any, dst: Any, on_key: Callable[[int], None] | None, progress: bool,
                unchanged: frozenset[str] = frozenset(), label: str = "push"
                ) -> tuple[int, int, int]:
    """Make ``dst`` hold ``src``'s objects (writes in progress left out): copy those not in
    ``unchanged``, delete those ``src`` lacks. Returns (copied, deleted, bytes copied)."""
    every = [k async for k in src.list() if published(k)]
    have = {k async for k in dst.list() if published(k)}
    keys = [k for k in every if k not in unchanged or k not in have]
    return await transfer(src, dst, keys, sorted(have - set(every)), on_key, progress, label)


async def transfer(src: Any, dst: Any, keys: list[str], gone: list[str],
                    on_key: Callable[[int], None] | None, progress: bool, label: str,
                    absent_is_deleted: bool = False) -> tuple[int, int, int]:
    """Copy ``keys`` from ``src`` to ``dst`` (metadata first, parents before children), then
    delete ``gone`` from ``dst``. A key ``src`` lacks is deleted from ``dst`` where
    ``absent_is_deleted`` (a pull planned from a diff), else an error (a push: the source is
    the locked local store). Returns (copied, deleted, bytes copied)."""
    from tqdm.auto import tqdm
    from zarr.core.buffer import default_buffer_prototype

    keys = sorted(keys, key=lambda k: (not k.endswith("zarr.json"), k.count("/"), k))
    proto = default_buffer_prototype()
    gate = asyncio.Semaphore(CONCURRENCY)
    bar = tqdm(total=len(keys), unit="obj", desc=label, disable=not progress)
    done = 0
    size = 0
    gone = list(gone)

    async def one(key: str) -> None:
        nonlocal done, size
        async with gate:
            buf = await src.get(key, proto)
            if buf is None and absent_is_deleted:
                gone.append(key)
            elif buf is None:
                raise StoreError(f"{key}: vanished while it was being copied")
            else:
                await dst.set(key, buf)
                size += len(buf)
                done += 1
            bar.update(1)
            if on_key is not None:
                on_key(done)

    meta = [k for k in keys if k.endswith("zarr.json")]
    for depth in sorted({k.count("/") for k in meta}):  # levels in turn, each concurrently
        await asyncio.gather(*(one(k) for k in meta if k.count("/") == depth))
    await asyncio.gather(*(one(k) for k in keys if not k.endswith("zarr.json")))
    deleted = 0
    for key in sorted(gone, key=lambda k: (k.endswith("zarr.json"), -k.count("/"))):
        if await dst.exists(key):  # chunks first, then nodes, deepest first
            await dst.delete(key)
            deleted += 1
    bar.close()
    return done, deleted, size
