"""The zarr store a remote write transaction reads through: a sparse local scratch folder in
front of the work branch's snapshot (:mod:`nfstore.direct`).

The scratch holds every metadata document of the store (``zarr.json``, small) and the whole
of the keys the command touched (its staged groups, the groups it appends to or replaces).
Everything else (betas, images, other caches) is read from the object store on demand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import zarr.storage


class OverlayStore(zarr.storage.WrapperStore):  # type: ignore[type-arg]
    """Read-only: ``local`` (a ``LocalStore`` of the scratch) for metadata and for keys under
    a prefix ``owned`` says is local, ``remote`` (an Icechunk session's store) otherwise."""

    def __init__(self, local: Any, remote: Any, owned: Callable[[str], bool]) -> None:
        super().__init__(local)
        self._remote = remote
        self._owned = owned

    def _with_store(self, store: Any) -> Any:
        return type(self)(store, self._remote, self._owned)

    def _here(self, key: str) -> bool:
        return key.endswith("zarr.json") or self._owned(key)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        if self._here(key):
            return await self._store.get(key, prototype, byte_range)
        return await self._remote.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> list[Any]:
        return [await self.get(k, prototype, r) for k, r in key_ranges]

    async def exists(self, key: str) -> bool:
        if self._here(key):
            return bool(await self._store.exists(key))
        return bool(await self._remote.exists(key))

    async def _merged(self, local: AsyncIterator[str], remote: AsyncIterator[str]
                      ) -> AsyncIterator[str]:
        seen = set()
        async for k in local:
            seen.add(k)
            yield k
        async for k in remote:
            if k not in seen and not self._here(k):
                yield k

    def list(self) -> AsyncIterator[str]:
        return self._merged(self._store.list(), self._remote.list())

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        return self._merged(self._store.list_prefix(prefix), self._remote.list_prefix(prefix))

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        seen = set()
        async for k in self._store.list_dir(prefix):
            seen.add(k)
            yield k
        base = prefix.rstrip("/")
        if base and (self._owned(base + "/") or not await self._store.exists(
                f"{base}/zarr.json")):
            return  # a node that is local, or gone locally: nothing more from the remote
        async for k in self._remote.list_dir(prefix):
            full = f"{base}/{k}" if base else k
            if k not in seen and not self._here(full) and not k.endswith("zarr.json"):
                yield k
