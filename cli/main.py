"""Root ``nf`` group: user errors become one-line messages (no traceback), exit status 1."""

from __future__ import annotations

from typing import Any

import click

from nfstore._version import __version__
from nfstore.errors import NFError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NFError as err:
            raise click.ClickException(str(err)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nf")
def cli() -> None:
    """NeuroFusion: one feature store for NSD, BOLD5000 and GOD, and the tools around it."""


def _register() -> None:
    from nf import (
        commands_augment,
        commands_demo,
        commands_embed,
        commands_recon,
        commands_serve,
        commands_store,
        commands_train,
        commands_versions,
    )

    for module in (commands_store, commands_embed, commands_augment, commands_train,
                   commands_recon, commands_demo, commands_serve, commands_versions):
        for command in module.COMMANDS:
            cli.add_command(command)


def main() -> None:
    _register()
    cli()
