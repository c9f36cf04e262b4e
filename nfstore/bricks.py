"""Image bricks: many stimulus images in one array file, addressed by row.

A stimulus table row with ``index >= 0`` names a row of a brick. The format is found from the
file itself, so the same code reads every source of a dataset:

- NSD release: HDF5 dataset ``imgBrick``, (N, H, W, 3) uint8.
- MindEye2 bundle: HDF5 dataset ``images``, (N, 3, H, W) float16 in [0, 1]; pixels are
  ``round(x * 255)``, transposed to HWC (the bundle's makers divided uint8 images by 255).
- Brain-Diffuser arrays: ``.npy`` (N, H, W, 3), float64 holding uint8 values; read through a
  memory map, rounded and clipped to 0..255 (equal to the ``astype(np.uint8)`` its scripts
  use, for the integer values the files hold).

Every reader returns uint8 pixels of shape (n, H, W, 3).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from nfstore.errors import MissingFileError, ReaderError

HDF5_KEYS = ("imgBrick", "images")  # NSD release, MindEye2 bundle


class Brick:
    """An open image brick (an HDF5 dataset or a memory-mapped ``.npy`` array).

    Parameters
    ----------
    path : path of the brick file

    Attributes
    ----------
    shape : (N, H, W, 3), the shape of the pixels it holds
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"{self.path}: missing stimulus file; the store refers to it "
                                   f"(was the raw dataset moved?)")
        self._h5: Any = None
        self._chw = False
        try:
            self._data = self._open()
        except ReaderError:
            raise
        except (OSError, ValueError) as err:
            raise ReaderError(f"{self.path}: expected an image brick (HDF5 or .npy); found "
                              f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"
                              ) from None
        shape = tuple(self._data.shape)
        if len(shape) != 4 or shape[1 if self._chw else 3] != 3:
            self.close()
            raise ReaderError(f"{self.path}: expected images of shape "
                              f"{'(N, 3, H, W)' if self._chw else '(N, H, W, 3)'}; "
                              f"found {shape}")
        n, h, w = (shape[0], shape[2], shape[3]) if self._chw else shape[:3]
        self.shape = (int(n), int(h), int(w), 3)

    def _open(self) -> Any:
        if self.path.suffix == ".npy":
            data = np.load(self.path, mmap_mode="r", allow_pickle=False)
            if data.dtype.kind not in "uif":
                raise ReaderError(f"{self.path}: expected numeric image arrays; found dtype "
                                  f"{data.dtype}")
            return data
        import h5py

        self._h5 = h5py.File(self.path, "r")
        for key in HDF5_KEYS:
            if key in self._h5:
                self._chw = key == "images"
                return self._h5[key]
        keys = sorted(self._h5.keys())
        self.close()
        raise ReaderError(f"{self.path}: expected an HDF5 dataset {' or '.join(HDF5_KEYS)}; "
                          f"found {keys}")

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Pixels of ``rows`` (int array of shape (n,), any order, repeats allowed), uint8 array
        of shape (n, H, W, 3)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise ReaderError(f"{self.path}: expected rows 0..{self.shape[0] - 1}; found "
                              f"{int(rows.min())}..{int(rows.max())}")
        order = np.argsort(rows, kind="stable")
        uniq, inverse = np.unique(rows[order], return_inverse=True)
        block = _to_uint8(self._read(uniq), self._chw)
        out = np.empty((rows.size, *block.shape[1:]), np.uint8)
        out[order] = block[inverse]
        return out

    def _read(self, uniq: np.ndarray) -> np.ndarray:
        """The stored rows ``uniq`` (increasing, unique): a memory map is indexed at once; an
        HDF5 dataset is read in runs of consecutive rows (one slice per run, far faster than
        h5py's point selection on chunked data)."""
        if self._h5 is None:
            return np.asarray(self._data[uniq])
        if uniq.size == 0:
            return np.empty((0, *self._data.shape[1:]), self._data.dtype)
        cuts = np.flatnonzero(np.diff(uniq) != 1) + 1
        return np.concatenate([self._data[int(run[0]):int(run[-1]) + 1]
                               for run in np.split(uniq, cuts)])

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> Brick:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def _float16_table() -> np.ndarray:
    """round(x * 255) clipped to 0..255 for every float16 bit pattern (NaN -> 0), uint8 (65536,)."""
    x = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _to_uint8(block: np.ndarray, chw: bool) -> np.ndarray:
    """uint8 HWC pixels of a block read from a brick, (n, H, W, 3)."""
    if chw:
        block = np.moveaxis(block, 1, -1)
        if block.dtype == np.float16:  # a table lookup: the same values, several times faster
            return _float16_table()[block.view(np.uint16)]
        return np.clip(np.rint(block.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if block.dtype == np.uint8:
        return block
    return np.clip(np.rint(block), 0, 255).astype(np.uint8)


def brick_shape(path: str | Path) -> tuple[int, int, int, int]:
    """(N, H, W, 3) of the pixels in the brick at ``path``."""
    with Brick(path) as b:
        return b.shape


def read_brick_rows(rows: np.ndarray, path: str | Path) -> np.ndarray:
    """Pixels of ``rows`` of the brick at ``path``, uint8 array of shape (n, H, W, 3)."""
    with Brick(path) as b:
        return b.rows(rows)
