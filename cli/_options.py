"""Shared option types and decorators of the ``nf`` commands."""

from __future__ import annotations

from typing import Any

import click


class ManyValues(click.Option):
    """An option taking one or more values: ``--subjects 1 2 3`` (also ``1,2`` or repeated).

    Values are consumed up to the next token starting with ``-``.
    """

    def __init__(self, *args: Any, split_commas: bool = True, **kwargs: Any) -> None:
        kwargs["multiple"] = True
        self.split_commas = split_commas
        super().__init__(*args, **kwargs)

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            opt = getattr(parser, "_long_opt", {}).get(name) or getattr(
                parser, "_short_opt", {}).get(name)
            if opt is None or not hasattr(opt, "process"):
                continue
            original = opt.process

            def process(value: Any, state: Any, _orig: Any = original) -> None:
                _orig(value, state)
                while state.rargs and not str(state.rargs[0]).startswith("-"):
                    _orig(state.rargs.pop(0), state)

            opt.process = process

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        value = super().process_value(ctx, value)
        if not value:
            return None
        if not self.split_commas:
            return tuple(str(v) for v in value)
        return tuple(v for item in value for v in str(item).split(",") if v)


def subjects_option(help_text: str) -> Any:
    return click.option("--subjects", cls=ManyValues, help=help_text)


store_option = click.option("--store", "store", required=True,
                            type=click.Path(file_okay=False, path_type=str),
                            help="Store folder (created if missing).")


def remote_option(arg: str = "store") -> Any:
    """Let a command read (or publish to) the URL in its argument ``arg``: adds
    ``--storage-option KEY=VALUE`` (repeatable; fsspec options of the URL's filesystem, e.g.
    ``endpoint_url=...``, ``anon=true``, ``client_kwargs.region_name=...``), applied before
    the command runs."""
    import functools

    def decorate(command: Any) -> Any:
        @functools.wraps(command)
        def run(*args: Any, storage_options: tuple[str, ...] = (), **kwargs: Any) -> Any:
            from nfstore import locations

            locations.configure(str(kwargs[arg]), locations.parse_storage_options(storage_options))
            return command(*args, **kwargs)

        # named as the library's parameter: its errors (storage_options: ...) name the flag
        return click.option(
            "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
            help="For a store URL (s3://...): an fsspec option of its filesystem (repeatable), "
                 "e.g. endpoint_url=http://127.0.0.1:9000. Also read: FSSPEC_S3_<OPTION> and "
                 "the backend's own variables (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...).")(run)

    return decorate


remote_store = remote_option("store")


def pixel_cache_options(command: Any) -> Any:
    """``--cache-pixels`` and ``--pixel-size`` (``nf ingest``, ``nf embed``)."""
    command = click.option(
        "--pixel-size", type=click.IntRange(8, 4096),
        help="--cache-pixels: resize to N x N (needed where a table's images differ in size, as "
             "BOLD5000's and GOD's do) [the images' own size].")(command)
    return click.option(
        "--cache-pixels", is_flag=True,
        help="Also copy the stimulus images into the store (/stimuli/<table>/pixels), so a copy "
             "of the store on object storage serves images without the raw files.")(command)


def writes_store(arg: str = "store") -> Any:
    """Run a writing command in one transaction on the store in ``arg``
    (:func:`nfstore.transaction`): a local folder, or a versioned store URL (``nf push``
    made it), whose local working copy the command writes and which is published as the next
    snapshot when it succeeds. The command gets the transaction's folder, so the library
    writers it calls join this transaction (one lock, one snapshot); for a URL the new
    snapshot is printed. Adds ``--storage-option``."""
    import functools

    def decorate(command: Any) -> Any:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            from nfstore import locations
            from nfstore.transaction import transaction

            url = str(kwargs[arg])
            if not locations.is_url(url):
                return command(*args, **kwargs)
            from nfstore import versioned

            name = f"nf {click.get_current_context().command.name}"
            with transaction(url, name) as tx:
                out = command(*args, **{**kwargs, arg: str(tx.root)})
            head = versioned.log(url)[0]
            click.echo(f"{url}: main is snapshot {head['snapshot']} (after {name})")
            return out

        return remote_option(arg)(run)

    return decorate
