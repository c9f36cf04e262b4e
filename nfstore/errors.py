"""Error classes. Each also subclasses the matching builtin, so callers may catch either."""

from __future__ import annotations


class NFError(Exception):
    """Base class of every NeuroFusion user-facing error (shown as one line by the CLI)."""


class ReaderError(NFError, ValueError):
    """A raw dataset file is unreadable, incomplete or inconsistent."""


class MissingFileError(ReaderError, FileNotFoundError):
    """A file a reader needs does not exist."""


class SchemaError(NFError, ValueError):
    """A store does not satisfy the store contract."""


class StoreError(NFError, ValueError):
    """A store operation cannot be carried out as asked (missing subject, existing subject, ...)."""


class QueryError(NFError, KeyError):
    """A query names a subject, ROI, split or stimulus the store does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class OptionError(NFError, ValueError):
    """An option or argument has a value outside what it accepts."""


class ChunkError(StoreError):
    """A stored chunk is missing, truncated or unreadable (the store lost data).

    Attributes
    ----------
    key : str
        The chunk's key inside the store (``nsd/subj01/betas/c/1/0``).
    """

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key
