"""Stores on object storage with a history: an Icechunk repository per store URL.

Icechunk (a transactional storage engine for Zarr) keeps every version of the store as a
snapshot and moves the ``main`` branch to a new snapshot in one atomic step when a session
commits. ``nf push`` copies a local store (written as always: staged and renamed into place)
into the repository and commits it: readers see the previous snapshot until that commit and
the new one after it, never a mix, and a push killed half-way leaves only unreferenced chunk
objects behind. ``nf log`` lists the snapshots, ``nf rollback`` moves ``main`` back, and
``open_store(url, version=SNAPSHOT)`` reads an older one; checkpoints record the snapshot they
trained on (``store_version``).

Supported locations: ``s3://bucket/prefix`` (S3 and S3-compatible servers) with the same
``storage_options`` as fsspec's ``s3fs`` (``endpoint_url``, ``key``, ``secret``,
``client_kwargs.region_name``, ``anon``), else the ``AWS_*`` environment variables.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfstore import _remote
from nfstore._remote import reach
from nfstore._transfer import copy, published, transfer
from nfstore.errors import ChunkError, OptionError, StoreError


def storage(location: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The Icechunk storage of an ``s3://`` location (options as fsspec's ``s3fs``)."""
    import fsspec.config

    try:
        import icechunk
    except ImportError:
        raise OptionError(f"{location}: versioned stores need the icechunk package "
                          f"(pip install icechunk)") from None
    if not location.startswith("s3://"):
        raise OptionError(f"{location}: versioned stores (nf push) live on s3:// URLs")
    opts = {**fsspec.config.conf.get("s3", {}), **(storage_options or {})}
    bucket, _, prefix = location[len("s3://"):].partition("/")
    endpoint = opts.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
    region = (opts.get("client_kwargs", {}) or {}).get("region_name") or os.environ.get(
        "AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    key, secret = opts.get("key"), opts.get("secret")
    return icechunk.s3_storage(
        bucket=bucket, prefix=prefix.rstrip("/") or None, region=region, endpoint_url=endpoint,
        allow_http=bool(endpoint and endpoint.startswith("http://")),
        access_key_id=key, secret_access_key=secret, anonymous=opts.get("anon") or None,
        from_env=None if key else True, force_path_style=bool(endpoint))


def is_repository(location: str, storage_options: dict[str, Any] | None = None) -> bool:
    """True if an Icechunk repository lives at ``location``."""
    try:
        import icechunk
    except ImportError:
        return False
    if not location.startswith("s3://"):
        return False
    st = storage(location, storage_options)
    return bool(reach(location, "a reachable bucket", lambda: icechunk.Repository.exists(st)))


def open_repository(location: str, storage_options: dict[str, Any] | None = None,
                    create: bool = False) -> Any:
    import icechunk

    st = storage(location, storage_options)
    what = "a versioned NeuroFusion store (an Icechunk repository, made by nf push)"
    if reach(location, what, lambda: icechunk.Repository.exists(st)):
        return reach(location, what, lambda: icechunk.Repository.open(st))
    if not create:
        raise StoreError(f"{location}: expected {what}; found none")
    return reach(location, "a bucket where a repository can be created",
                 lambda: icechunk.Repository.create(st))


def read_session(location: str, storage_options: dict[str, Any] | None = None,
                 version: str | None = None) -> tuple[Any, str]:
    """(read-only zarr store, snapshot id) of ``main`` or of snapshot ``version``."""
    repo = open_repository(location, storage_options)
    try:
        session = (repo.readonly_session(snapshot_id=version) if version
                   else repo.readonly_session("main"))
    except Exception as err:  # icechunk's own error for an unknown snapshot
        raise StoreError(f"{location}: no snapshot {version!r} ({str(err).splitlines()[0]}); "
                         f"`nf log {location}` lists them") from None
    return session.store, session.snapshot_id


@dataclass
class PushSummary:
    url: str
    snapshot: str
    keys: int
    deleted: int
    bytes: int
    seconds: float
    repaired: int = 0  # chunks the repository had lost, written again from the local store

    def line(self) -> str:
        if not (self.keys or self.deleted):
            return f"nothing changed: {self.url} stays at snapshot {self.snapshot}"
        mb = self.bytes / 2**20
        fixed = f"; {self.repaired} lost chunks repaired" if self.repaired else ""
        return (f"pushed {self.keys} objects ({mb:.1f} MiB; {self.deleted} removed{fixed}) to "
                f"{self.url} as snapshot {self.snapshot} in {self.seconds:.1f} s "
                f"({mb / max(self.seconds, 1e-9):.1f} MiB/s)")


def push(local: str | Path, url: str, storage_options: dict[str, Any] | None = None,
         message: str = "nf push", on_key: Callable[[int], None] | None = None,
         progress: bool = False, expect: str | None = None) -> PushSummary:
    """Publish the local store as the next snapshot of the repository at ``url``.

    Every object of the store (metadata documents first, then chunks; writes in progress are
    left out) is copied into a writable session, objects the local store no longer has are
    deleted, and the session commits: one atomic move of ``main``. Where the folder is a
    working copy of ``url`` (:func:`publishing`) still at the snapshot ``main`` points to,
    only the objects changed since are copied. ``expect``: the snapshot ``main`` must still
    point to (a working copy's base); if another writer published since, nothing is written
    and the error says so (icechunk's own conflict check covers a publication that lands
    during the copy). Before the commit the session is checked against the store schema and
    every chunk is read: chunks the repository lost (objects deleted or damaged under it) are
    written again from the local store (a repair), and a session that still does not
    validate is not committed.
    """
    import zarr.storage

    import nfstore
    from nfstore.transaction import transaction

    t0 = time.perf_counter()
    if _remote.is_url(os.fspath(local)):
        raise OptionError(f"local: expected a local store folder; found the URL {local!r} "
                          f"(copy it locally first)")
    path = Path(os.fspath(local).removeprefix("file://"))
    nfstore.open_store(path)  # a one-line error if it is not a store
    # the store's lock: no writer changes it while it is copied
    with transaction(path, f"nf push {url}", check=False):
        repo = open_repository(url, storage_options, create=True)
        session = repo.writable_session("main")
        if expect is not None and session.snapshot_id != expect:
            raise StoreError(f"{url}: another writer published snapshot {session.snapshot_id} "
                             f"after this working copy was taken from {expect}; nothing was "
                             f"published: rerun the command to start from the new version")
        sync = _read_sync(path, url)
        stats = _stats(path)  # the writing lock holds: still true after the copy
        same = (frozenset(k for k, st in stats.items() if sync["objects"].get(k) == st)
                if sync and sync["snapshot"] == session.snapshot_id else frozenset())
        src = zarr.storage.LocalStore(str(path), read_only=True)
        copied, deleted, size = asyncio.run(copy(src, session.store, on_key, progress, same))
        repaired, size_fixed = _check_session(url, storage_options, session, src)
        if not session.has_uncommitted_changes:  # the same content: no new snapshot
            _write_sync(path, url, session.snapshot_id, stats)
            return PushSummary(url, session.snapshot_id, 0, 0, 0, time.perf_counter() - t0)
        try:
            snapshot = session.commit(message, metadata={
                "nf_version": nfstore.__version__, "source": str(path.resolve()),
                "objects": copied + repaired, "bytes": size + size_fixed})
        except Exception as err:  # icechunk's conflict: main moved meanwhile
            raise StoreError(f"{url}: the commit was refused ({str(err).splitlines()[0]}); "
                             f"another writer published since: rerun to start from its "
                             f"version") from None
        _write_sync(path, url, snapshot, stats)
    return PushSummary(url, snapshot, copied + repaired, deleted, size + size_fixed,
                       time.perf_counter() - t0, repaired)


def _check_session(url: str, storage_options: dict[str, Any] | None, session: Any, src: Any
                   ) -> tuple[int, int]:
    """Validate what ``session`` would commit; write again from ``src`` (the local store) the
    chunks the repository lost. Returns (chunks repaired, their bytes); a session that still
    does not validate is a :class:`StoreError` (nothing is committed)."""
    import nfstore
    from nfstore.schema import validate_store

    def problems(damaged: dict[str, str]) -> list[str]:
        store = nfstore.Store(url, storage_options=storage_options, check=False,
                              zarr_store=session.store)
        return validate_store(store, damaged)

    damaged: dict[str, str] = {}
    found = problems(damaged)
    fixed, size = 0, 0
    if damaged:
        keys = [k for k in sorted(damaged) if asyncio.run(src.exists(k))]
        fixed, _, size = asyncio.run(transfer(src, session.store, keys, [], None, False,
                                               "repair"))
        found = problems({})
    if found:
        more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
        raise StoreError(f"{url}: expected a snapshot that validates; found {found[0]}{more}; "
                         f"nothing was published (a lost chunk is written again by pushing a "
                         f"local store that holds it, or `nf rollback {url}` to an earlier "
                         f"snapshot)")
    return fixed, size


SYNC_FILE = ".nf-sync.json"  # in a working copy: the snapshot it holds, its objects' stats


def _stats(path: Path) -> dict[str, list[int]]:
    out = {}
    for f in path.rglob("*"):
        key = f.relative_to(path).as_posix()
        if f.is_file() and published(key):
            st = f.stat()
            out[key] = [st.st_size, st.st_mtime_ns]
    return out


def _sync_file(path: Path) -> Path:  # beside the store folder, never inside it
    return path.parent / f".{path.name}{SYNC_FILE}"


def _read_sync(path: Path, url: str) -> dict[str, Any] | None:
    from nfstore import _layout

    state = _layout.read_json(_sync_file(path))
    return state if state and state.get("url") == url else None


def _write_sync(path: Path, url: str, snapshot: str,
                stats: dict[str, list[int]] | None = None) -> None:
    from nfstore import _layout

    _layout.write_json_atomic(_sync_file(path), {"url": url, "snapshot": snapshot,
                                                 "objects": stats or _stats(path)})


def working_copy(url: str) -> Path:
    """The local folder that holds ``url``'s working copy: ``$NF_WORKDIR/<hash>``, by default
    under ``~/.cache/neurofusion``."""
    import hashlib

    base = Path(os.environ.get("NF_WORKDIR") or Path.home() / ".cache" / "neurofusion")
    return base / hashlib.sha256(url.encode()).hexdigest()[:16] / "nf.zarr"


@dataclass
class PullSummary:
    url: str
    snapshot: str
    keys: int
    deleted: int
    whole: bool
    seconds: float

    def line(self) -> str:
        how = "copied whole" if self.whole else "changes only"
        return (f"pulled {self.keys} objects ({self.deleted} removed; {how}) from {self.url} at "
                f"snapshot {self.snapshot} in {self.seconds:.1f} s")


def pull(url: str, storage_options: dict[str, Any] | None = None, progress: bool = False
         ) -> PullSummary:
    """Bring ``url``'s working copy (:func:`working_copy`) to the snapshot ``main`` points to.

    Where the copy was last synced at an ancestor of that snapshot, only what changed is
    fetched: the nodes and chunks Icechunk's diff names, plus every object the working copy
    changed since its sync (a run that committed and never published). Otherwise (first pull,
    ``main`` rolled back, history expired) it is copied whole. Writes in progress
    (``_staging/``, ``*.partial``) are left as they are either way.
    """
    import zarr.storage

    t0 = time.perf_counter()
    work = working_copy(url)
    work.mkdir(parents=True, exist_ok=True)
    repo = open_repository(url, storage_options, create=True)
    head = repo.lookup_branch("main")
    sync = _read_sync(work, url)
    if sync is not None and sync["snapshot"] == head:
        return PullSummary(url, head, 0, 0, False, time.perf_counter() - t0)
    # head, even if main moves on; a chunk the repository lost is a one-line error
    src = _remote.checked(repo.readonly_session(snapshot_id=head).store, url, False)
    dst = zarr.storage.LocalStore(str(work))
    plan = _changes(repo, src, sync, head, work) if sync is not None else None
    try:
        if plan is None:
            copied, deleted, _ = asyncio.run(copy(src, dst, None, progress, label="pull"))
        else:
            copied, deleted, _ = asyncio.run(transfer(src, dst, *plan, None, progress,
                                                       "pull", absent_is_deleted=True))
    except ChunkError as err:
        raise StoreError(f"{str(err).split('; `nf validate')[0].rstrip('.')}; snapshot {head} "
                         f"lost it, so "
                         f"no working copy can be made; repair with `nf push LOCAL {url}` from "
                         f"a local store that holds it, or `nf rollback {url}` to an earlier "
                         f"snapshot") from None
    _write_sync(work, url, head)
    return PullSummary(url, head, copied, deleted, plan is None, time.perf_counter() - t0)


def _changes(repo: Any, src: Any, sync: dict[str, Any], head: str, work: Path
             ) -> tuple[list[str], list[str]] | None:
    """(keys to fetch from ``head``, whose store is ``src``; local keys to delete) that take a
    working copy synced at ``sync["snapshot"]`` to ``head``; None where ``head`` does not
    descend from it."""
    import zarr

    old = sync["snapshot"]
    if old not in {s.id for s in repo.ancestry(snapshot_id=head)}:
        return None
    diff = repo.diff(from_snapshot_id=old, to_snapshot_id=head)

    def key(node: str, rest: str) -> str:
        return f"{node.strip('/')}/{rest}".lstrip("/")

    fetch = {key(n, "zarr.json") for n in (diff.new_groups | diff.new_arrays
                                            | diff.updated_groups | diff.updated_arrays)}
    for node, coords in diff.updated_chunks.items():
        encoding = zarr.open_array(src, path=node.strip("/"),
                                   mode="r").metadata.chunk_key_encoding
        fetch.update(key(node, encoding.encode_chunk_key(tuple(c))) for c in coords)
    now = _stats(work)
    fetch.update(k for k, st in now.items() if sync["objects"].get(k) != st)  # changed here
    fetch.update(k for k in sync["objects"] if k not in now)  # (a missing one is deleted)
    dropped = [key(n, "") for n in diff.deleted_groups | diff.deleted_arrays]
    gone = [k for k in now if k not in fetch and any(k.startswith(d) for d in dropped)]
    return sorted(fetch), gone


def refuse_plain(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """A one-line error where ``url`` holds a plain (unversioned) copy of a store."""
    if not is_repository(url, storage_options):
        fs, root = _remote.filesystem(url, storage_options)
        if fs.exists(f"{root}/zarr.json"):
            raise OptionError(f"{url}: holds a plain copy of a store, which is read-only here; "
                              f"writes go to a versioned store: `nf push LOCAL URL` to a new "
                              f"prefix makes one")


@contextmanager
def publishing(url: str, storage_options: dict[str, Any] | None = None,
               message: str = "nf", progress: bool = False) -> Iterator[Path]:
    """Write to a versioned store: yields a local working copy of ``url``'s current snapshot
    (:func:`pull`: only what changed since its last sync where it can), and pushes it as the
    next snapshot (changed objects only) when the block ends without an error.

    A writer killed inside the block publishes nothing: readers of ``url`` keep the previous
    snapshot, and the working copy keeps the writer's staged progress, so rerunning the same
    command resumes it there and then publishes.
    """
    refuse_plain(url, storage_options)
    work = working_copy(url)
    head = pull(url, storage_options, progress).snapshot
    yield work
    from nfstore._layout import is_store

    if is_store(work):
        push(work, url, storage_options, message=message, progress=progress, expect=head)


def log(url: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The snapshots of ``main``, newest first: id, time, message, metadata."""
    from nfstore.branches import COMMAND, STEP, published

    repo = open_repository(url, storage_options)
    return [{"snapshot": s.id, "written": s.written_at.isoformat(timespec="seconds"),
             "message": (s.metadata or {}).get(COMMAND, s.message) if (
                 s.metadata or {}).get(STEP) else s.message,
             "metadata": dict(s.metadata or {})}
            for s in published(list(repo.ancestry(branch="main")))]


def rollback(url: str, snapshot: str, storage_options: dict[str, Any] | None = None) -> None:
    """Move ``main`` back to ``snapshot`` (later snapshots stay listed nowhere but can be
    found by id until the repository is garbage-collected)."""
    repo = open_repository(url, storage_options)
    known = [s["snapshot"] for s in log(url, storage_options)]
    if snapshot not in known:
        raise OptionError(f"snapshot: {snapshot!r} is not in the history of {url}; "
                          f"`nf log {url}` lists {len(known)}")
    repo.reset_branch("main", snapshot)


__all__ = ["push", "pull", "log", "rollback", "is_repository", "PushSummary",
           "PullSummary"]
