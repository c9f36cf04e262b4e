"""THINGS-fMRI table files: ``ResponseData.h5`` (a pandas fixed-format frame read with h5py),
``StimulusMetadata.csv`` and ``VoxelMetadata.csv``.

``sub-XX_ResponseData.h5`` is what ``DataFrame.to_hdf(key="ResponseData")`` writes: rows are
voxels, columns ``voxel_id`` then one per trial. pandas stores each dtype block transposed, so
``ResponseData/block<b>_values`` is (n_voxels, n_columns); the float block holds the betas, an int
block of width 1 the voxel ids. PyTables is not needed: the arrays are plain HDF5 datasets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nfstore import _io
from nfstore.errors import ReaderError

KEY = "ResponseData"
ROW_CHUNK_VALUES = 2**23  # values read per h5py call (64 MiB of float64)
STIMULUS_COLUMNS = ("trial_type", "session", "run", "stimulus")
COORDS = ("voxel_x", "voxel_y", "voxel_z")
VOXEL_EXTRAS = ("voxel_id", "nc_testset", "nc_singletrial")
FIRST_ROI = "V1"
REQUIRED_ROIS = ("V1", "V2", "V3", "hV4", "lFFA", "rFFA", "lPPA", "rPPA", "lTOS", "rTOS",
                 "lRSC", "rRSC", "lLOC", "rLOC", "IT")


@dataclass(frozen=True)
class ResponseLayout:
    """Where the betas sit inside a pandas fixed-format ``ResponseData`` frame.

    Attributes
    ----------
    path : Path
    values : str
        HDF5 path of the float block, shape (n_voxels, n_trials).
    n_voxels, n_trials : int
    voxel_id : array of int64, shape (n_voxels,), or None when the frame has no id block.
    """

    path: Path
    values: str
    n_voxels: int
    n_trials: int
    voxel_id: np.ndarray | None


def _text(value: object) -> str:
    """An HDF5 attribute as text (PyTables writes bytes)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def response_layout(path: Path) -> ResponseLayout:
    """Find the betas block of a pandas fixed-format frame (see the module docstring).

    Raises
    ------
    ReaderError
        Not HDF5, no ``ResponseData`` group, a ``format="table"`` frame, or not exactly one
        float block of one row per voxel.
    """
    import h5py

    with _io.reading(path, "a pandas HDF5 frame"), h5py.File(path, "r") as f:
        if KEY not in f:
            raise ReaderError(f"{path}: expected a pandas frame under key '{KEY}'; found keys "
                              f"{sorted(f.keys())}")
        g = f[KEY]
        kind = _text(g.attrs.get("pandas_type", b""))
        if kind != "frame":
            raise ReaderError(f"{path}: expected a pandas fixed-format frame (pandas_type "
                              f"'frame', as to_hdf(format='fixed') writes); found "
                              f"{kind or 'no pandas_type'!r}")
        n_vox = int(g["axis1"].shape[0]) if "axis1" in g else -1
        floats, ids = [], None
        for b in range(int(g.attrs.get("nblocks", 0))):
            d = g.get(f"block{b}_values")
            if d is None or d.ndim != 2 or d.shape[0] != n_vox:
                raise ReaderError(f"{path}: expected {KEY}/block{b}_values of shape "
                                  f"({n_vox}, columns); found "
                                  f"{None if d is None else d.shape}")
            if d.dtype.kind == "f":
                floats.append(d)
            elif d.shape[1] == 1 and d.dtype.kind in "iu":
                ids = np.asarray(d[:, 0], np.int64)
        if len(floats) != 1:
            raise ReaderError(f"{path}: expected one float block of betas in {KEY}; found "
                              f"{len(floats)}")
        return ResponseLayout(path, floats[0].name, n_vox, int(floats[0].shape[1]), ids)


def _index(cols: np.ndarray) -> tuple[slice | np.ndarray, np.ndarray | None]:
    """An h5py column selection for ``cols`` and the reorder to apply after reading."""
    if cols.size and np.array_equal(cols, np.arange(cols[0], cols[0] + cols.size)):
        return slice(int(cols[0]), int(cols[-1]) + 1), None
    order = np.unique(cols)
    return order, np.searchsorted(order, cols)


def load_trials(layout: ResponseLayout, cols: np.ndarray) -> np.ndarray:
    """Betas of trial columns ``cols``, float32 array of shape (len(cols), n_voxels).

    The frame is read in row chunks of all the block's columns, so that memory holds the output
    and one chunk of at most :data:`ROW_CHUNK_VALUES` values, never the whole subject.
    """
    import h5py

    sel, reorder = _index(np.asarray(cols, np.int64))
    width = int(np.asarray(cols).size if reorder is None else len(sel))  # type: ignore[arg-type]
    out = np.empty((width, layout.n_voxels), np.float32)
    step = max(1, ROW_CHUNK_VALUES // max(width, 1))
    with _io.reading(layout.path, "a pandas HDF5 frame"), h5py.File(layout.path, "r") as f, \
            np.errstate(over="ignore"):
        d = f[layout.values]
        for r in range(0, layout.n_voxels, step):
            out[:, r:r + step] = d[r:r + step, sel].T
    return out if reorder is None else out[reorder]


def read_csv(path: Path, what: str, **kwargs: object) -> pd.DataFrame:
    """A CSV table, any read failure a one-line ReaderError naming ``path``."""
    _io.require_file(path, what)
    with _io.reading(path, f"CSV ({what})"):
        return pd.read_csv(path, **kwargs)  # type: ignore[call-overload]


def require_columns(path: Path, found: list[str], wanted: tuple[str, ...]) -> None:
    """ReaderError naming ``path`` unless every column of ``wanted`` is in ``found``."""
    missing = [c for c in wanted if c not in found]
    if missing:
        raise ReaderError(f"{path}: expected columns {list(wanted)}; missing {missing}, found "
                          f"{found[:20]}{' ...' if len(found) > 20 else ''}")


def roi_name(column: str) -> str:
    """ROI name of a VoxelMetadata column: line breaks inside names (``glasser-p9-\\n46v``)
    are removed, everything else is kept (``LO1 (prf)``)."""
    return re.sub(r"\s*[\r\n]+\s*", "", column).strip()


def voxel_table(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """VoxelMetadata rows and its ROI columns (every column from ``V1`` onward).

    Returns
    -------
    table : DataFrame of n_voxels rows (coordinates, extras and ROI columns)
    rois : list of str, the ROI column names as in the file
    """
    header = list(read_csv(path, "THINGS voxel metadata", nrows=0).columns)
    require_columns(path, header, COORDS + (FIRST_ROI,))
    rois = header[header.index(FIRST_ROI):]
    missing = [c for c in REQUIRED_ROIS if c not in rois]
    if missing:
        raise ReaderError(f"{path}: expected ROI columns {list(REQUIRED_ROIS)}; missing "
                          f"{missing}")
    keep = [c for c in header if c in COORDS + VOXEL_EXTRAS] + rois
    table = read_csv(path, "THINGS voxel metadata", usecols=keep)
    for c in COORDS + tuple(rois):
        v = pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64)
        ok = np.isin(v, (0, 1)) if c in rois else np.isfinite(v) & (v == np.rint(v)) & (v >= 0)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            want = "0/1 values" if c in rois else "integer grid indices >= 0"
            raise ReaderError(f"{path}: expected {want} in column {c!r}; found "
                              f"{table[c].iloc[row]!r} in row {row + 1} ({int((~ok).sum())} bad)")
    return table, rois
