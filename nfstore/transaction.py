"""The store's one write path: a transaction owns the lock, staging, resume points, the schema
check and the commit.

>>> store = nfstore.open_store("nf.zarr", mode="a")
>>> with store.transaction("nf predict") as tx:
...     staged, state, resumed = tx.stage("decoded/ridge/nsd/subj01", identity={"seed": 0})
...     ...                                   # write a zarr group at ``staged``
...     tx.commit("decoded/ridge/nsd/subj01")  # atomic: readers see the old or the new group

Every write goes to ``_staging/<key>`` first (one spelling: the final key, quoted, see
:func:`staged_name`), invisible to queries, with a small progress file beside it. The commit
renames it into place; the previous version is deleted only after the new one is there. A
writer killed half-way leaves its staged group and progress file; the next transaction that
stages the same key with the same ``identity`` resumes it, any other identity starts again.

On a local folder the commit is the atomic rename. On a versioned store URL (``nf push``
made it, or the first transaction on a new URL) the transaction writes through an Icechunk
work branch with no local copy of the store (:mod:`nfstore.direct`): every resume point
(:meth:`Transaction.save`, :meth:`Transaction.commit`) commits the branch, and ``main``
moves to the result in one step when the block ends without an error; readers see the
previous snapshot until then.

Transactions nest: a library function that opens one inside another transaction on the same
store joins it, so functions compose without a second lock.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import zarr

from nfstore import _layout
from nfstore.errors import SchemaError
from nfstore.names import STAGING_GROUP

_ACTIVE: contextvars.ContextVar[dict[str, Transaction] | None] = contextvars.ContextVar(
    "nf_transactions", default=None)


def staged_name(key: str) -> str:
    """The one name a key is staged under, inside ``_staging``: the key with ``/`` quoted
    (``decoded/rr/nsd/subj01`` -> ``decoded%2Frr%2Fnsd%2Fsubj01``), so staged groups never
    nest inside each other."""
    return quote(key.strip("/"), safe="")


def key_of_staged(name: str) -> str:
    """Inverse of :func:`staged_name`."""
    return unquote(name)


class Transaction:
    """A write in progress on one store (see the module docstring). Not made directly: use
    :func:`transaction` or :meth:`nfstore.Store.transaction`.

    Attributes
    ----------
    root : Path
        The local folder written: the store itself, or on a versioned URL the sparse scratch
        folder of the command's work branch (:mod:`nfstore.direct`).
    location : str
        The store as the caller named it (path or URL).
    command : str
        What writes (``"nf predict"``); recorded in the lock file and the snapshot message.
    committed : list of str
        Keys committed so far.
    """

    def __init__(self, root: Path, location: str, command: str) -> None:
        self.root = root
        self.location = location
        self.command = command
        self.committed: list[str] = []
        self.remote: Any = None  # nfstore.direct.RemoteWork of a URL

    @property
    def continues(self) -> bool:
        """On a URL: this transaction continues an earlier run of the same command that was
        killed (its work branch, or its move of ``main``), so what that run completed is
        already in the store this transaction sees."""
        return bool(self.remote is not None and self.remote.continues)

    def __repr__(self) -> str:
        return f"<nfstore.Transaction {self.command!r} on {self.location!r}>"

    # ------------------------------------------------------------------ staging

    def staged(self, key: str) -> Path:
        """Where ``key`` is staged (``<root>/_staging/<staged_name(key)>``)."""
        return self.root / STAGING_GROUP / staged_name(key)

    def progress_file(self, key: str) -> Path:
        return self.staged(key).with_suffix(".json")

    def stage(self, key: str, identity: dict[str, Any] | None = None,
              create: bool = True) -> tuple[Path, dict[str, Any], bool]:
        """Begin (or resume) staging ``key``: the one resume protocol.

        Parameters
        ----------
        key : the key the staged group will be committed to (``nsd/subj01``)
        identity : JSON-able dict of everything the staged content depends on (input
            fingerprints, options, weights' sha256). A staged group left by an earlier run
            resumes only if its recorded identity is equal; otherwise it is discarded.
        create : create an empty zarr group at the staged path when starting afresh

        Returns
        -------
        (staged path, progress state, resumed). The state holds ``"identity"`` and whatever
        the writer saved with :meth:`save`; a fresh start has only ``"identity"``.
        """
        staged = self.staged(key)
        self._own(staged)
        state = _layout.read_json(self.progress_file(key))
        ident = identity or {}
        if state is not None and state.get("identity") == ident and staged.is_dir():
            return staged, state, True
        self.discard(key)
        staged.parent.mkdir(parents=True, exist_ok=True)
        if create:
            zarr.open_group(str(staged), mode="w", zarr_format=3)
        state = {"identity": ident}
        self.save(key, state)
        return staged, state, False

    def save(self, key: str, state: dict[str, Any]) -> None:
        """Record the progress of ``key`` (atomically): the resume point of a later run (on a
        URL: what changed is uploaded and the work branch commits)."""
        _layout.write_json_atomic(self.progress_file(key), state)
        if self.remote is not None:
            self.remote.checkpoint(f"{self.command}: {key}")

    def state(self, key: str) -> dict[str, Any] | None:
        """The saved progress of ``key``, or None."""
        return _layout.read_json(self.progress_file(key))

    def discard(self, key: str) -> None:
        """Remove the staged group of ``key`` and its progress file."""
        self._own(self.staged(key))
        _layout.discard(self.staged(key))

    # ------------------------------------------------------------------ committing

    def commit(self, key: str) -> None:
        """Move the staged group of ``key`` into place, replacing any previous version
        atomically (parents created, chunk counts recorded, progress file removed)."""
        self._own(self.staged(key), self.root / key)
        if self.remote is not None:
            self.remote.moving(self.staged(key).relative_to(self.root).as_posix(), key)
        _layout.commit(self.root, self.staged(key), key)
        self.progress_file(key).unlink(missing_ok=True)
        self.committed.append(key)
        if self.remote is not None:
            self.remote.checkpoint(f"{self.command}: {key}")

    def replace(self, key: str, new: Path) -> None:
        """Put the file or folder ``new`` at ``key`` atomically (the old version is removed
        only once the new one is in place): for things that are not zarr groups."""
        target = self.root / key
        self._own(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        _layout.swap_into_place(new, target, target.with_name(
            f".{target.name}.old-{os.getpid()}"))
        self.committed.append(key)

    def require_group(self, path: str) -> zarr.Group:
        """The group ``path`` of the store, created with its parents if missing, writable
        in place (for appends that are their own resume points, such as an embedding cache
        growing row by row)."""
        if self.remote is not None:
            self.remote.materialize(path)
        _layout.ensure_group(self.root, path)
        return zarr.open_group(str(self.root / path), mode="r+")

    def path(self, key: str) -> Path:
        """The local path of ``key`` in the store being written (on a URL, its whole content
        is brought into the scratch folder first)."""
        if self.remote is not None:
            self.remote.materialize(key)
        return self.root / key

    def _own(self, *paths: Path) -> None:
        """On a URL: the scratch folder holds these keys whole from now on."""
        if self.remote is not None:
            for p in paths:
                self.remote.own(p.relative_to(self.root).as_posix())


@contextmanager
def transaction(location: str | os.PathLike[str], command: str, *,
                storage_options: dict[str, Any] | None = None, create: bool = False,
                check: bool = True, progress: bool = False) -> Iterator[Transaction]:
    """Open a write transaction on the store at ``location`` (see the module docstring).

    Parameters
    ----------
    location : local folder, or the URL of a versioned store (``s3://...``, made by ``nf push``)
    command : what writes, e.g. ``"nf predict"`` (lock holder, snapshot message)
    storage_options : fsspec options of a URL (``endpoint_url``, ``key``, ...)
    create : create a new local store when ``location`` does not exist yet
    check : validate the store's metadata against the schema after the last commit
    progress : show progress bars (a versioned store's transfers)

    Raises
    ------
    StoreError
        Another writer holds the store, or the folder is not writable.
    SchemaError
        ``location`` is not a store (and ``create`` is False), or a commit broke the schema.
    """
    from nfstore import _remote

    text = os.fspath(location)
    url = _remote.is_url(text)
    root = Path(text.removeprefix("file://")) if not url else None
    active = _ACTIVE.get() or {}
    joined = active.get(str(root.resolve())) if root is not None else active.get(text)
    if joined is not None:
        yield joined
        return
    if url:
        with _remote_transaction(text, command, storage_options, check, progress) as tx:
            yield tx
        return
    assert root is not None
    with _locked(root, text, command, create=create, check=check) as tx:
        yield tx


@contextmanager
def _remote_transaction(url: str, command: str, storage_options: dict[str, Any] | None,
                        check: bool, progress: bool) -> Iterator[Transaction]:
    """A transaction on a versioned store URL: a work branch, no local copy of the store
    (:mod:`nfstore.direct`). The URL's local folder is locked first, so a second writer on
    this machine is refused before it touches the repository."""
    from nfstore import direct, versioned

    lock = direct.workdir(url)
    lock.mkdir(parents=True, exist_ok=True)
    with _layout.writing(lock, command):
        versioned.refuse_plain(url, storage_options)
        work = direct.RemoteWork(url, storage_options, command, progress)
        try:
            with _locked(work.root, url, command, create=True, check=check, key=url,
                         remote=work) as tx:
                yield tx
        except Exception:
            try:  # what was written since the last resume point is kept for a rerun
                work.checkpoint()
            except Exception:  # noqa: BLE001 (the first error is the one to report)
                pass
            raise
        work.finish()


@contextmanager
def _locked(root: Path, location: str, command: str, *, create: bool, check: bool,
            key: str | None = None, remote: Any = None) -> Iterator[Transaction]:
    """Hold ``root``'s write lock for one transaction (registered under the folder, and
    under ``key`` (a URL) if given, so nested calls on either join it)."""
    if create:
        _layout.ensure_store(root)  # new, or the one-line error for a file or another folder
    elif not _layout.is_store(root):
        found = "another folder" if root.is_dir() else "a file" if root.exists() else "nothing"
        raise SchemaError(f"{location}: expected a NeuroFusion store; found {found} (a new "
                          f"store needs create=True, or open_store(location, mode='a'))")
    tx = Transaction(root, location, command)
    tx.remote = remote
    with _layout.writing(root, command), registered(tx, key):
        yield tx
        if check and tx.committed:
            from nfstore.schema import check_store
            from nfstore.store import Store

            check_store(Store(root, check=False))


@contextmanager
def registered(tx: Transaction, *keys: str | None) -> Iterator[Transaction]:
    """Make ``tx`` the transaction that nested :func:`transaction` calls on its folder (and on
    ``keys``, e.g. its URL) join, for the duration of the block."""
    names = [str(tx.root.resolve()), *(k for k in keys if k)]
    token = _ACTIVE.set({**(_ACTIVE.get() or {}), **{k: tx for k in names}})
    try:
        yield tx
    finally:
        _ACTIVE.reset(token)


def active(root: Path) -> Transaction | None:
    """The transaction this context holds on the folder ``root``, if any."""
    return (_ACTIVE.get() or {}).get(str(Path(root).resolve()))


def overlay_of(root: str | os.PathLike[str]) -> Any:
    """The zarr store to read the folder ``root`` through where it is the scratch folder of
    a transaction on a URL in this context (:mod:`nfstore._overlay`), else None."""
    if not _ACTIVE.get():
        return None
    tx = active(Path(os.fspath(root).removeprefix("file://")))
    return tx.remote.overlay() if tx is not None and tx.remote is not None else None


def replace_path(new: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Put the file or folder ``new`` at ``target`` atomically, outside any store (a
    checkpoint folder, an exported file): the previous ``target`` is set aside first and
    deleted only once ``new`` is in place, so readers see the old or the new version, never
    half of one. Inside a store use :meth:`Transaction.replace`."""
    new, target = Path(new), Path(target)
    _layout.swap_into_place(new, target, target.with_name(
        f".{target.name}.old-{os.getpid()}{target.suffix}"))
