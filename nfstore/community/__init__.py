"""Community formats: files other projects read with their own code (``nf export``).

Each exporter writes one store subject in a peer's layout and has the signature::

    export_subject(store, subject: str, out, *, overwrite: bool = False,
                   progress: bool = False, **options) -> summary   # str(summary): one line

:data:`EXPORT_FORMATS` maps the format name to ``"module:function"``; the module is imported
only when its format is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from nfstore.errors import OptionError
from nfstore.names import VOXEL_I, VOXEL_J, VOXEL_K

EXPORT_FORMATS: dict[str, str] = {
    "mindeye2": "nfstore.community.mindeye2:export_subject",
    "brain-diffuser": "nfstore.community.brain_diffuser:export_subject",
}


def column_order(ds: Any) -> np.ndarray:
    """Voxel columns of an export: C order over the grid (the peers' ``vol[mask > 0]`` order,
    for MindEye2 and Brain-Diffuser alike) when the store knows every voxel's grid index, else
    the store's order.

    Parameters
    ----------
    ds : xarray Dataset of a subject (``voxel_i``, ``voxel_j``, ``voxel_k`` of shape (n_voxels,))

    Returns
    -------
    int array of shape (n_voxels,): the store's voxel of each exported column
    """
    ijk = [np.asarray(ds[c].values, np.int64) for c in (VOXEL_I, VOXEL_J, VOXEL_K)]
    if ijk[0].size and all((a >= 0).all() for a in ijk):
        return np.lexsort((ijk[2], ijk[1], ijk[0]))
    return np.arange(ijk[0].size)


def exporter(fmt: str) -> Callable[..., Any]:
    """The export function of format ``fmt``.

    Raises
    ------
    OptionError
        ``format: expected one of [...]; found 'x'``.
    """
    if fmt not in EXPORT_FORMATS:
        raise OptionError(f"format: expected one of {sorted(EXPORT_FORMATS)}; found {fmt!r}")
    module, _, name = EXPORT_FORMATS[fmt].partition(":")
    return getattr(importlib.import_module(module), name)


def export_subject(fmt: str, store: Any, subject: str, out: Any, *, overwrite: bool = False,
                   progress: bool = False, **options: Any) -> Any:
    """Write ``subject`` of ``store`` to ``out`` in format ``fmt`` (see :data:`EXPORT_FORMATS`);
    returns the exporter's summary."""
    return exporter(fmt)(store, subject, out, overwrite=overwrite, progress=progress,
                         **options)


__all__ = ["EXPORT_FORMATS", "column_order", "export_subject", "exporter"]
