"""Small synthetic dataset trees in the original layouts, with a planted signal (``nf synth``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from nfstore._fields import from_values
from nfstore.errors import OptionError, StoreError
from nfstore.transaction import replace_path

POOL = "pool"  # a folder of ImageNet-named images (nf embed --pool), not a dataset


def synth_names() -> list[str]:
    """What ``nf synth`` writes: every reader with a synthetic generator, and ``pool``."""
    from nfstore.readers import get_reader, reader_names

    return [n for n in reader_names() if get_reader(n).synth_config() is not None] + [POOL]


def _generator(dataset: str) -> tuple[Any, Any, Any]:
    """(config class, write function, check function) of ``dataset``."""
    from nfstore.readers import reader_names

    if dataset == POOL:
        from nfstore.synth.pool import PoolSynthConfig, synth_pool

        return PoolSynthConfig, synth_pool, lambda cfg: None
    if dataset in reader_names():
        from nfstore.readers import get_reader

        reader = get_reader(dataset)
        if reader.synth_config() is not None:
            return reader.synth_config(), reader.synthesize, reader.check_synth
    raise OptionError(f"dataset: expected one of {synth_names()}; found {dataset!r}")


def config_class(dataset: str) -> Any:
    """The settings dataclass of ``dataset``'s generator."""
    return _generator(dataset)[0]


def parse_settings(dataset: str, settings: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` items into config fields, converted to the field's type.

    Tuples take comma-separated values (``grid=20,24,20``); booleans take true/false.
    """
    import typing

    cls = config_class(dataset)
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for item in settings:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in hints:
            raise OptionError(f"settings: expected KEY=VALUE with KEY one of {sorted(hints)}; "
                              f"found {item!r}")
        hint = hints[key]
        try:
            if typing.get_origin(hint) is tuple:
                inner = typing.get_args(hint)[0]
                out[key] = tuple(inner(v) for v in text.split(",") if v.strip())
            elif hint is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                out[key] = text.lower() in ("true", "1")
            else:
                out[key] = hint(text)
        except ValueError:
            raise OptionError(f"settings: expected {key}=<{getattr(hint, '__name__', hint)}>; "
                              f"found {key}={text!r}") from None
    return out




def synthesize(dataset: str, out: str | Path, overwrite: bool = False, **params: Any
               ) -> dict[str, float]:
    """Write a synthetic ``dataset`` tree to ``out`` (atomically: built aside, then renamed).

    Parameters
    ----------
    dataset : str
        A reader's name (:func:`synth_names`) or ``"pool"``.
    out : path
        Destination folder; must not exist (or be empty) unless ``overwrite``.
    **params
        Fields of the dataset's config (e.g. ``NSDSynthConfig``); ``None`` keeps the default.
    """
    cls, write, check = _generator(dataset)
    cfg = from_values(cls, params, f"a setting of the {dataset} generator", flags=False)
    check(cfg)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise StoreError(f"{out}: folder exists and is not empty; pass --overwrite to replace it")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        summary = write(tmp, cfg)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_path(tmp, out)
    return summary
