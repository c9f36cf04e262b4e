"""Checks of an uploaded voxel vector (``.npy``) before a job decodes it.

The ``.npy`` header (magic, version, dtype, shape) is read and checked against the subject's
voxel count and the file's byte length before any array is made, so a 200-byte file whose
header claims 10**12 values is a one-line 400, never an allocation; pickles are never loaded.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from nfserve.data import BadRequest, NotFound

MAX_UPLOAD = 16 * 2**20  # bytes of one uploaded .npy


def npy_header(raw: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """The header of a ``.npy`` file held in ``raw``.

    Returns
    -------
    shape : tuple of int
    fortran_order : bool
    dtype : numpy.dtype
    offset : int
        Where the array data starts in ``raw`` (bytes).
    """
    f = io.BytesIO(raw)
    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npy_format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as err:
        raise BadRequest(f"file: not a plain .npy array ({' '.join(str(err).split())[:120]})"
                         ) from None
    except (OSError, EOFError):
        raise BadRequest("file: not a .npy file") from None
    return tuple(int(n) for n in shape), bool(fortran), np.dtype(dtype), f.tell()


def check_upload(raw: bytes, subject: str, ckpt: Path) -> np.ndarray:
    """The uploaded betas of ``subject`` as float32, shape (n_voxels,), checked against the
    checkpoint's adapter for ``subject``.

    Raises
    ------
    BadRequest
        Not a plain ``.npy`` float vector of the subject's voxel count with as many data
        bytes as its header says, or with values that are not finite.
    NotFound
        The checkpoint has no adapter for ``subject``.
    """
    from nftrain import checkpoint

    model, _, _ = checkpoint.load(ckpt)
    if subject not in model.spec.subjects:
        raise NotFound(f"subject: the checkpoint has no adapter for {subject[:40]!r}; it "
                       f"has {list(model.spec.subjects)}")
    want = int(model.spec.n_voxels[model.spec.subjects.index(subject)])
    shape, _, dtype, offset = npy_header(raw)
    if dtype.hasobject:
        raise BadRequest(f"file: not a plain .npy array (dtype {dtype} holds Python objects)")
    if dtype.kind != "f" or shape != (want,):
        raise BadRequest(f"file: expected float values of shape ({want},) for {subject}; "
                         f"got {dtype} {shape}")
    if len(raw) - offset != want * dtype.itemsize:
        raise BadRequest(f"file: expected {want * dtype.itemsize} data bytes for {dtype} "
                         f"{shape}; found {len(raw) - offset}")
    x = np.load(io.BytesIO(raw), allow_pickle=False)
    if not np.isfinite(x).all():
        raise BadRequest(f"file: {int((~np.isfinite(x)).sum())} values are not finite")
    return x.astype(np.float32)
