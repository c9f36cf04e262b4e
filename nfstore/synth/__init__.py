"""Small synthetic dataset trees in the original layouts, with a planted signal (``nf synth``)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from nfstore.errors import OptionError, StoreError

GENERATORS = {"nsd": ("nfstore.synth.nsd", "synth_nsd", "NSDSynthConfig")}


def config_class(dataset: str) -> Any:
    import importlib

    if dataset not in GENERATORS:
        raise OptionError(f"DATASET: expected one of {sorted(GENERATORS)}; got {dataset!r}")
    module, _, cls = GENERATORS[dataset]
    return getattr(importlib.import_module(module), cls)


def synthesize(dataset: str, out: str | Path, overwrite: bool = False, **params: Any
               ) -> dict[str, float]:
    """Write a synthetic ``dataset`` tree to ``out`` (atomically: built aside, then renamed).

    Parameters
    ----------
    dataset : {"nsd"}
    out : path
        Destination folder; must not exist (or be empty) unless ``overwrite``.
    **params
        Fields of the dataset's config (e.g. ``NSDSynthConfig``); ``None`` keeps the default.
    """
    import importlib

    cls = config_class(dataset)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k, v in params.items() if v is not None and k not in known)
    if unknown:
        raise OptionError(f"options {unknown} do not apply to {dataset}; valid: {sorted(known)}")
    cfg = cls(**{k: v for k, v in params.items() if v is not None})
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
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)
    return summary
