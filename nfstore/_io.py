"""Guarded file access: every failure becomes a one-line :class:`ReaderError` naming the file.

Readers call these helpers instead of nibabel, h5py and scipy.io directly, so that a missing,
truncated or corrupt file is reported as ``<file>: <what was expected>; <what was found>``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from nfstore.errors import MissingFileError, NFError, ReaderError

CHECKSUM_LIMIT = 16 * 2**20  # files up to this size get a sha256; larger ones size + mtime


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise :class:`MissingFileError` naming ``what``."""
    if not path.is_file():
        raise MissingFileError(f"{path}: missing file; expected {what}")
    return path


@contextmanager
def reading(path: Path, kind: str) -> Iterator[None]:
    """Turn any low-level error raised while reading ``path`` into a one-line ReaderError."""
    try:
        yield
    except NFError:  # already a user-facing message (ReaderError, OptionError, ...)
        raise
    except FileNotFoundError as err:
        raise MissingFileError(f"{path}: missing file; expected {kind}") from err
    except Exception as err:  # any failure inside a file read means the file is not usable
        detail = " ".join(str(err).replace(str(path), "").split())
        raise ReaderError(f"{path}: cannot read as {kind} ({type(err).__name__}"
                          f"{': ' + detail if detail else ''})") from err


def nifti_header(path: Path) -> tuple[tuple[int, ...], np.ndarray, Any]:
    """Return ``(shape, affine, image)`` of a NIfTI file without reading its data."""
    import nibabel as nib

    require_file(path, "a NIfTI image")
    with reading(path, "NIfTI"):
        img = nib.load(str(path))
        return tuple(int(s) for s in img.shape), np.asarray(img.affine), img


def nifti_data(path: Path, dtype: str | None = None) -> np.ndarray:
    """Read a whole NIfTI-1 or NIfTI-2 image as nibabel does (``np.asanyarray(img.dataobj)``:
    the on-disk dtype, or floats when the header scales the values).

    ``.nii.gz`` files are inflated in one call with ISA-L (``isal``, about 1.5x faster than
    nibabel's streaming gzip reader) when it is installed, and parsed by the image class
    nibabel chose from the header; the array is the same.

    Returns
    -------
    data : array of shape (X, Y, Z[, T]) in the file's dtype (or ``dtype``)
    """
    _, _, img = nifti_header(path)
    with reading(path, "NIfTI"):
        if path.name.endswith(".nii.gz"):
            img = _inflated(path, img)
        data = np.asanyarray(img.dataobj)
        if dtype is not None:
            data = data.astype(dtype, copy=False)
        return data


def _inflated(path: Path, img: Any) -> Any:
    """``img`` re-read from the whole inflated file with ISA-L, if installed and the image is
    NIfTI-1 or NIfTI-2 (the header decides which); else ``img`` itself."""
    import nibabel as nib

    try:
        from isal import igzip
    except ImportError:
        return img
    if type(img) not in (nib.Nifti1Image, nib.Nifti2Image):
        return img
    return type(img).from_bytes(igzip.decompress(path.read_bytes()))


def same_space(path: Path, img: Any, ref_path: Path, ref: Any, atol: float = 1e-3) -> None:
    """Check that two NIfTI images lie on the same voxel grid in the same orientation.

    The affines (``img.affine``: sform, else qform, as nibabel gives them) must agree within
    ``atol`` mm; when either header has neither an sform nor a qform, only the voxel sizes are
    compared. A mismatch is a one-line :class:`ReaderError` naming ``path``.

    Parameters
    ----------
    path, ref_path : Path
        The image checked and the reference it must match (for the message).
    img, ref : nibabel images (headers only are used)
    """
    def oriented(im: Any) -> bool:
        h = im.header
        return "sform_code" in h and (int(h["sform_code"]) > 0 or int(h["qform_code"]) > 0)

    if oriented(img) and oriented(ref):
        a, b = np.asarray(img.affine, float), np.asarray(ref.affine, float)
        if not np.allclose(a, b, rtol=0.0, atol=atol):
            raise ReaderError(f"{path}: expected the affine of {ref_path.name} "
                              f"{_matrix(b)}; found {_matrix(a)}")
        return
    za = np.asarray(img.header.get_zooms()[:3], float)
    zb = np.asarray(ref.header.get_zooms()[:3], float)
    if not np.allclose(za, zb, rtol=0.0, atol=atol):
        raise ReaderError(f"{path}: expected the voxel size of {ref_path.name} "
                          f"{zb.round(4).tolist()} mm; found {za.round(4).tolist()} mm")


def _matrix(affine: np.ndarray) -> str:
    """The top 3 rows of an affine on one line, 4 decimals."""
    return str((np.round(affine[:3], 4) + 0.0).tolist())  # + 0.0: no "-0.0"


def read_text(path: Path, what: str) -> str:
    """The text of ``path`` decoded as UTF-8 (a byte-order mark is dropped); other bytes are a
    one-line :class:`ReaderError` naming the file and the first offending byte."""
    require_file(path, what)
    with reading(path, what):
        raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ReaderError(f"{path}: expected UTF-8 text ({what}); found byte "
                          f"0x{raw[err.start]:02x} at offset {err.start}") from None


def load_mat(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Load the named variables of a MATLAB v5 file; a missing key is a ReaderError."""
    import scipy.io

    require_file(path, "a MATLAB .mat file")
    with reading(path, "MATLAB v5 .mat"):
        mat = scipy.io.loadmat(str(path), variable_names=list(keys))
    missing = [k for k in keys if k not in mat]
    if missing:
        with reading(path, "MATLAB v5 .mat"):
            found = sorted(k for k in scipy.io.whosmat(str(path)))
        names = [f[0] for f in found] if found and isinstance(found[0], tuple) else found
        raise ReaderError(f"{path}: expected variables {list(keys)}; missing {missing}, "
                          f"found {names}")
    return {k: np.asarray(mat[k]) for k in keys}


def file_record(path: Path, root: Path) -> dict[str, Any]:
    """Provenance record of one source file: relative path, size, and sha256 or mtime."""
    st = path.stat()
    rec: dict[str, Any] = {"path": os.path.relpath(path, root), "size": int(st.st_size)}
    if st.st_size <= CHECKSUM_LIMIT:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
        rec["sha256"] = h.hexdigest()
    else:
        rec["mtime"] = float(st.st_mtime)
    return rec
