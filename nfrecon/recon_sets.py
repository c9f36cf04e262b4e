"""Reconstruction sets in the store: ``/reconstructions/<name>/<subject>`` (the format).

``images`` uint8 (row, sample, y, x, rgb), one image per chunk; ``stimulus`` (row,),
``chosen`` (row,), ``scores`` and ``seeds`` (row, sample); the attributes record what the
images depend on (:func:`identity`). Written by :mod:`nfrecon.reconstruct` (and the blurry
stage of ``nf decode-ridge``, the blend of :mod:`nfrecon.init_images`), read here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import nfstore
from nfstore.errors import StoreError
from nfstore.names import RECON_GROUP


class SetExistsError(StoreError):
    """A finished reconstruction set exists with other settings (``overwrite`` replaces it)."""


@dataclass
class ReconSummary:
    """What one ``nf reconstruct`` did (:meth:`line` is what the command prints)."""

    name: str
    images: int = 0
    resumed: int = 0
    restarted: int = 0  # staged rows discarded because they were made with other settings
    seconds: float = 0.0
    subjects: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # finished with the same settings

    def line(self) -> str:
        if not self.subjects:
            return (f"/{RECON_GROUP}/{self.name} is complete for {', '.join(self.kept)} with "
                    f"the same settings: nothing to do")
        return (f"reconstructed {self.images} images into /{RECON_GROUP}/{self.name} "
                f"({', '.join(self.subjects)}) in {self.seconds:.1f} s "
                f"({self.images / max(self.seconds, 1e-9):.2f} images/s)"
                + (f"; {self.resumed} rows resumed" if self.resumed else "")
                + (f"; {self.restarted} staged rows made with other settings discarded"
                   if self.restarted else "")
                + (f"; kept {', '.join(self.kept)} (complete, same settings)"
                   if self.kept else ""))


def recon_key(name: str, subject: str) -> str:
    """The store key of one subject's rows of reconstruction set ``name``."""
    return f"{RECON_GROUP}/{name}/{subject}"


def identity(attrs: dict[str, Any]) -> dict[str, Any]:
    """What a set's images depend on: its attributes without the progress counter, as JSON
    values (so stored and fresh attributes compare equal)."""
    return json.loads(json.dumps({k: v for k, v in dict(attrs).items() if k != "rows_done"},
                                 default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every differing entry (one level into dicts), values shortened."""
    def flat(d: dict[str, Any]) -> dict[str, Any]:
        return {k if s is None else f"{k}.{s}": w for k, v in d.items()
                for s, w in (v.items() if isinstance(v, dict) else [(None, v)])}

    def short(v: Any) -> str:
        return repr(v) if len(repr(v)) <= 20 else repr(v)[:16] + "..."

    a, b = flat(old), flat(new)
    return [f"{k}: {short(a.get(k))} -> {short(b.get(k))}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def create_group(staged: Path, stimuli: np.ndarray, samples: int, size: int) -> Any:
    """A new reconstruction group at ``staged`` (a staged path, e.g. from
    :meth:`nfstore.Transaction.stage`): ``images`` uint8 (row, sample, size, size, 3), one
    image per chunk, ``stimulus`` (row,) filled, ``chosen`` (row,), ``scores`` and ``seeds``
    (row, sample) allocated."""
    import zarr

    staged.parent.mkdir(parents=True, exist_ok=True)
    g = zarr.open_group(str(staged), mode="w", zarr_format=3)
    n_rows = len(stimuli)
    g.create_array("images", shape=(n_rows, samples, size, size, 3),
                   chunks=(1, 1, size, size, 3), dtype="uint8",
                   dimension_names=("row", "sample", "y", "x", "rgb"))
    g.create_array("stimulus", shape=(n_rows,), dtype=str, dimension_names=("row",))
    g["stimulus"][:] = np.asarray(stimuli, dtype=object)
    for arr, dt, shape, dims in (("chosen", "int64", (n_rows,), ("row",)),
                                 ("scores", "float32", (n_rows, samples), ("row", "sample")),
                                 ("seeds", "int64", (n_rows, samples), ("row", "sample"))):
        g.create_array(arr, shape=shape, dtype=dt, dimension_names=dims)
    return g


def read_reconstructions(location: str | Path | nfstore.Store, name: str, subject: str
                         ) -> dict[str, Any]:
    """One subject's rows of reconstruction set ``name``.

    Returns
    -------
    dict with ``images`` uint8 (row, sample, y, x, rgb) lazily (dask), ``stimulus`` (row,),
    ``chosen`` (row,), ``scores`` (row, sample) and ``attrs`` (``location``: a path, URL or
    opened store)
    """
    import dask.array as da

    store = nfstore.open_store(location, check=False)
    try:
        g = store.group(recon_key(name, subject))
    except nfstore.QueryError:
        raise StoreError(f"name: expected a reconstruction set of {subject} in "
                         f"{store.location}; found none named {name!r}") from None
    return {"images": da.from_zarr(g["images"]), "stimulus": np.array(g["stimulus"][:].tolist(),
                                                                      dtype=object),
            "chosen": g["chosen"][:], "scores": g["scores"][:], "attrs": dict(g.attrs)}


def recon_subjects(location: str | Path | nfstore.Store, name: str,
                   subjects: list[str] | None = None) -> list[str]:
    """Subjects of reconstruction set ``name`` (``subjects`` if given); a one-line error if the
    set does not exist."""
    store = nfstore.open_store(location, check=False)
    sets = store.reconstruction_sets()
    if name not in sets:
        raise nfstore.QueryError(f"name: expected a reconstruction set in {store.location}; "
                                 f"found none named {name!r}")
    return list(subjects) if subjects else sets[name]
