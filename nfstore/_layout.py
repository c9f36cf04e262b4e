"""Where things live inside a store folder, and atomic moves between those places."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zarr

from nfstore._version import __version__
from nfstore.errors import OptionError, SchemaError, StoreError
from nfstore.names import SCHEMA_VERSION, STAGING_GROUP, STIMULI_GROUP, TRASH_GROUP


def local_store_path(store: str | os.PathLike[str]) -> Path:
    """Return ``store`` as a local path; writing needs a local folder (atomic renames)."""
    from nfstore._remote import is_url

    text = os.fspath(store)
    if is_url(text):
        raise OptionError(f"store: writing needs a local folder (atomic renames); got {text!r}."
                          " Write through nfstore.transaction(URL) (what the nf commands "
                          "do with a URL), or write locally and `nf push` it")
    return Path(text.removeprefix("file://"))


LOCK_FILE = ".nf-write.lock"


@contextmanager
def writing(store: Path, command: str) -> Iterator[None]:
    """Hold the store's write lock (``fcntl.flock`` on ``<store>/.nf-write.lock``) and put back
    anything an interrupted swap left aside, before the caller writes. Used only by
    :func:`nfstore.transaction.transaction` (which joins nested calls itself).

    A second writer gets a one-line :class:`StoreError` naming the holder's process id. The
    lock is released by the kernel if the holder dies; the file is removed on release.
    """
    import fcntl

    path = store / LOCK_FILE
    while True:
        fd = _open_lock(store, path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(f"{store}: another writer holds the store ({holder}); wait for "
                             f"it to finish") from None
        try:  # the file may have been removed by a holder releasing it meanwhile: retry
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}, {command}".encode(), 0)
        recover(store)
        yield
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _open_lock(store: Path, path: Path) -> int:
    """The lock file's descriptor; a store that cannot be written is a one-line error."""
    import errno

    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        why = {errno.EROFS: "a read-only file system", errno.EACCES: "no write permission",
               errno.EPERM: "no write permission"}.get(err.errno)
        if why is None:
            raise StoreError(f"{store}: expected a writable store folder; found "
                             f"{err.strerror or err} ({path})") from None
        raise StoreError(f"{store}: expected a writable store folder; found it read-only "
                         f"({why}): write to a copy, or publish with `nf push`") from None


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def is_store(path: Path) -> bool:
    meta = read_json(path / "zarr.json")
    return bool(meta) and "nf_schema_version" in (meta or {}).get("attributes", {})


def ensure_store(path: Path) -> bool:
    """Create the root group of a new store; check an existing one. Returns True if created."""
    if path.exists():
        if not path.is_dir() or not any(path.iterdir()):
            if path.is_dir():
                _create_root(path)
                return True
            raise SchemaError(f"{path}: expected a NeuroFusion store folder; found a file")
        if not is_store(path):
            raise SchemaError(f"{path}: expected a NeuroFusion store (zarr.json with "
                              f"nf_schema_version); found another folder")
        return False
    _create_root(path)
    return True


def _create_root(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"{path}: expected a folder that can be created for a new store; "
                         f"found {err.strerror or err}") from None
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs.update({"nf_schema_version": SCHEMA_VERSION, "nf_version": __version__,
                       "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    for name, purpose in ((STAGING_GROUP, "ingests in progress; invisible to queries"),
                          (STIMULI_GROUP, "stimulus tables, one group per dataset")):
        root.create_group(name).attrs["purpose"] = purpose


def ensure_group(store: Path, path: str) -> None:
    """Create the (empty) group ``path`` and its parents if missing."""
    root = zarr.open_group(str(store), mode="r+")
    root.require_group(path)


def discard(staged: Path) -> None:
    """Remove a staged group and its progress file."""
    shutil.rmtree(staged, ignore_errors=True)
    staged.with_suffix(".json").unlink(missing_ok=True)


def staging_path(store: Path, key: str) -> Path:
    return store / STAGING_GROUP / key


def swap_into_place(new: Path, target: Path, old: Path) -> None:
    """Put ``new`` (file or folder) at ``target``: the previous ``target`` is renamed to ``old``
    first and deleted only once ``new`` is in place, so readers see the old or the new version,
    never half of one."""
    if target.exists():
        old.parent.mkdir(parents=True, exist_ok=True)
        os.rename(target, old)
    os.rename(new, target)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists():
        old.unlink()


def commit(store: Path, staged: Path, key: str) -> None:
    """Move ``staged`` to ``store/key``, replacing any previous version atomically.

    The previous version is first renamed into ``_trash`` and deleted only after the new one is
    in place; :func:`recover` restores it if the process died between the two renames.
    """
    ensure_group(store, os.path.dirname(key))
    mark_dense(staged)
    swap_into_place(staged, store / key,
                    store / TRASH_GROUP / f"{key}@{os.getpid()}-{time.time_ns()}")
    prune_empty(store / TRASH_GROUP)


def mark_dense(group: Path) -> None:
    """Record ``nf_chunks_written`` (the chunk count) on every array of the local group whose
    chunks are all written, so readers raise on a chunk lost later instead of reading fill
    values (:func:`nfstore._remote.checked`)."""
    from nfstore._remote import DENSE_ATTR

    def walk(g: zarr.Group) -> None:
        for _, arr in g.arrays():
            n = int(arr.nchunks)
            if n and DENSE_ATTR not in arr.attrs and arr.nchunks_initialized == n:
                arr.attrs[DENSE_ATTR] = n
        for _, sub in g.groups():
            walk(sub)

    if (group / "zarr.json").is_file():
        walk(zarr.open_group(str(group), mode="r+"))


def prune_empty(folder: Path) -> None:
    """Remove the empty folders under ``folder`` and ``folder`` itself if it ends up empty
    (what replaced versions leave in ``_trash``)."""
    if not folder.is_dir():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()),
                      key=lambda p: -len(p.parts)):
        try:
            sub.rmdir()
        except OSError:  # not empty
            pass
    try:
        folder.rmdir()
    except OSError:
        pass


def recover(store: Path) -> None:
    """Put back any previous version left in ``_trash`` by a commit that died half-way."""
    trash = store / TRASH_GROUP
    if not trash.is_dir():
        return
    for old in sorted(trash.rglob("*@*")):
        key = old.relative_to(trash).as_posix().split("@")[0]
        target = store / key
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, target)
    shutil.rmtree(trash, ignore_errors=True)


EMBEDDINGS = "embeddings"  # the group of embedding caches


def staged_kind(name: str, store: str) -> tuple[str, str, str]:
    """What a name under ``_staging`` will become: (its key in the store, what it is, the
    command that resumes it).

    Parameters
    ----------
    name : path relative to ``_staging``: the one spelling of
        :func:`nfstore.transaction.staged_name` (``decoded%2Frr%2Fnsd%2Fsubj01``), or a name
        staged by an earlier version (``nsd/subj01``, ``reconstructions.rr.nsd.subj01``)
    store : the store's location, for the command
    """
    from nfstore.transaction import key_of_staged

    key = key_of_staged(name) if "%2F" in name.upper() else _legacy_key(name)
    return (key, *kind_of_key(key, store))


def _legacy_key(name: str) -> str:
    """The key a name staged by an earlier version (dots or ``. -`` for ``/``) commits to."""
    from nfstore.names import DECODED_GROUP, RECON_GROUP

    head, _, rest = name.partition(".")
    if name.startswith(f"{RECON_GROUP}. -"):
        return name.replace(". -", "/")
    parts = rest.split(".")
    if head in (RECON_GROUP, DECODED_GROUP) and len(parts) >= 3:
        return "/".join((head, ".".join(parts[:-2]), *parts[-2:]))
    if head == EMBEDDINGS and rest:
        return f"{EMBEDDINGS}/{rest}"
    subject, _, synthetic = name.partition(".synthetic.")
    if synthetic:
        return f"{subject}/synthetic/{synthetic}"
    return name


def kind_of_key(key: str, store: str) -> tuple[str, str]:
    """(what a write of ``key`` is, the command that resumes it), from the key's prefix."""
    from nfstore.names import DECODED_GROUP, RECON_GROUP, dataset_names

    parts = key.split("/")
    if parts[0] == RECON_GROUP and len(parts) >= 5 and parts[-1] == "metrics":
        return "metrics of a reconstruction set", f"nf metrics {store} ..."
    if parts[0] == RECON_GROUP and len(parts) >= 4:
        setname = "/".join(parts[1:-2])
        return (f"reconstruction set {setname!r}",
                f"nf reconstruct {store} ... --name {setname} (or the nf decode-ridge that "
                f"writes its blurry images)")
    if parts[0] == DECODED_GROUP and len(parts) >= 4:
        setname = "/".join(parts[1:-2])
        return (f"decoded set {setname!r}",
                f"nf predict, nf decode-ridge or nf refine {store} ... --name {setname}")
    if parts[0] == EMBEDDINGS and len(parts) >= 2:
        model = "/".join(parts[1:])
        return f"embedding cache {model!r}", f"nf embed {store} ..."
    if parts[0] == STIMULI_GROUP and len(parts) >= 2:
        return (f"stimulus table {'/'.join(parts[1:])!r}",
                "the nf ingest or nf embed --pool that writes it")
    if parts[0] in dataset_names() and len(parts) == 4 and parts[2] == "synthetic":
        subject = "/".join(parts[:2])
        return (f"synthetic set {parts[3]!r}",
                f"nf augment {store} {subject} ... --name {parts[3]}")
    if parts[0] in dataset_names() and len(parts) == 2:
        return "ingest", f"nf ingest {parts[0]} RAW_ROOT --store {store}"
    return "write", "the nf command that wrote it"
