"""NSD betas and ROI atlases: headers, lazy voxel loads and ROI masks (used by the NSD reader)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nfstore import _io
from nfstore.errors import ReaderError
from nfstore.readers._rois import NSD_ATLAS_LABELS, alias_rois, atlas_rois, read_ctab

SCALE = 300.0  # int16 betas are percent signal change x 300
BETA_DTYPES = "int16 (as released) or float16, float32, float64"


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    """Betas must be int16 (the release: percent signal change x 300) or floats in the same
    units; anything else (complex, other integers, bool) is refused before anything is read."""
    dtype = np.dtype(dtype)
    if not ((dtype.kind == "i" and dtype.itemsize == 2) or dtype.kind == "f"):
        raise ReaderError(f"{path}: expected betas of dtype {BETA_DTYPES}; found {dtype}")


def _beta_header(path: Path) -> tuple[tuple[int, int, int], int, Any]:
    """Spatial grid (X, Y, Z), trial count and NIfTI image (None for HDF5) of one betas file,
    from its header, after checking its dtype."""
    if path.name.endswith(".nii.gz"):
        shape, _, img = _io.nifti_header(path)
        if len(shape) != 4:
            raise ReaderError(f"{path}: expected a 4-D (X, Y, Z, trials) image; found {shape}")
        _check_dtype(path, img.header.get_data_dtype())
        return (shape[0], shape[1], shape[2]), shape[3], img
    import h5py

    with _io.reading(path, "HDF5"), h5py.File(path, "r") as f:
        if "betas" not in f:
            raise ReaderError(f"{path}: expected dataset 'betas'; found {sorted(f.keys())}")
        shape, dtype = f["betas"].shape, f["betas"].dtype
    if len(shape) != 4:
        raise ReaderError(f"{path}: expected /betas of shape (trials, Z, Y, X); found {shape}")
    _check_dtype(path, dtype)
    return (shape[3], shape[2], shape[1]), shape[0], None


def _load_block(path: Path, ijk: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Betas of the selected voxels, float32 (n_trials, n_voxels) in percent signal change.

    Float values beyond float32's range become inf (refused or replaced by the ingest's
    ``nonfinite`` policy, never stored)."""
    i, j, k = ijk
    if path.name.endswith(".nii.gz"):
        data = _io.nifti_data(path)  # (X, Y, Z, T), Fortran order as stored
        x, y, _, t = data.shape
        flat = data.reshape(-1, t, order="F").T  # (T, X*Y*Z) C-contiguous view when F-ordered
        vals = np.take(flat, i + x * (j + y * k), axis=1)
    else:
        import h5py

        with _io.reading(path, "HDF5"), h5py.File(path, "r") as f:
            d = f["betas"]
            box = d[:, k.min():k.max() + 1, j.min():j.max() + 1, i.min():i.max() + 1]
            vals = box[:, k - k.min(), j - j.min(), i - i.min()]
    with _io.reading(path, "NSD betas"), np.errstate(over="ignore", invalid="ignore"):
        return np.multiply(vals, np.float32(1 / SCALE), dtype=np.float32)  # one pass


def _read_rois(roi_dir: Path, root: Path, ref: tuple[Path, Any], ijk: tuple[np.ndarray, ...]
               ) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Native and alias ROI masks over the selected voxels, plus the prf-visualrois labels.

    ``ref`` is nsdgeneral's path and image: every atlas must share its grid and affine."""
    grid = tuple(int(n) for n in ref[1].shape[:3])
    names: list[str] = ["nsdgeneral"]
    masks: list[np.ndarray] = [np.ones(ijk[0].size, bool)]
    by_label: dict[str, np.ndarray] = {}
    prf: np.ndarray | None = None
    for path in sorted(roi_dir.glob("*.nii.gz")):
        atlas = path.name[: -len(".nii.gz")]
        if atlas == "nsdgeneral" or atlas.startswith(("lh.", "rh.")):
            continue
        shape, _, img = _io.nifti_header(path)
        if shape[:3] != grid:
            raise ReaderError(f"{path}: expected the nsdgeneral grid {grid}; found {shape}")
        _io.same_space(path, img, *ref)
        values = _io.nifti_data(path)[ijk].astype(np.int64)
        ctab = root / "nsddata/freesurfer/fsaverage/label" / f"{atlas}.mgz.ctab"
        labels = read_ctab(ctab) if ctab.is_file() else NSD_ATLAS_LABELS.get(atlas, {})
        n, m, b = atlas_rois(atlas, values, labels)
        names += n
        masks += m
        for label, mask in b.items():
            by_label.setdefault(label, mask)
        if atlas == "prf-visualrois":
            prf = values
    a_names, a_masks = alias_rois(by_label)
    return names + a_names, np.array(masks + a_masks, dtype=bool), prf
