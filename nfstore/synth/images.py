"""Writing synthetic stimulus images as files (JPEG/PNG) for the one-file-per-image datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_images(paths: list[Path], pixels: np.ndarray) -> None:
    """Write ``pixels`` (n, H, W, 3) uint8 to ``paths`` (format from the suffix, JPEG q=95)."""
    from PIL import Image

    for path, img in zip(paths, pixels):
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
        Image.fromarray(img).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
