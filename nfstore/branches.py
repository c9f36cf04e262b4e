"""Work branches of a versioned store: one per write command (:mod:`nfstore.direct`), moved
into ``main`` in one step when the command succeeds.

A branch is named ``nf--<command>--<UTC time>-<random>`` (Icechunk refs have no ``/``). Its
commits are resume points (metadata ``nf_step``) and, once the command has succeeded, one
last commit marked ``nf_done``: the result that ``main`` moves to. Moving ``main`` is a
fast-forward (``reset_branch`` conditional on ``main`` still at the branch's base) when no
other writer published since; otherwise the branch's changes are applied on top of the new
``main`` and committed with Icechunk's conflict detection, and changes that overlap another
writer's are refused with a one-line error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
from dataclasses import dataclass
from typing import Any

from nfstore.errors import StoreError

PREFIX = "nf--"
DONE_SUFFIX = "--done"
STEP, BASE, COMMAND = "nf_step", "nf_base", "nf_command"


def slug(command: str) -> str:
    """``nf ingest nsd`` -> ``ingest-nsd``: the command part of a branch name."""
    text = command.removeprefix("nf ").lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:80] or "write"


def identity(repo: Any) -> str:
    """The repository's identity: its first snapshot after the initial one (a store re-made
    at the same URL has another), or ``new``."""
    ids = [s.id for s in repo.ancestry(branch="main")]
    return ids[-2] if len(ids) >= 2 else "new"


def work_branches(repo: Any) -> list[str]:
    """Work branches, oldest first (their done markers left out)."""
    return sorted(b for b in repo.list_branches()
                  if b.startswith(PREFIX) and not b.endswith(DONE_SUFFIX))


def find(repo: Any, command: str) -> str | None:
    """The newest work branch of ``command``, or None."""
    mine = [b for b in work_branches(repo) if b.startswith(f"{PREFIX}{slug(command)}--")]
    return mine[-1] if mine else None


def create(repo: Any, command: str) -> tuple[str, str]:
    """A new work branch for ``command`` at ``main``'s snapshot: (name, base snapshot)."""
    base = repo.lookup_branch("main")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    name = f"{PREFIX}{slug(command)}--{stamp}-{secrets.token_hex(3)}"
    repo.create_branch(name, base)
    return name, base


def published(history: list[Any]) -> list[Any]:
    """The snapshots of ``main``'s ancestry (newest first) that ``main`` pointed to: a work
    branch's resume points are left out, except its last one where it was the result."""
    out = []
    for i, snap in enumerate(history):
        meta = dict(snap.metadata or {})
        newer = dict(history[i - 1].metadata or {}) if i else {}
        if meta.get(STEP) and i and newer.get(BASE) == meta.get(BASE) and newer.get(
                COMMAND) == meta.get(COMMAND):
            continue
        out.append(snap)
    return out


def _meta(repo: Any, snapshot: str) -> dict[str, Any]:
    return dict(repo.lookup_snapshot(snapshot).metadata or {})


def base_of(repo: Any, branch: str) -> str:
    """The snapshot of ``main`` the work branch was made from."""
    tip = repo.lookup_branch(branch)
    return str(_meta(repo, tip).get(BASE) or tip)


def done(repo: Any, branch: str) -> bool:
    """Whether the branch's command finished (only the move of ``main`` was left)."""
    return branch + DONE_SUFFIX in repo.list_branches()


def commit_work(session: Any, url: str, message: str, metadata: dict[str, Any],
                step: bool = True) -> str | None:
    """Commit a work branch's session (None where it holds no change after all); another
    process that committed to the same branch meanwhile is a one-line error."""
    try:
        return str(session.commit(message, metadata={**metadata, STEP: step}))
    except Exception as err:
        if "no changes made" in str(err):
            return None
        raise StoreError(f"{url}: expected to be the only writer of work branch "
                         f"{session.branch}; found another commit on it "
                         f"({str(err).splitlines()[0].strip()}): the same command runs "
                         f"elsewhere") from None


def mark_done(repo: Any, branch: str) -> None:
    """Record that the branch's command finished: a branch ``<branch>--done`` at its tip
    (one atomic ref write), so a run killed while ``main`` moves is finished by the next."""
    repo.create_branch(branch + DONE_SUFFIX, repo.lookup_branch(branch))


def move_main(repo: Any, url: str, branch: str) -> str:
    """Make ``main`` hold the finished branch's result, then delete the branch; returns the
    snapshot ``main`` points to. A fast-forward where ``main`` has not moved since the
    branch's base; otherwise the branch's changes applied on the new ``main`` (refused where
    they overlap another writer's)."""
    tip = repo.lookup_branch(branch)
    base = base_of(repo, branch)
    head = repo.lookup_branch("main")
    if not done(repo, branch):
        mark_done(repo, branch)
    if head == base:
        try:
            repo.reset_branch("main", tip, from_snapshot_id=base)
            head = tip
        except Exception:  # main moved between the lookup and the reset
            head = repo.lookup_branch("main")
    if head != tip and not _landed(repo, branch, tip, base):
        head = _apply(repo, url, branch, base, tip, head)
    repo.delete_branch(branch)
    repo.delete_branch(branch + DONE_SUFFIX)
    return str(head)


def _landed(repo: Any, branch: str, tip: str, base: str) -> bool:
    """Whether ``main`` already holds the branch's result (moved to ``tip``, or the branch
    applied on top of another writer's snapshot) since ``base``: a run killed after that."""
    for snap in repo.ancestry(branch="main"):
        if snap.id in (tip, base):
            return snap.id == tip
        if (snap.metadata or {}).get("merged_from") == branch:
            return True
    return False


def _nodes(diff: Any) -> dict[str, str]:
    """Node path -> what changed (``meta``, ``chunks``, ``deleted``) in an Icechunk diff."""
    out = {p.strip("/"): "meta" for p in (diff.new_groups | diff.new_arrays
                                         | diff.updated_groups | diff.updated_arrays)}
    out.update({p.strip("/"): "chunks" for p in diff.updated_chunks if p.strip("/") not in out})
    out.update({p.strip("/"): "deleted" for p in diff.deleted_groups | diff.deleted_arrays})
    return out


async def _bytes(store: Any, key: str) -> bytes | None:
    from zarr.core.buffer import default_buffer_prototype

    buf = await store.get(key, default_buffer_prototype())
    return None if buf is None else buf.to_bytes()


def _meta_key(node: str) -> str:
    return f"{node}/zarr.json" if node else "zarr.json"


def _apply(repo: Any, url: str, branch: str, base: str, tip: str, head: str) -> str:
    """Commit onto ``main`` (at ``head``) what the branch changed since ``base``."""
    import icechunk

    from nfstore._transfer import transfer

    mine, theirs = (repo.diff(from_snapshot_id=base, to_snapshot_id=s) for s in (tip, head))
    stores = {s: repo.readonly_session(snapshot_id=s).store for s in (base, tip, head)}
    ours = _nodes(mine)
    same = {n for n, what in ours.items() if what == "meta" and asyncio.run(
        _bytes(stores[tip], _meta_key(n))) == asyncio.run(_bytes(stores[base], _meta_key(n)))}
    ours = {n: w for n, w in ours.items() if n not in same}  # rewritten, unchanged
    other = _nodes(theirs)
    clash = sorted(n for n in ours if n in other or any(
        (o.startswith(n + "/") or n.startswith(o + "/")) and "deleted" in (ours[n], other[o])
        for o in other))
    clash = [n for n in clash if not (n in other and asyncio.run(_bytes(
        stores[tip], _meta_key(n))) == asyncio.run(_bytes(stores[head], _meta_key(n)))
        and ours[n] == other[n] == "meta")]
    if clash:
        repo.delete_branch(branch)
        repo.delete_branch(branch + DONE_SUFFIX)
        raise StoreError(f"{url}: expected changes that do not overlap another writer's; found "
                         f"both changed /{clash[0]} (+{len(clash) - 1} more) since snapshot "
                         f"{base}; nothing was published: rerun the command to redo it on "
                         f"the new version")
    keys, gone = _keys(mine, ours, stores[tip], stores[base])
    session = repo.writable_session("main")
    asyncio.run(transfer(stores[tip], session.store, keys, gone, None, False, "merge",
                         absent_is_deleted=True))
    meta = _meta(repo, tip)
    try:
        return str(session.commit(repo.lookup_snapshot(tip).message, metadata={
            **meta, "merged_from": branch}, rebase_with=icechunk.ConflictDetector()))
    except Exception as err:
        raise StoreError(f"{url}: expected changes that do not overlap another writer's; "
                         f"found a conflict ({str(err).splitlines()[0].strip()}); nothing was "
                         f"published: rerun the command") from None


def _keys(diff: Any, nodes: dict[str, str], tip: Any, base: Any) -> tuple[list[str], list[str]]:
    """(keys to copy from the branch's tip, keys to delete) that apply ``diff``."""
    import zarr

    keys = [_meta_key(n) for n, what in nodes.items() if what == "meta"]
    for node, coords in diff.updated_chunks.items():
        arr = zarr.open_array(tip, path=node.strip("/"), mode="r")
        enc = arr.metadata.chunk_key_encoding
        keys += [f"{node.strip('/')}/{enc.encode_chunk_key(tuple(c))}" for c in coords]

    async def under(prefix: str) -> list[str]:
        return [k async for k in base.list_prefix(prefix)]

    gone = [k for n, what in nodes.items() if what == "deleted"
            for k in asyncio.run(under(n + "/"))]
    return keys, gone


def listing(url: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The work branches of ``url``, oldest first: ``branch``, ``command``, ``base`` (the
    snapshot of ``main`` it was made from), ``tip``, ``written`` (its last resume point),
    ``staged`` (keys in progress), ``done`` (finished; only the move of ``main`` is left)."""
    from nfstore.versioned import open_repository

    repo = open_repository(url, storage_options)
    out = []
    for name in work_branches(repo):
        tip = repo.lookup_branch(name)
        info = repo.lookup_snapshot(tip)
        meta = dict(info.metadata or {})
        staged = sorted({k.split("/")[1] for k in asyncio.run(_all_keys(
            repo.readonly_session(snapshot_id=tip).store))
            if k.startswith("_staging/") and k.count("/") >= 2
            and not k.split("/")[1].endswith(".nf-progress")})
        out.append({"branch": name, "command": meta.get(COMMAND, ""),
                    "base": meta.get(BASE, tip), "tip": tip,
                    "written": info.written_at.isoformat(timespec="seconds"),
                    "staged": [unquote(s) for s in staged], "done": done(repo, name)})
    return out


async def _all_keys(store: Any) -> list[str]:
    return [k async for k in store.list()]


def unquote(name: str) -> str:
    from nfstore.transaction import key_of_staged

    return key_of_staged(name)


@dataclass
class GCSummary:
    url: str
    branches: list[str]
    snapshots: int
    objects: int
    bytes: int

    def line(self) -> str:
        gone = ", ".join(self.branches) or "none"
        return (f"{self.url}: removed abandoned work branches: {gone}; expired "
                f"{self.snapshots} snapshots; deleted {self.objects} objects "
                f"({self.bytes / 2**20:.1f} MiB)")


def gc(url: str, older_than_days: float = 7.0, storage_options: dict[str, Any] | None = None,
       dry_run: bool = False) -> GCSummary:
    """Reclaim what abandoned writes left: delete work branches whose last resume point is
    older than ``older_than_days`` (a command killed and never rerun), expire the snapshots
    older than that which no branch or tag needs, and delete the objects nothing references
    (Icechunk's ``expire_snapshots`` and ``garbage_collect``). ``main``'s history older than
    the threshold is expired too: ``nf log`` then starts at the threshold."""
    from nfstore.errors import OptionError
    from nfstore.versioned import open_repository

    if older_than_days < 0:
        raise OptionError(f"older_than_days: expected a number of days >= 0; found "
                          f"{older_than_days}")
    repo = open_repository(url, storage_options)
    cut = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=older_than_days)
    old = [b["branch"] for b in listing(url, storage_options)
           if dt.datetime.fromisoformat(b["written"]) < cut and not b["done"]]
    if dry_run:
        return GCSummary(url, old, 0, 0, 0)
    for name in old:
        repo.delete_branch(name)
    expired = repo.expire_snapshots(cut)
    summary = repo.garbage_collect(cut)
    objects = sum(int(getattr(summary, f, 0) or 0) for f in (
        "chunks_deleted", "manifests_deleted", "snapshots_deleted", "attributes_deleted",
        "transaction_logs_deleted"))
    return GCSummary(url, old, len(expired), objects, int(summary.bytes_deleted))
