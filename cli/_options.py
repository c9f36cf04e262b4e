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
