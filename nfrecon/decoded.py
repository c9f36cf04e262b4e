"""Decoded-embedding sets in the store: ``/decoded/<name>/<subject>`` (write side).

One group per subject: ``embedding (row, feature)`` float32 with row coordinates ``stimulus``,
``split``, ``out_of_sample`` (True where the decoder never trained on the row: test rows,
validation pictures, out-of-fold ridge predictions) and ``n_repeats``. Written aside and renamed
into place (:func:`nfstore._layout.commit`) under the store's write lock.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from nfstore import _layout
from nfstore.names import DECODED_GROUP
from nfstore import __version__
from nfstore.errors import OptionError


def check_name(name: str, option: str = "--name") -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
        raise OptionError(f"{option}: expected letters, digits, '_', '.' or '-'; got {name!r}")
    return name


def write_decoded(store: Path, name: str, subject: str, embedding: np.ndarray,
                  stimulus: np.ndarray, split: np.ndarray, out_of_sample: np.ndarray,
                  n_repeats: np.ndarray, attrs: dict[str, Any]) -> None:
    """Write one subject's rows of decoded set ``name`` (replacing earlier rows atomically).

    Parameters
    ----------
    embedding : float array (n_rows, D)
    stimulus, split : str arrays (n_rows,)
    out_of_sample : bool array (n_rows,)
    n_repeats : int array (n_rows,)
    """
    if not np.isfinite(embedding).all():
        raise OptionError(f"{subject}: {int((~np.isfinite(embedding)).any(1).sum())} decoded "
                          f"rows are non-finite; nothing written")
    key = f"{DECODED_GROUP}/{name}/{subject}"
    staged = _layout.staging_path(store, f"{DECODED_GROUP}.{name}.{subject.replace('/', '.')}")
    _layout.discard(staged)
    staged.parent.mkdir(parents=True, exist_ok=True)
    ds = xr.Dataset({"embedding": (("row", "feature"), np.asarray(embedding, np.float32))},
                    coords={"stimulus": ("row", np.asarray(stimulus, dtype=object)),
                            "split": ("row", np.asarray(split, dtype=object)),
                            "out_of_sample": ("row", np.asarray(out_of_sample, bool)),
                            "n_repeats": ("row", np.asarray(n_repeats, np.int64))})
    ds.to_zarr(str(staged), mode="w", zarr_format=3, consolidated=False)
    zarr.open_group(str(staged), mode="r+").attrs.update(
        {**attrs, "subject": subject, "name": name, "nf_version": __version__})
    _layout.ensure_group(store, f"{DECODED_GROUP}/{name}/{subject.split('/')[0]}")
    _layout.commit(store, staged, key)
