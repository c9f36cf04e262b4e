"""Dataset readers, one module per dataset, all with the same three functions (see ``base``)."""

from __future__ import annotations

import importlib
from types import ModuleType

from nfstore.errors import OptionError

READERS: dict[str, str] = {"nsd": "nfstore.readers.nsd",
                           "bold5000": "nfstore.readers.bold5000",
                           "god": "nfstore.readers.god"}


def get_reader(dataset: str) -> ModuleType:
    """Return the reader module of ``dataset`` (``nsd``, ...)."""
    if dataset not in READERS:
        raise OptionError(f"DATASET: expected one of {sorted(READERS)}; got {dataset!r}")
    return importlib.import_module(READERS[dataset])
