"""Root ``nf`` group: user errors become one-line messages (no traceback), exit status 1.

Two kinds are mapped: :class:`~nfstore.errors.NFError` (the message as it is, a leading Python
parameter name replaced by the flag or argument it came from: :func:`flag_message`), and a full
disk, an exceeded quota, a read-only file system or a refused permission met while reading or
writing (an :class:`OSError` with ``ENOSPC``, ``EDQUOT``, ``EROFS`` or ``EACCES``, raised or
named as the cause of another error, or safetensors' error carrying such an OS error code).
Every writer leaves the store unchanged when it fails, so the message says what to do and to
rerun. Anything else keeps its traceback: it is a defect to report.
"""

from __future__ import annotations

import errno
from typing import Any

import click

from nfstore import __version__
from nfstore.errors import NFError
from nftrain.errors import os_errno

# errno -> (what happened, what to do)
DISK_ERRORS = {
    errno.ENOSPC: ("no space left on device", "free space and rerun"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota and rerun"),
    errno.EROFS: ("read-only file system", "rerun on a writable copy or mount"),
    errno.EACCES: ("permission denied", "fix the permissions and rerun"),
}
# parameters naming what a command writes, in order of preference
_TARGETS = ("store", "out_dir", "workdir", "out")


def disk_error(err: BaseException) -> tuple[int, str | None] | None:
    """(errno, file name or None) of the disk error behind ``err``, or None if there is none.

    ``err`` itself, then the errors it was raised from (``raise ... from``), are looked at; a
    safetensors error (a Rust ``io::Error`` turned into text) gives its ``os error N``.
    """
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        code = os_errno(cur)
        if code in DISK_ERRORS:
            name = getattr(cur, "filename", None)
            return code, None if name is None else str(name)
        cur = cur.__cause__
    return None


def disk_message(code: int, filename: str | None, params: dict[str, Any]) -> str:
    """The one-line message of a disk error: the file (or else what the command writes), what
    happened, that the store is unchanged, and what to do."""
    what, fix = DISK_ERRORS[code]
    target = next((str(params[k]) for k in _TARGETS if params.get(k)), None)
    path = filename or target or "the output"
    verb = "could not access" if code == errno.EACCES else "could not write"
    unchanged = "the store is unchanged" if params.get("store") else "nothing half-written " \
                                                                     "is kept"
    return f"{path}: {verb} ({what}); {unchanged}, {fix}"


class _Group(click.Group):
    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name, cmd, rest = super().resolve_command(ctx, args)
        ctx.meta["nf.command"] = (name, cmd, list(rest))  # to name its store in a disk error
        return name, cmd, rest

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NFError as err:
            raise click.ClickException(flag_message(str(err), ctx)) from None
        except Exception as err:
            found = disk_error(err)
            if found is None:
                raise
            raise click.ClickException(disk_message(*found, _params(ctx))) from None


def flag_message(message: str, ctx: click.Context) -> str:
    """``message`` with a leading Python parameter name (``roi: expected ...``) replaced by the
    failed command's flag or argument (``--roi: expected ...``, ``STORE: ...``): the library
    names parameters, the CLI maps them to what the user typed, at its edge."""
    head, sep, rest = message.partition(": ")
    _, cmd, _ = ctx.meta.get("nf.command", (None, None, []))
    if not sep or cmd is None or not head.isidentifier():
        return message
    for param in cmd.params:
        names = {param.name, *(o.lstrip("-").replace("-", "_") for o in param.opts)}
        if head in names:
            hint = param.opts[0] if isinstance(param, click.Option) else (
                param.metavar or (param.name or "").upper())
            return f"{hint}{sep}{rest}"
    return message


def _params(ctx: click.Context) -> dict[str, Any]:
    """The failed subcommand's parameters, parsed again from its arguments."""
    name, cmd, args = ctx.meta.get("nf.command", (None, None, []))
    if cmd is None:
        return {}
    try:
        return dict(cmd.make_context(name, list(args), parent=ctx,
                                     resilient_parsing=True).params)
    except (click.ClickException, click.exceptions.Exit):
        return {}


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nf")
def cli() -> None:
    """NeuroFusion: one feature store for NSD, BOLD5000, GOD and THINGS-fMRI, and its tools."""


def _register() -> None:
    from nf import (
        commands_augment,
        commands_demo,
        commands_embed,
        commands_export,
        commands_recon,
        commands_serve,
        commands_store,
        commands_train,
        commands_versions,
    )

    for module in (commands_store, commands_embed, commands_augment, commands_train,
                   commands_recon, commands_demo, commands_serve, commands_versions,
                   commands_export):
        for command in module.COMMANDS:
            cli.add_command(command)


def main() -> None:
    _register()
    cli()
