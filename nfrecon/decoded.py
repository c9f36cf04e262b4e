"""Decoded-embedding sets in the store: ``/decoded/<name>/<subject>`` (write side).

One group per subject: ``embedding (row, feature)`` float32 with row coordinates ``stimulus``,
``split``, ``out_of_sample`` (True where the decoder never trained on the row: test rows,
validation pictures, out-of-fold ridge predictions) and ``n_repeats``. Written through the
store's transaction (:func:`nfstore.transaction`): staged, then committed into place atomically.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import xarray as xr
import zarr

from nfstore import Transaction, __version__
from nfstore.errors import OptionError
from nfstore.names import DECODED_GROUP


def check_name(name: str, param: str = "name") -> str:
    """``name`` if it is a valid set name (letters, digits, ``_``, ``.``, ``-``), else a
    one-line :class:`OptionError` starting with ``param``."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
        raise OptionError(f"{param}: expected letters, digits, '_', '.' or '-'; found {name!r}")
    return name


def decoded_key(name: str, subject: str) -> str:
    """The store key of one subject's rows of decoded set ``name``."""
    return f"{DECODED_GROUP}/{name}/{subject}"


def write_decoded(tx: Transaction, name: str, subject: str,
                  embedding: np.ndarray, stimulus: np.ndarray, split: np.ndarray,
                  out_of_sample: np.ndarray, n_repeats: np.ndarray,
                  attrs: dict[str, Any]) -> None:
    """Write one subject's rows of decoded set ``name`` (replacing earlier rows atomically).

    Parameters
    ----------
    tx : the open transaction on the store (``with nfstore.transaction(store, cmd) as tx``)
    name, subject : the set (checked with :func:`check_name`) and the subject key
    embedding : float array (n_rows, D)
    stimulus, split : str arrays (n_rows,)
    out_of_sample : bool array (n_rows,)
    n_repeats : int array (n_rows,)
    attrs : the set's attributes (``subject``, ``name`` and ``nf_version`` are added)

    Raises
    ------
    OptionError
        ``embedding`` holds non-finite rows (nothing is written).
    """
    if not np.isfinite(embedding).all():
        bad = int((~np.isfinite(embedding)).any(1).sum())
        raise OptionError(f"embedding: expected finite values for {subject}; found non-finite "
                          f"values ({bad} decoded rows are non-finite; nothing written)")
    key = decoded_key(check_name(name), subject)
    tx.discard(key)  # never resumed: the rows are written at once
    staged, _, _ = tx.stage(key, create=False)
    ds = xr.Dataset({"embedding": (("row", "feature"), np.asarray(embedding, np.float32))},
                    coords={"stimulus": ("row", np.asarray(stimulus, dtype=object)),
                            "split": ("row", np.asarray(split, dtype=object)),
                            "out_of_sample": ("row", np.asarray(out_of_sample, bool)),
                            "n_repeats": ("row", np.asarray(n_repeats, np.int64))})
    ds.to_zarr(str(staged), mode="w", zarr_format=3, consolidated=False)
    zarr.open_group(str(staged), mode="r+").attrs.update(
        {**attrs, "subject": subject, "name": name, "nf_version": __version__})
    tx.commit(key)
