"""Public raw accessors of :class:`nfstore.Store`: zarr groups and arrays by key, object
listings and change stamps, for the packages that read what the query methods do not wrap
(the trainer's chunk-aligned loader, reconstruction sets, nf serve's caches)."""

from __future__ import annotations

from typing import Any

import zarr

from nfstore import _remote
from nfstore.errors import NFError, QueryError, StoreError
from nfstore.names import BETAS, RECON_GROUP, STAGING_GROUP


class RawAccess:
    """Mixed into :class:`nfstore.Store` (which sets ``_root``, ``_zstore``, ``fs``,
    ``fs_path``, ``location``)."""

    _root: Any
    _zstore: Any
    fs: Any
    fs_path: str
    location: str

    def _children(self, path: str) -> list[str]:  # defined by Store
        raise NotImplementedError

    def _require(self, subject: str) -> None:  # defined by Store
        raise NotImplementedError

    def group(self, key: str) -> zarr.Group:
        """The read-only zarr group at ``key`` (``reconstructions/NAME/nsd/subj01``, ...), for
        the packages that read arrays the accessors above do not wrap; a missing group is a
        :class:`QueryError`."""
        parts = key.strip("/").split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise QueryError(f"{key!r}: expected a group path inside the store")
        key = "/".join(parts)
        try:  # one metadata read (a request on object storage), not a check and a read
            return self._root[key]
        except KeyError:
            raise QueryError(f"{self.location}: has no group {key!r}") from None

    def has(self, key: str) -> bool:
        """True if the store holds a group or array at ``key``."""
        return key.strip("/") in self._root

    def betas_array(self, subject: str, synthetic: str | None = None) -> zarr.Array:
        """The subject's (or one synthetic set's) ``betas`` zarr array (trial, voxel), for
        chunk-aligned reads (the trainer's loader)."""
        self._require(subject)
        key = subject if synthetic is None else f"{subject}/synthetic/{synthetic}"
        return self.group(key)[BETAS]

    def reconstruction_sets(self) -> dict[str, list[str]]:
        """Reconstruction set name -> its subjects (``nf reconstruct``, ``nf decode-ridge``)."""
        base = RECON_GROUP
        return {name: [f"{d}/{s}" for d in self._children(f"{base}/{name}")
                       for s in self._children(f"{base}/{name}/{d}")]
                for name in self._children(base)}

    def stamp(self, key: str) -> str:
        """A marker that changes when the group at ``key`` is rewritten (the modification time
        of its metadata document), for caches of derived values."""
        try:
            return str(self.fs.modified(f"{self.fs_path}/{key.strip('/')}/zarr.json"))
        except (FileNotFoundError, NotImplementedError):
            return ""

    def keys(self, prefix: str) -> list[str]:
        """The store's object keys under ``prefix`` (chunk keys included), from zarr's own
        listing: the same for a folder, a URL and a versioned store (whose listings must start
        at a group or an array: ``prefix`` names one)."""
        from zarr.core.sync import sync

        async def listing() -> list[str]:
            return [k async for k in self._zstore.list_prefix(prefix)]

        return sync(listing())

    def incomplete(self) -> dict[str, str]:
        """Writes in progress or interrupted, by the key they will write: an ingest's subject
        (``nsd/subj01``) -> ``'<n> blocks written'``, any other staged set
        (``reconstructions/rr/nsd/subj01``) -> ``'staged'``; :meth:`staged_writes` tells what
        each is and the command that resumes it."""
        return {key: progress for key, (_, _, progress) in self.staged_writes().items()}

    def staged_writes(self) -> dict[str, tuple[str, str, str]]:
        """Writes in progress or interrupted: key -> (what it is, e.g. ``'ingest'`` or
        ``"reconstruction set 'rr'"``; the command that resumes it; progress:
        ``'<n> blocks written'`` where its progress file counts blocks, else ``'staged'``).

        Found under ``_staging``: staged groups ``<quoted key>/`` and progress files
        ``<quoted key>.json`` (:func:`nfstore.transaction.staged_name`), and the names earlier
        versions staged under (``nsd/subj01``, ``reconstructions.rr.nsd.subj01``)."""
        from nfstore._layout import staged_kind

        staging = f"{self.fs_path}/{STAGING_GROUP}"
        found: dict[str, str] = {}
        for pattern in ("*/zarr.json", "*/*/zarr.json"):
            for path in sorted(self.fs.glob(f"{staging}/{pattern}")):
                name = path[len(staging) + 1:].removesuffix("/zarr.json")
                if "/" not in name and "." not in name and "%" not in name:
                    continue  # a parent group of an earlier version's names (nsd, stimuli)
                found.setdefault(name, "staged")
        for pattern in ("*.json", "*/*.json"):
            for path in sorted(self.fs.glob(f"{staging}/{pattern}")):
                rel = path[len(staging) + 1:]
                if rel.endswith("zarr.json"):
                    continue
                found[rel.removesuffix(".json")] = self._progress(path)
        out = {}
        for name, progress in found.items():
            key, what, command = staged_kind(name, self.location)
            out[key] = (what, command, progress)
        return out

    def _progress(self, path: str) -> str:
        """What a progress file says: ``'<n> blocks written'`` (an ingest) or ``'staged'``."""
        import json

        try:
            state = json.loads(_remote.read_text(self.fs, path) or "{}")
        except ValueError:
            state = {}
        if isinstance(state, dict) and "blocks_done" in state:
            return f"{len(state['blocks_done'])} blocks written"
        return "staged"

    def _loaded(self, key: str, load: Any) -> Any:
        """``load()`` (coordinates read into memory); a chunk its codec cannot decode (damaged
        bytes) is a one-line :class:`StoreError` naming the group."""
        try:
            return load()
        except (RuntimeError, ValueError) as err:
            if isinstance(err, NFError):
                raise
            raise StoreError(f"{self.location}/{key}: expected arrays whose chunks decode; found "
                             f"{_remote.describe_error(err)} (a damaged chunk); `nf validate "
                             f"{self.location}` names it") from None
