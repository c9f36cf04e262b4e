"""Community formats: files other projects read with their own code (``nf export``).

Each exporter writes one store subject in a peer's layout and has the signature::

    export_subject(store, subject: str, out, *, overwrite: bool = False,
                   progress: bool = False, **options) -> summary   # str(summary): one line

:data:`EXPORT_FORMATS` maps the format name to ``"module:function"``; the module is imported
only when its format is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from nfstore.errors import OptionError

EXPORT_FORMATS: dict[str, str] = {
    "mindeye2": "nfstore.community.mindeye2:export_subject",
    "brain-diffuser": "nfstore.community.brain_diffuser:export_subject",
}


def exporter(fmt: str) -> Callable[..., Any]:
    """The export function of format ``fmt``.

    Raises
    ------
    OptionError
        ``format: expected one of [...]; found 'x'``.
    """
    if fmt not in EXPORT_FORMATS:
        raise OptionError(f"format: expected one of {sorted(EXPORT_FORMATS)}; found {fmt!r}")
    module, _, name = EXPORT_FORMATS[fmt].partition(":")
    return getattr(importlib.import_module(module), name)


def export_subject(fmt: str, store: Any, subject: str, out: Any, *, overwrite: bool = False,
                   progress: bool = False, **options: Any) -> Any:
    """Write ``subject`` of ``store`` to ``out`` in format ``fmt`` (see :data:`EXPORT_FORMATS`);
    returns the exporter's summary."""
    return exporter(fmt)(store, subject, out, overwrite=overwrite, progress=progress,
                         **options)


__all__ = ["EXPORT_FORMATS", "export_subject", "exporter"]
