"""Dataset readers: built-in ones plus plugins (as xarray's backend entry points).

A reader is a subclass of :class:`Reader` (see :mod:`nfstore.readers.base`). Third-party
packages add one by registering the class under the ``nfstore.readers`` entry point group::

    # pyproject.toml of the plugin package
    [project.entry-points."nfstore.readers"]
    mydata = "mypackage.reader:MyReader"

Everything that lists datasets (``nf ingest``, ``nf synth``, ``nf serve``, the store schema's
subject names, default normalizations) asks this registry. A plugin that cannot be loaded is
skipped with a one-line warning.
"""

from __future__ import annotations

import functools
import re
import warnings
from importlib.metadata import entry_points

from nfstore.errors import OptionError
from nfstore.readers.base import Block, RawSubject, Reader, StimulusTable
from nfstore.readers.bold5000 import BOLD5000Reader
from nfstore.readers.brain_diffuser import BrainDiffuserReader
from nfstore.readers.god import GODReader
from nfstore.readers.mindeye2 import MindEye2Reader
from nfstore.readers.nsd import NSDReader
from nfstore.readers.things import THINGSReader

ENTRY_POINT_GROUP = "nfstore.readers"
BUILTIN: tuple[type[Reader], ...] = (NSDReader, BOLD5000Reader, GODReader, THINGSReader,
                                      MindEye2Reader, BrainDiffuserReader)
NAME_PATTERN = r"[a-z][a-z0-9_-]*"


class PluginWarning(UserWarning):
    """A reader plugin was skipped (could not be imported, or is not a valid reader)."""


def _plugin_class(ep: object, taken: set[str]) -> type[Reader] | None:
    """The reader class of entry point ``ep``, or None (with a one-line warning)."""
    where = f"{ENTRY_POINT_GROUP} plugin {getattr(ep, 'name', ep)!r} ({getattr(ep, 'value', '')})"
    try:
        cls = ep.load()  # type: ignore[attr-defined]
    except Exception as err:  # anything a broken third-party module raises
        problem = f"could not be loaded: {type(err).__name__}: {' '.join(str(err).split())}"
    else:
        name = getattr(cls, "name", None)
        if not (isinstance(cls, type) and issubclass(cls, Reader)):
            problem = f"is not a subclass of nfstore.readers.Reader; found {cls!r}"
        elif not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            problem = f"expected a class attribute name matching {NAME_PATTERN}; found {name!r}"
        elif name in taken:
            problem = f"name {name!r} is already taken by another reader"
        else:
            return cls
    warnings.warn(f"{where}: {problem[:300]}; skipped", PluginWarning, stacklevel=3)
    return None


@functools.cache
def _registry() -> dict[str, type[Reader]]:
    out: dict[str, type[Reader]] = {cls.name: cls for cls in BUILTIN}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        cls = _plugin_class(ep, set(out))
        if cls is not None:
            out[cls.name] = cls
    return out


def refresh() -> None:
    """Forget the discovered plugins (they are looked up again on the next call)."""
    _registry.cache_clear()


def reader_names() -> list[str]:
    """Dataset keys of every reader: built-ins first (``nsd``, ``bold5000``, ``god``), then
    plugins by name."""
    return list(_registry())


def dataset_groups() -> list[str]:
    """Store groups the readers write (``Reader.store_dataset``), each once, in registry
    order: ``mindeye2`` writes ``nsd``, so it adds none."""
    return list(dict.fromkeys(cls.store_dataset() for cls in _registry().values()))


def readers() -> dict[str, type[Reader]]:
    """Dataset key -> reader class, built-ins and plugins."""
    return dict(_registry())


def get_reader(dataset: str) -> Reader:
    """The reader of ``dataset`` (an instance).

    Raises
    ------
    OptionError
        ``dataset: expected one of [...]; found 'x'``.
    """
    found = _registry().get(dataset)
    if found is None:
        raise OptionError(f"dataset: expected one of {reader_names()}; found {dataset!r}")
    return found()


__all__ = ["Block", "RawSubject", "Reader", "StimulusTable", "NSDReader", "BOLD5000Reader",
           "GODReader", "ENTRY_POINT_GROUP", "PluginWarning", "dataset_groups", "get_reader",
           "reader_names",
           "readers", "refresh"]
