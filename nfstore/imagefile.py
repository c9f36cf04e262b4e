"""Decoding image files into the one RGB picture every consumer sees.

Fingerprints (:mod:`nfstore.copies`), embeddings (``nf embed``), pixel caches and
``Store.images`` all decode through :func:`open_rgb` / :func:`to_rgb`, so a picture looks the
same to each of them:

- transparency is composited onto :data:`BACKGROUND` (mid-grey), not dropped: a picture carried
  by the alpha channel -- black strokes on a transparent ground, or a logo whose RGB is white
  everywhere and whose shape lives only in alpha -- stays visible whether it is dark or light;
  an opaque RGBA file decodes to exactly its RGB;
- 16-bit and integer grey images are scaled to 8 bits;
- a file PIL refuses (unreadable, truncated, or larger than PIL's decompression-bomb limit,
  ``PIL.Image.MAX_IMAGE_PIXELS`` x 2 pixels) is a one-line :class:`~nfstore.errors.ReaderError`
  naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nfstore.errors import ReaderError

if TYPE_CHECKING:
    from PIL import Image as PILImage

BACKGROUND = (128, 128, 128)  # transparent pixels are composited onto this RGB colour
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(im: PILImage.Image) -> PILImage.Image:
    """The picture of a decoded PIL image as mode ``RGB`` (alpha composited on
    :data:`BACKGROUND`, 16-bit grey scaled to 8 bits).

    Parameters
    ----------
    im : PIL.Image.Image of any mode, shape (H, W[, C])

    Returns
    -------
    PIL.Image.Image, mode RGB, size (W, H)
    """
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
                               ).convert("RGB")
    if im.mode == "P" and "transparency" in im.info or im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        if rgba.getextrema()[3][0] == 255:  # opaque: the RGB as it is
            return rgba.convert("RGB")
        ground = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(ground, rgba).convert("RGB")
    return im.convert("RGB")


def open_rgb(path: str | Path, draft: int | None = None) -> PILImage.Image:
    """Decode an image file as RGB (see :func:`to_rgb`); errors are one line naming the file.

    Parameters
    ----------
    path : image file (JPEG, PNG, BMP, WebP, ...)
    draft : int, optional
        Let the JPEG decoder skip detail beyond about this many pixels per side (decoding is
        then several times faster; the picture is at least this size where the file is).

    Returns
    -------
    PIL.Image.Image, mode RGB, loaded (the file is closed)

    Raises
    ------
    ReaderError
        ``<path>: expected an image PIL can decode ...; found <error>``.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            if draft is not None and im.format == "JPEG":
                im.draft("RGB", (draft, draft))
            out = to_rgb(im)
            out.load()
            return out
    except Image.DecompressionBombError as err:
        raise ReaderError(f"{path}: expected an image of at most {2 * Image.MAX_IMAGE_PIXELS} "
                          f"pixels (PIL's decompression-bomb limit); found "
                          f"{' '.join(str(err).split())[:160]}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ReaderError(f"{path}: expected an image PIL can decode; found "
                          f"{type(err).__name__}: {' '.join(str(err).split())[:160]}") from None


__all__ = ["BACKGROUND", "to_rgb", "open_rgb"]
