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
@remote_option("store")
def log(store: str) -> None:
    """The snapshots of the versioned store at STORE, newest first."""
    from nfstore.versioned import log as history

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


COMMANDS = [push, log, rollback]
