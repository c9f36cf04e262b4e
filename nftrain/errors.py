"""Errors of the trainer (subclassing the builtin they stand for, as nfstore's do)."""

from __future__ import annotations

from nfstore.errors import NFError


class TrainingError(NFError, FloatingPointError):
    """Training met a non-finite value (loss, model outputs or inputs)."""


def os_errno(err: BaseException) -> int | None:
    """The errno of an :class:`OSError`, or of a safetensors error carrying one (safetensors
    turns Rust's ``io::Error`` into text ending in ``(os error N)``); None otherwise."""
    import re

    if isinstance(err, OSError):
        return err.errno
    if type(err).__name__ == "SafetensorError":
        m = re.search(r"\(os error (\d+)\)", str(err))
        return int(m.group(1)) if m else None
    return None
