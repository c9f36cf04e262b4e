"""Low-level targets in the store: ``nf embed --model pixels [--size 32]``.

Downsampled RGB pixels of every stimulus with an image, cached like embeddings at
``/embeddings/pixels`` (``stimulus (row,)``, ``embedding (row, size*size*3)`` float32 in [0, 1],
row-major (y, x, rgb)); no weights needed. Resampling: PIL ``BOX`` (area averaging) from the
stimulus image; attributes record size and method. Built aside and swapped in (one call).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import zarr

from nfstore import _layout
from nfstore._names import DATASETS
from nfstore._version import __version__
from nfstore.errors import OptionError

PIXELS = "pixels"


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, H, W, 3) -> float32 (n, size*size*3) in [0, 1] by area averaging."""
    from PIL import Image

    out = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BOX))
                    for im in images])
    return (out.reshape(len(images), -1) / 255.0).astype(np.float32)


def upsample(flat: np.ndarray, size: int, out_size: int) -> np.ndarray:
    """float (n, size*size*3) -> uint8 (n, out_size, out_size, 3), bicubic (clipped)."""
    from PIL import Image

    imgs = np.clip(np.rint(flat.reshape(-1, size, size, 3) * 255), 0, 255).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(im).resize((out_size, out_size),
                                                           Image.Resampling.BICUBIC))
                     for im in imgs])


def embed_pixels(location: str | Path, size: int = 32, batch: int = 256) -> dict[str, float]:
    """Cache the downsampled pixels of every dataset stimulus that has an image."""
    import nfstore

    if not 4 <= size <= 256:
        raise OptionError(f"--size: expected 4..256 pixels; got {size}")
    t0 = time.perf_counter()
    path = _layout.local_store_path(location)
    store = nfstore.open_store(path)
    ids: list[str] = []
    rows: list[np.ndarray] = []
    for ds in [t for t in store.stimulus_tables() if t in DATASETS]:
        tab = store.stimuli(ds)
        have = [s for s, f in zip(tab["stimulus"].values, tab["file"].values) if f]
        for a in range(0, len(have), batch):
            part = np.array(have[a:a + batch], dtype=object)
            px = np.asarray(store.images(part, size=(4 * size, 4 * size)).values)
            rows.append(downsample(px, size))
            ids += part.tolist()
    X = np.concatenate(rows) if rows else np.zeros((0, size * size * 3), np.float32)
    with _layout.writing(path, "nf embed --model pixels"):
        staged = _layout.staging_path(path, f"embeddings.{PIXELS}")
        _layout.discard(staged)
        staged.parent.mkdir(parents=True, exist_ok=True)
        g = zarr.open_group(str(staged), mode="w", zarr_format=3)
        g.create_array("stimulus", shape=(len(ids),), dtype=str, dimension_names=("stimulus",))
        g["stimulus"][:] = np.array(ids, dtype=object)
        g.create_array("embedding", data=X, chunks=(256, X.shape[1]),
                       dimension_names=("stimulus", "feature"))
        import hashlib

        prep = {"size": size, "resample": "PIL BOX (area) from the stimulus image (one-file "
                "datasets first resized to 4x the size, PIL bicubic)",
                "layout": "row-major (y, x, rgb), values in [0, 1]"}
        g.attrs.update({"model": PIXELS, "size": size, "preprocessing": prep,
                        "weights": {"layout": "none (no network)", "path": "", "files": []},
                        "weights_sha256": hashlib.sha256(repr(sorted(prep.items())).encode()
                                                         ).hexdigest(), "dtype": "float32",
                        "feature_shape": [X.shape[1]], "count": len(ids),
                        "nf_version": __version__})
        _layout.ensure_group(path, "embeddings")
        _layout.commit(path, staged, f"embeddings/{PIXELS}")
    return {"stimuli": len(ids), "seconds": time.perf_counter() - t0}
