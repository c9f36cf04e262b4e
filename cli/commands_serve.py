"""``nf serve``: a local web page over the store."""

from __future__ import annotations

import click
from nf._options import remote_store


@click.command("serve")
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; anything but 127.0.0.1 exposes the store to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--allow-jobs", is_flag=True, help="Allow reconstruction jobs (token required).")
@click.option("--sdxl", type=click.Path(), help="SDXL folder for jobs.")
@click.option("--ip-adapter", type=click.Path(), help="h94/IP-Adapter folder for jobs.")
@click.option("--checkpoint", "checkpoints", type=click.Path(), multiple=True,
              help="Decoder checkpoint(s) offered for uploaded betas (repeatable).")
@click.option("--encoder", type=click.Path(), help="nf embed encoder (best of --samples > 1).")
@click.option("--size", type=click.IntRange(8), default=256, show_default=True,
              help="Job image size in pixels.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="A host name or address clients may use besides 127.0.0.1, localhost, ::1 "
                   "and --host (repeatable; requests naming any other host get 400).")
@remote_store
def serve(store: str, host: str, port: int, allow_jobs: bool, sdxl: str | None,
          ip_adapter: str | None, checkpoints: tuple[str, ...], encoder: str | None,
          size: int, allowed_hosts: tuple[str, ...]) -> None:
    """Browse STORE in a web browser: subjects, stimuli, reconstructions, metrics."""
    from nfserve.server import run

    run(store, host, port, allow_jobs, sdxl, ip_adapter, list(checkpoints), encoder, size,
        click.echo, allowed_hosts)


COMMANDS = [serve]
