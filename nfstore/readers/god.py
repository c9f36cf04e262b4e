"""GOD reader (Generic Object Decoding, BData HDF5) -> :class:`RawSubject`.

Files: ``Subject{1..5}.h5`` at the root, in the BrainDecoderToolbox2/bdpy BData layout::

    /dataset | /dataSet                 float (n_samples, n_columns)
    /metadata | /metaData /key          (n_keys,) fixed- or variable-length strings
                          /description  (n_keys,)
                          /value        float (n_keys, n_columns), NaN = not applicable

Columns are found by their metadata (never by position): ``VoxelData`` marks voxel columns,
``DataType`` (1 train, 2 test, 3 imagery), ``Run``, ``Block`` and ``stimulus_id`` (``Label`` in
legacy files) mark one column each; ``voxel_x/y/z`` (mm) and ``ROI_*`` (1 = member) are values on
the voxel columns. Images (ImageNet, separate from BData) live under ``images/training`` and
``images/test`` (``--images DIR`` when elsewhere). BData has no session field: ``session`` is the
DataType (1, 2, 3), so that (session, run) identifies a run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfstore import _io
from nfstore.errors import MissingFileError, ReaderError
from nfstore.names import SPLIT, STIMULUS, VOXEL_I, VOXEL_J, VOXEL_K
from nfstore.readers._rois import union_aliases
from nfstore.readers.base import (
    Block,
    RawSubject,
    Reader,
    StimulusTable,
    contiguous_blocks,
    repeat_index,
)

NAME = "god"
SPLITS = {1: "train", 2: "test", 3: "imagery"}
FOLDERS = {1: "training", 2: "test"}
VOXEL_MM = 3.0
BLOCK_ROWS = 1024


@dataclass(frozen=True)
class Options:
    """GOD ingest options.

    Attributes
    ----------
    images : str, optional
        Folder holding ``training/`` and ``test/`` ImageNet images (default ``RAW_ROOT/images``).
    block_rows : int
        Rows read and written at a time (whole runs; a run longer than this is one block).
    """

    images: str | None = field(default=None, metadata={
        "help": "folder with training/ and test/ images [RAW_ROOT/images]"})
    block_rows: int = BLOCK_ROWS


def decode_stimulus(value: float, datatype: int) -> str:
    """``1518878.014910`` -> ``n01518878_14910`` (perception) or ``n01518878`` (imagery).

    The float encodes ``synset.imagenum`` with a 6-digit fraction; it is decoded by rounding,
    never from its decimal string.
    """
    synset = int(value)
    if datatype == 3:
        return f"n{synset:08d}"
    return f"n{synset:08d}_{int(round((value - synset) * 1e6))}"


def images_dir(root: Path, options: Any) -> Path:
    return Path(options.images) if options.images else root / "images"


def _text(values: Any) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v)
            for v in np.asarray(values).ravel().tolist()]


def _bdata_layout(path: Path) -> tuple[str, str, list[str], np.ndarray, tuple[int, int]]:
    """Dataset and metadata group names, metadata keys, values (n_keys, n_columns), shape."""
    import h5py

    with _io.reading(path, "BData HDF5"), h5py.File(path, "r") as f:
        names = sorted(f.keys())
        dkey = next((k for k in ("dataset", "dataSet") if k in f), None)
        mkey = next((k for k in ("metadata", "metaData") if k in f), None)
        if dkey is None or mkey is None:
            raise ReaderError(f"{path}: expected BData groups 'dataset' (or 'dataSet') and "
                              f"'metadata' (or 'metaData'); found {names}")
        if "key" not in f[mkey] or "value" not in f[mkey]:
            raise ReaderError(f"{path}: expected {mkey}/key and {mkey}/value; found "
                              f"{sorted(f[mkey].keys())}")
        keys = _text(f[mkey]["key"][()])
        value = np.asarray(f[mkey]["value"][()], dtype=np.float64)
        shape, dtype = tuple(f[dkey].shape), f[dkey].dtype
    if dtype.kind != "f":
        raise ReaderError(f"{path}: expected a float {dkey} (float16, float32 or float64); "
                          f"found {dtype}")
    if len(shape) != 2:
        raise ReaderError(f"{path}: expected a 2-D {dkey} (samples x columns); found {shape}")
    if value.shape != (len(keys), shape[1]):
        if value.T.shape == (len(keys), shape[1]):
            value = value.T
        else:
            raise ReaderError(f"{path}: expected {mkey}/value of shape ({len(keys)}, {shape[1]}); "
                              f"found {value.shape}")
    return dkey, mkey, keys, value, (int(shape[0]), int(shape[1]))


def _column(path: Path, keys: list[str], value: np.ndarray, names: tuple[str, ...]) -> int:
    for name in names:
        if name in keys:
            cols = np.flatnonzero(value[keys.index(name)] == 1)
            if cols.size != 1:
                raise ReaderError(f"{path}: expected one column marked '{name}'; found "
                                  f"{cols.size}")
            return int(cols[0])
    raise ReaderError(f"{path}: expected metadata key {' or '.join(repr(n) for n in names)}; "
                      f"found {keys}")


def _read_columns(path: Path, dkey: str, cols: list[int]) -> np.ndarray:
    import h5py

    with _io.reading(path, "BData HDF5"), h5py.File(path, "r") as f:
        return np.stack([f[dkey][:, c] for c in cols], axis=1)


def _load_rows(path: Path, dkey: str, start: int, stop: int, voxels: np.ndarray) -> np.ndarray:
    import h5py

    with _io.reading(path, "BData HDF5"), h5py.File(path, "r") as f, np.errstate(over="ignore"):
        return np.asarray(f[dkey][start:stop], dtype=np.float32)[:, voxels]  # inf if too big


def _grid(path: Path, keys: list[str], value: np.ndarray, voxels: np.ndarray
          ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Grid indices on the 3 mm grid (from the smallest coordinate) and the mm values."""
    n = voxels.size
    if not all(k in keys for k in ("voxel_x", "voxel_y", "voxel_z")):
        minus = np.full(n, -1, np.int64)
        return {VOXEL_I: minus, VOXEL_J: minus.copy(), VOXEL_K: minus.copy()}, {}
    mm = [value[keys.index(k)][voxels] for k in ("voxel_x", "voxel_y", "voxel_z")]
    origin = [float(np.nanmin(m)) for m in mm]
    idx = [(m - o) / VOXEL_MM for m, o in zip(mm, origin)]
    on_grid = all(np.all(np.abs(i - np.rint(i)) < 0.25) for i in idx)
    coords = {name: np.rint(i).astype(np.int64) if on_grid else np.full(n, -1, np.int64)
              for name, i in zip((VOXEL_I, VOXEL_J, VOXEL_K), idx)}
    coords.update({f"voxel_{a}_mm": m.astype(np.float64) for a, m in zip("xyz", mm)})
    return coords, {"grid_origin_mm": origin, "voxel_size_mm": VOXEL_MM, "on_grid": on_grid}


def _check_images(base: Path, path: Path, stems: np.ndarray, datatype: np.ndarray) -> None:
    """Every image a train or test trial shows must be under ``base`` (.JPEG, .jpg or .png).

    Parameters
    ----------
    stems : ndarray
        object (n_trials,), image file names without suffix.
    datatype : ndarray
        int64 (n_trials,), 1 train, 2 test, 3 imagery (no image file).
    """
    wanted = sorted({(FOLDERS[d], s) for s, d in zip(stems, datatype) if d in FOLDERS})
    missing = [base / f / f"{s}.JPEG" for f, s in wanted
               if not any((base / f / f"{s}{x}").is_file() for x in (".JPEG", ".jpg", ".png"))]
    if missing:
        raise MissingFileError(f"{missing[0]}: missing image referenced by {path.name} "
                               f"({len(missing)} missing); pass images=DIR if they live "
                               f"elsewhere")


def _rois(keys: list[str], value: np.ndarray, voxels: np.ndarray
          ) -> tuple[list[str], np.ndarray]:
    """ROI names (the ``ROI_*`` metadata keys, then aliases) and masks, bool (n_rois, n_voxels).

    ``value`` is the metadata value matrix (n_keys, n_columns); ``voxels`` the voxel columns.
    """
    roi_keys = [k for k in keys if k.startswith("ROI_")]
    by_name = {k: value[keys.index(k)][voxels] == 1 for k in roi_keys}
    a_names, a_masks = union_aliases(by_name, {k[4:]: (k,) for k in roi_keys})
    return roi_keys + a_names, np.array([by_name[k] for k in roi_keys] + a_masks,
                                        dtype=bool).reshape(-1, voxels.size)


class GODReader(Reader):
    """Generic Object Decoding (BData HDF5, see the module docstring)."""

    name = NAME
    Options = Options
    normalization = "run"
    subject_regex = r"(?:sub-|subject)?0*([1-9]\d*)"
    subject_template = "sub-{n:02d}"
    subject_examples = "GOD subjects like 1 or sub-01"
    subject_pattern = r"sub-0[1-5]"

    def list_subjects(self, root: Path) -> list[str]:
        """Subjects with a ``Subject<n>.h5`` file at ``root``."""
        return sorted(self.subject_name(m.group(1)) for p in root.glob("Subject*.h5")
                      if (m := re.fullmatch(r"Subject(\d+)\.h5", p.name)))

    def synth_config(self) -> type:
        from nfstore.synth.god import GODSynthConfig

        return GODSynthConfig

    def synthesize(self, out: Path, config: Any) -> dict[str, float]:
        from nfstore.synth.god import synth_god

        return synth_god(out, config)

    def stimulus_table(self, root: Path, options: Any = None) -> StimulusTable:
        """Every image under ``images/{training,test}`` as ``<name>/<stem>``."""
        options = options if options is not None else Options()
        base = images_dir(root, options)
        if not base.is_dir():
            raise MissingFileError(f"{base}: missing folder; expected the GOD images in training/ "
                                   f"and test/ (pass images=DIR if they live elsewhere)")
        files = sorted(p for folder in FOLDERS.values() for p in (base / folder).glob("*")
                       if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        return StimulusTable(
            dataset=self.name,
            stimulus=np.array([f"{self.name}/{p.stem}" for p in files], dtype=object),
            file=np.array([str(p.relative_to(base)) for p in files], dtype=object),
            index=np.full(len(files), -1, np.int64), root=base.resolve())

    def open_subject(self, root: Path, subject: str, options: Any = None) -> RawSubject:
        """Read the BData layout of one GOD subject and check it against the images."""
        options = options if options is not None else Options()
        subject = self.subject_name(subject)
        path = _io.require_file(root / f"Subject{int(subject[4:])}.h5",
                                f"the GOD BData file of {subject}")
        dkey, mkey, keys, value, _ = _bdata_layout(path)
        if "VoxelData" not in keys:
            raise ReaderError(f"{path}: expected metadata key 'VoxelData'; found {keys}")
        voxels = np.flatnonzero(value[keys.index("VoxelData")] == 1)
        if voxels.size == 0:
            raise ReaderError(f"{path}: expected columns marked 'VoxelData'; found none")
        cols = [_column(path, keys, value, n)
                for n in (("DataType",), ("Run",), ("stimulus_id", "Label"))]
        block_col = _column(path, keys, value, ("Block",)) if "Block" in keys else None
        fields = _read_columns(path, dkey, cols + ([block_col] if block_col is not None else []))
        datatype, run = fields[:, 0].astype(np.int64), fields[:, 1].astype(np.int64)
        bad = sorted(set(datatype.tolist()) - set(SPLITS))
        if bad:
            raise ReaderError(f"{path}: expected DataType values 1, 2 or 3; found {bad}")
        stems = np.array([decode_stimulus(v, d) for v, d in zip(fields[:, 2], datatype)],
                         dtype=object)

        base = images_dir(root, options)
        _check_images(base, path, stems, datatype)
        trials = pd.DataFrame({
            STIMULUS: np.array([f"{self.name}/{s}" for s in stems], dtype=object),
            SPLIT: np.array([SPLITS[d] for d in datatype], dtype=object),
            "session": datatype, "run": run, "repeat": repeat_index(stems)})
        if block_col is not None:
            trials["block"] = fields[:, 3].astype(np.int64)

        roi_names, roi_mask = _rois(keys, value, voxels)
        coords, grid_attrs = _grid(path, keys, value, voxels)
        group = datatype * 10**6 + run
        blocks = [Block(f"rows {a}-{b - 1}", a, b,
                        (lambda a=a, b=b: _load_rows(path, dkey, a, b, voxels)), (path,))
                  for a, b in contiguous_blocks(group, options.block_rows)]
        return RawSubject(
            dataset=self.name, subject=subject, trials=trials, norm_group=group,
            voxels=coords, roi_names=roi_names, roi_mask=roi_mask,
            blocks=blocks,
            attrs={"bdata_layout": [dkey, mkey],
                   "images_root": str(base.resolve()), **grid_attrs,
                   "source_files": [_io.file_record(path, root)],
                   "session_meaning": "DataType (1 train, 2 test, 3 imagery); BData has no "
                                      "sessions"},
            normalization={"method": "zscore", "group": "run (DataType, Run)", "ddof": 0,
                           "statistics_from": "run"},
            norm_fit=np.ones(len(trials), bool),
        )
