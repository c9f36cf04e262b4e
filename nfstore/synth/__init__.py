"""Small synthetic dataset trees in the original layouts, with a planted signal (``nf synth``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from nfstore._fields import from_values
from nfstore._layout import swap_into_place
from nfstore.errors import OptionError, StoreError

GENERATORS = {
    "nsd": ("nfstore.synth.nsd", "synth_nsd", "NSDSynthConfig"),
    "bold5000": ("nfstore.synth.bold5000", "synth_bold5000", "BOLD5000SynthConfig"),
    "god": ("nfstore.synth.god", "synth_god", "GODSynthConfig"),
    "pool": ("nfstore.synth.pool", "synth_pool", "PoolSynthConfig"),
}


def config_class(dataset: str) -> Any:
    import importlib

    if dataset not in GENERATORS:
        raise OptionError(f"DATASET: expected one of {sorted(GENERATORS)}; got {dataset!r}")
    module, _, cls = GENERATORS[dataset]
    return getattr(importlib.import_module(module), cls)


def parse_settings(dataset: str, items: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` items into config fields, converted to the field's type.

    Tuples take comma-separated values (``grid=20,24,20``); booleans take true/false.
    """
    import typing

    cls = config_class(dataset)
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in hints:
            raise OptionError(f"--set: expected KEY=VALUE with KEY one of {sorted(hints)}; "
                              f"got {item!r}")
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
            raise OptionError(f"--set {key}: expected {getattr(hint, '__name__', hint)}; "
                              f"got {text!r}") from None
    return out


def _check_nsd(cfg: Any) -> None:
    """One-line :class:`OptionError` for NSD sizes the generator cannot lay out."""
    for name in ("sessions", "trials_per_session", "runs_per_session", "images_per_subject",
                 "shared", "image_size"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OptionError(f"{name}: expected an integer >= 1; found {value!r}")
    bad = [s for s in cfg.subjects if isinstance(s, bool) or not isinstance(s, int)
           or not 1 <= s <= 8]
    if not cfg.subjects or bad:
        raise OptionError(f"subjects: expected NSD subject numbers in 1..8; found "
                          f"{list(cfg.subjects)}")
    if cfg.shared >= cfg.images_per_subject:
        raise OptionError(f"shared: expected fewer shared images than images_per_subject "
                          f"({cfg.images_per_subject}); found {cfg.shared}")
    trials = cfg.sessions * cfg.trials_per_session
    if trials > 3 * cfg.images_per_subject:
        raise OptionError(
            f"sessions x trials_per_session: expected at most 3 x images_per_subject = "
            f"{3 * cfg.images_per_subject} trials (each image is shown at most 3 times); "
            f"found {cfg.sessions} x {cfg.trials_per_session} = {trials}; raise "
            f"images_per_subject to {-(-trials // 3)} or ask for fewer trials")


CHECKS = {"nsd": _check_nsd}


def synthesize(dataset: str, out: str | Path, overwrite: bool = False, **params: Any
               ) -> dict[str, float]:
    """Write a synthetic ``dataset`` tree to ``out`` (atomically: built aside, then renamed).

    Parameters
    ----------
    dataset : {"nsd", "bold5000", "god"}
    out : path
        Destination folder; must not exist (or be empty) unless ``overwrite``.
    **params
        Fields of the dataset's config (e.g. ``NSDSynthConfig``); ``None`` keeps the default.
    """
    import importlib

    cls = config_class(dataset)
    cfg = from_values(cls, params, f"a setting of the {dataset} generator", flags=False)
    if dataset in CHECKS:
        CHECKS[dataset](cfg)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise StoreError(f"{out}: folder exists and is not empty; pass --overwrite to replace it")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    module, func, _ = GENERATORS[dataset]
    try:
        summary = getattr(importlib.import_module(module), func)(tmp, cfg)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_into_place(tmp, out, out.with_name(f".{out.name}.old-{os.getpid()}"))
    return summary
