"""``nf push``, ``nf log``, ``nf rollback``: versioned stores on object storage (Icechunk)."""

from __future__ import annotations

import click
from nf._options import remote_option


@click.command("push")
@click.argument("store", type=click.Path(file_okay=False, exists=True))
@click.argument("url")
@click.option("--message", "-m", default="nf push", show_default=True,
              help="Commit message of the new snapshot.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@remote_option("url")
def push(store: str, url: str, message: str, progress: bool) -> None:
    """Publish the local STORE as the next snapshot of the versioned store at URL (s3://...).

    One atomic commit: readers of URL see the previous snapshot until it and the new one
    after it; a push killed half-way changes nothing they can see. Writes in progress
    (_staging) are left out; the pushed snapshot is validated."""
    from nfstore.versioned import push as run

    click.echo(run(store, url, message=message, progress=progress).line())


@click.command("log")
@click.argument("store")
@click.option("--branches", is_flag=True,
              help="List the work branches of unfinished writes instead (a command killed "
                   "and not rerun yet; rerunning it resumes there, `nf gc` removes old ones).")
@remote_option("store")
def log(store: str, branches: bool) -> None:
    """The snapshots of the versioned store at STORE, newest first."""
    from nfstore.versioned import log as history

    if branches:
        from nfstore.branches import listing

        for b in listing(store):
            state = "finished, main not moved yet" if b["done"] else (
                f"in progress: {', '.join(b['staged'])}" if b["staged"] else "in progress")
            click.echo(f"{b['branch']}  {b['written']}  {b['command']}  from {b['base']}  "
                       f"({state})")
        return
    for s in history(store):
        extra = s["metadata"]
        size = f"{extra['objects']} objects, {extra['bytes'] / 2**20:.1f} MiB" \
            if "objects" in extra else ""
        click.echo(f"{s['snapshot']}  {s['written']}  {s['message']}  {size}".rstrip())


@click.command("rollback")
@click.argument("store")
@click.argument("snapshot")
@remote_option("store")
def rollback(store: str, snapshot: str) -> None:
    """Make SNAPSHOT (from `nf log STORE`) the current version of the versioned STORE."""
    from nfstore.versioned import rollback as reset

    reset(store, snapshot)
    click.echo(f"{store}: main is now snapshot {snapshot}")


@click.command("gc")
@click.argument("store")
@click.option("--older-than-days", type=click.FloatRange(0), default=7.0, show_default=True,
              help="Work branches and snapshots older than this are removed.")
@click.option("--dry-run", is_flag=True, help="Only list the work branches it would remove.")
@remote_option("store")
def gc(store: str, older_than_days: float, dry_run: bool) -> None:
    """Reclaim the space abandoned writes left in the versioned STORE: work branches of
    commands killed and never rerun, expired snapshots and the objects nothing references."""
    from nfstore.branches import gc as collect

    click.echo(collect(store, older_than_days, dry_run=dry_run).line())


COMMANDS = [push, log, rollback, gc]
