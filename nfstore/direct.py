"""Writing to a versioned store URL directly: one Icechunk work branch per command, no local
copy of the store.

A write transaction on a URL (:func:`nfstore.transaction.transaction`) opens a work branch
``nf--<command>--<time>`` made from ``main``. The command writes into a sparse scratch
folder that holds the store's metadata documents and only the keys the command touches
(:mod:`nfstore._overlay` reads the rest from the object store). Every resume point
(``tx.save``, ``tx.commit``) uploads what changed and commits the work branch, so a killed
command loses at most the work since its last resume point. When the command succeeds,
``main`` moves to the result in one step (:mod:`nfstore.branches`); the work branch and the
scratch are then removed. Rerunning a killed command finds its branch and continues.

The scratch lives under ``$NF_WORKDIR`` (default ``~/.cache/neurofusion``), in a folder
named after the URL and the repository's identity, and is rebuilt from the branch every time
a transaction starts: no local state outlives a command or survives a re-created store.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from nfstore import branches
from nfstore._transfer import PARTIAL, transfer
from nfstore.names import STAGING_GROUP

PROGRESS_NODE = ".nf-progress"  # session group beside a staged group: its progress file
SKIP = (".nf-write.lock", "_trash/")


def workdir(url: str) -> Path:
    """The local folder of ``url``'s writes: ``$NF_WORKDIR/<hash of the URL>``."""
    base = Path(os.environ.get("NF_WORKDIR") or Path.home() / ".cache" / "neurofusion")
    return base / hashlib.sha256(url.encode()).hexdigest()[:16]


def local_bytes(url: str) -> tuple[Path, int]:
    """(the local folder of ``url``'s writes, the bytes in it): a command's scratch while it
    runs (or after a kill, until the next run), and a working copy made by
    :func:`nfstore.versioned.publishing`."""
    folder = workdir(url)
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(parent, name)).st_size
            except OSError:  # removed meanwhile
                pass
    return folder, total


def _scan(root: Path) -> dict[str, tuple[int, int]]:
    """zarr objects of the scratch folder: key -> (size, mtime_ns); progress files, locks,
    zarr's temporary files and interrupted swaps left out."""
    out = {}
    for f in root.rglob("*"):
        key = f.relative_to(root).as_posix()
        if (not f.is_file() or key.startswith(SKIP) or key.endswith(PARTIAL)
                or (key.startswith(f"{STAGING_GROUP}/") and key.endswith(".json")
                    and not key.endswith("zarr.json"))):
            continue
        st = f.stat()
        out[key] = (st.st_size, st.st_mtime_ns)
    return out


def _progress_key(name: str) -> str:
    return f"{STAGING_GROUP}/{name}{PROGRESS_NODE}/zarr.json"


class RemoteWork:
    """The remote half of a write transaction on ``url`` (see the module docstring).

    Attributes
    ----------
    root : Path
        The scratch folder (a sparse store folder) the command writes.
    branch : str
        The work branch.
    base : str
        The snapshot of ``main`` the branch was made from.
    continues : bool
        This transaction continues an earlier run of the same command that was killed: it
        resumed its work branch, or completed its move of ``main`` (its results are in
        ``main`` now).
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None, command: str,
                 progress: bool = False) -> None:
        from nfstore.versioned import open_repository

        self.url, self.opts, self.command, self.show = url, storage_options, command, progress
        self.repo = open_repository(url, storage_options, create=True)
        found = branches.find(self.repo, command)
        self.continues = found is not None
        if found is not None and branches.done(self.repo, found):
            branches.move_main(self.repo, url, found)  # killed while main moved: finish it
            found = None
        if found is None:
            self.branch, self.base = branches.create(self.repo, command)
        else:
            self.branch, self.base = found, branches.base_of(self.repo, found)
        ident = branches.identity(self.repo)
        for old in workdir(url).glob("*"):  # stale scratch (another repository, a kill)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        self.root = workdir(url) / ident / "nf.zarr"
        self.owned: set[str] = set()
        self._build()

    # ------------------------------------------------------------------ the scratch

    def _build(self) -> None:
        """Metadata of the branch's tip, its staged groups whole, their progress files."""
        import zarr.storage

        tip = self.repo.lookup_branch(self.branch)
        self.snapshot = tip  # the work branch's last commit
        self.remote = self.repo.readonly_session(snapshot_id=tip).store
        self.root.mkdir(parents=True, exist_ok=True)
        keys = asyncio.run(_listing(self.remote))
        self.remote_keys = set(keys)
        staged = {k.split("/")[1] for k in keys if k.startswith(f"{STAGING_GROUP}/")
                  and k.count("/") >= 2}
        progress = {n for n in staged if n.endswith(PROGRESS_NODE)}
        fetch = [k for k in keys if (k.endswith("zarr.json") and not any(
            k.startswith(f"{STAGING_GROUP}/{p}/") for p in progress))
            or (k.startswith(f"{STAGING_GROUP}/") and k.split("/")[1] in staged - progress)]
        local = zarr.storage.LocalStore(str(self.root))
        asyncio.run(transfer(self.remote, local, fetch, [], None, self.show, "scratch"))
        for p in progress:
            name = p[:-len(PROGRESS_NODE)]
            doc = json.loads((asyncio.run(_get(self.remote, _progress_key(name))) or b"{}"))
            state = doc.get("attributes", {}).get("nf_progress")
            if state is not None:
                (self.root / STAGING_GROUP / f"{name}.json").write_text(json.dumps(state))
        self.owned = {f"{STAGING_GROUP}/{n}" for n in staged - progress}
        self.kept: set[str] = set()  # chunks written on the branch only (cluster forks)
        self.moves: list[tuple[str, str]] = []  # (staged prefix, key) committed since
        self.synced = _scan(self.root)
        self.progress = self._read_progress()

    def is_owned(self, key: str) -> bool:
        """Whether ``key`` lies under a prefix the scratch holds whole."""
        return any(key == p or key.startswith(p + "/") for p in self.owned)

    def own(self, key: str) -> None:
        """Make the scratch authoritative for ``key`` and everything under it (what is not
        there locally at the next resume point is deleted from the branch)."""
        self.owned.add(key.strip("/"))

    def materialize(self, key: str) -> None:
        """Bring the whole of ``key`` (a group or array and everything under it) into the
        scratch, once, and own it."""
        import zarr.storage

        key = key.strip("/")
        if self.is_owned(key):
            return
        keys = [k for k in self.remote_keys if k.startswith(key + "/")
                and not k.endswith("zarr.json")]
        local = zarr.storage.LocalStore(str(self.root))
        asyncio.run(transfer(self.remote, local, keys, [], None, False, "fetch"))
        self.synced.update({k: v for k, v in _scan(self.root).items() if k in set(keys)})
        self.own(key)

    def overlay(self) -> Any:
        """The zarr store readers of the scratch read through (:class:`OverlayStore`)."""
        import zarr.storage

        from nfstore._overlay import OverlayStore

        return OverlayStore(zarr.storage.LocalStore(str(self.root), read_only=True),
                            self.remote, self.is_owned)

    # ------------------------------------------------------------------ resume points

    def _read_progress(self) -> dict[str, Any]:
        out = {}
        for f in (self.root / STAGING_GROUP).glob("*.json"):
            if f.name != "zarr.json":
                try:
                    out[f.name[:-len(".json")]] = json.loads(f.read_text())
                except ValueError:
                    continue
        return out

    def _gone(self, now: dict[str, Any]) -> list[str]:
        """Keys the branch holds that the scratch removed: under an owned prefix, or in a
        node whose metadata document is gone locally."""
        out = []
        for k in self.remote_keys:
            if k in now or k in self.kept or (k.endswith("zarr.json") and PROGRESS_NODE in k):
                continue
            node = _node_of(k, self.remote_keys)
            if self.is_owned(k) or k.endswith("zarr.json") or not (
                    self.root / node / "zarr.json").exists():
                out.append(k)
        return out

    def checkpoint(self, message: str = "", last: bool = False) -> str | None:
        """Upload what changed in the scratch since the last resume point and commit the work
        branch; returns the new snapshot id (None: nothing changed)."""
        import zarr.storage

        now = _scan(self.root)
        changed = [k for k, st in now.items() if self.synced.get(k) != st]
        gone = self._gone(now)
        progress = self._read_progress()
        session = self.repo.writable_session(self.branch)
        local = zarr.storage.LocalStore(str(self.root), read_only=True)
        asyncio.run(transfer(local, session.store, changed, gone, None, False, "upload"))
        moved = {k: dst + k[len(src):] for src, dst in self.moves for k in self.kept
                 if k.startswith(src + "/")}
        asyncio.run(_move(self.remote, session.store, moved))
        asyncio.run(_set_progress(session.store, progress, self.progress))
        if not session.has_uncommitted_changes:
            return None
        snapshot = branches.commit_work(session, self.url, message or self.command,
                                        {branches.BASE: self.base,
                                         branches.COMMAND: self.command}, step=not last)
        if snapshot is None:
            return None
        self.snapshot = snapshot
        self.remote = self.repo.readonly_session(snapshot_id=snapshot).store
        self.remote_keys = (self.remote_keys - set(gone) - set(moved)) | set(changed) | set(
            moved.values())
        self.kept = (self.kept - set(moved)) | set(moved.values())
        self.moves = []
        self.synced, self.progress = now, progress
        return snapshot

    def moving(self, staged: str, key: str) -> None:
        """``staged`` is committed to ``key``: chunks of it held on the branch only move too
        (at the next resume point)."""
        self.moves.append((staged.strip("/"), key.strip("/")))

    def writable(self) -> Any:
        """A writable session of the work branch, after a resume point (cluster workers
        write into its forks: :func:`nfstore.ingest_cluster.stage_on_forks`)."""
        self.checkpoint()
        return self.repo.writable_session(self.branch)

    def merge_forks(self, session: Any, forks: list[Any], path: str) -> None:
        """Merge the forks the workers wrote into ``session`` and commit the branch; the
        chunks they wrote under ``path`` stay on the branch only (not in the scratch)."""
        session.merge(*forks)
        snapshot = branches.commit_work(session, self.url, f"{self.command}: {path}",
                                        {branches.BASE: self.base,
                                         branches.COMMAND: self.command})
        if snapshot is None:
            return
        self.snapshot = snapshot
        self.remote = self.repo.readonly_session(snapshot_id=snapshot).store
        written = {k for k in asyncio.run(_prefixed(self.remote, path + "/"))
                   if not k.endswith("zarr.json")}
        self.kept |= written
        self.remote_keys |= written

    def finish(self) -> str | None:
        """The command succeeded: upload the rest, drop staged leftovers from the branch,
        move ``main`` to the result (one step) and remove the branch and the scratch.
        Returns the snapshot ``main`` points to now (None: nothing was written)."""
        for name in list(self.progress):
            (self.root / STAGING_GROUP / f"{name}.json").unlink(missing_ok=True)
        for child in (self.root / STAGING_GROUP).glob("*"):
            if child.name == "zarr.json":
                continue
            self.own(f"{STAGING_GROUP}/{child.name}")
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
        self.checkpoint(self.command, last=True)
        tip = self.repo.lookup_branch(self.branch)
        if tip == self.base:
            self.repo.delete_branch(self.branch)
            result = None
        else:
            result = branches.move_main(self.repo, self.url, self.branch)
        self.discard_scratch()
        return result

    def discard_scratch(self) -> None:
        shutil.rmtree(self.root.parent, ignore_errors=True)


def _node_of(key: str, keys: set[str]) -> str:
    """The node (group or array path) a key belongs to."""
    parts = key.split("/")
    for i in range(len(parts) - 1, 0, -1):
        if "/".join(parts[:i]) + "/zarr.json" in keys:
            return "/".join(parts[:i])
    return ""


async def _prefixed(store: Any, prefix: str) -> list[str]:
    return [k async for k in store.list_prefix(prefix)]


async def _move(src: Any, dst: Any, moved: dict[str, str]) -> None:
    """Copy the objects ``moved`` names from the branch's last commit ``src`` to their new
    keys in the session ``dst``, and delete the old ones there."""
    from zarr.core.buffer import default_buffer_prototype

    proto = default_buffer_prototype()
    for old, new in moved.items():
        buf = await src.get(old, proto)
        if buf is not None:
            await dst.set(new, buf)
        if await dst.exists(old):
            await dst.delete(old)


async def _listing(store: Any) -> list[str]:
    return [k async for k in store.list()]


async def _get(store: Any, key: str) -> bytes | None:
    from zarr.core.buffer import default_buffer_prototype

    buf = await store.get(key, default_buffer_prototype())
    return None if buf is None else buf.to_bytes()


async def _set_progress(store: Any, now: dict[str, Any], before: dict[str, Any]) -> None:
    """Progress files as tiny groups ``_staging/<name>.nf-progress`` in the session (Icechunk
    stores zarr objects only)."""
    from zarr.core.buffer import default_buffer_prototype

    proto = default_buffer_prototype()
    for name, state in now.items():
        if before.get(name) != state or not await store.exists(_progress_key(name)):
            doc = {"zarr_format": 3, "node_type": "group", "attributes": {"nf_progress": state}}
            await store.set(_progress_key(name), proto.buffer.from_bytes(
                json.dumps(doc).encode()))
    for name in before:
        if name not in now and await store.exists(_progress_key(name)):
            await store.delete(_progress_key(name))
