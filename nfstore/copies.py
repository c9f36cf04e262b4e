"""Copy detection: window fingerprints of an image, and which images are one picture.

Real copies of a stimulus are rarely the same pixels: they are re-encoded, resized, made grey,
brightened, mirrored, cropped -- or the pool holds the uncropped original of which the stimulus
(NSD's COCO pictures, ImageNet pictures) is a square crop. One 64-bit hash of the whole image
misses most of these, so a fingerprint holds several 63-bit hashes, each of one window of the
image:

- ``whole``: the whole image (squeezed to a square);
- ``slides``: for an image more than 5 % wider than high (or higher than wide), squares of side
  the short side, every :data:`SLIDE_STEP` of it along the long side -- where a square crop of it
  (the held-out stimulus) lies;
- ``crops`` (stimuli of datasets, which may be held out; not pool images): squares of
  :data:`CROP_SCALES` of the image, centred and at each corner -- where a crop of it (a pool
  copy) lies.

A hash is the signs of the 63 lowest non-constant 2D DCT coefficients of the window's grey
levels resampled to 32 x 32: it survives re-encoding, resizing, grey conversion and brightness,
and a left-right mirror only flips the signs of the odd horizontal frequencies (:data:`FLIP`),
so mirrored copies are found by comparing with that mask applied. A window too flat to say
anything (grey-level standard deviation under :data:`FLAT_STD`, or over 90 % of its contrast
in its :data:`FLAT_TERMS` strongest terms, as in a plain gradient) gets no hash: blank and flat
images match nothing.

Held-out image ``a`` and used image ``b`` are one picture when, within :data:`MAX_DISTANCE`
bits, mirrored or not: ``a.whole ~ b.whole`` (same picture), ``a.crop ~ b.whole`` (``b`` is a
crop of ``a``) or ``a.whole ~ b.slide`` (``a`` is a square crop of ``b``).

Prints are text: ``w2:<whole>:<slides>:<crops>``, each hash 16 hex digits,
``8000000000000000`` for a window with no hash (:data:`NONE`). Prints written before (one
16-hex-digit ``imagehash.phash``) are *legacy*: they are compared with each other by the old
rule (:data:`LEGACY_MAX_DISTANCE` bits), never with
current prints, and are recomputed by the next ``nf ingest`` or ``nf embed --pool`` of their
table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PREFIX = "w2:"
SIDE = 32  # windows are resampled to SIDE x SIDE grey levels
LOW = 8  # the hash keeps the LOW x LOW lowest DCT frequencies but the constant
WORK_SIDE = 160  # images are reduced to this short side before windows are cut
SLIDE_STEP = 0.02  # slides every 2 % of the short side
CROP_SCALES = (0.78, 0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92)
CROP_ANCHORS = ((0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))  # centre, corners
MAX_DISTANCE = 6  # bits of 63; copies differ by 0-6, windows of distinct pictures by >= 12
LEGACY_MAX_DISTANCE = 3  # bits of the 64-bit pHash of earlier prints
GAP = 4  # a copy within t bits must have no other image at t+1..t+GAP bits
FLAT_STD = 3.0  # grey levels (0-255) of the window's low frequencies
FLAT_TERMS = 3
FLAT_SHARE = 0.9
NONE = np.uint64(1 << 63)  # "no hash" (a hash never sets bit 63)

_FREQ = [(u, v) for u in range(LOW) for v in range(LOW) if (u, v) != (0, 0)]
_U = np.array([u for u, _ in _FREQ])
_V = np.array([v for _, v in _FREQ])
_BITS = (np.uint64(1) << np.arange(len(_FREQ), dtype=np.uint64))
FLIP = np.uint64(int(_BITS[_V % 2 == 1].sum()))  # hash of the mirror image = hash ^ FLIP


def _dct_matrix() -> np.ndarray:
    """Orthonormal DCT-II rows 0..LOW-1 over SIDE samples, shape (LOW, SIDE)."""
    k, n = np.arange(LOW)[:, None], np.arange(SIDE)[None, :]
    m = np.cos(np.pi * (2 * n + 1) * k / (2 * SIDE)) * np.sqrt(2.0 / SIDE)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix()


def window_boxes(width: int, height: int, crops: bool) -> dict[str, np.ndarray]:
    """Windows of an image of the given size, in pixels.

    Returns
    -------
    dict with ``whole`` (1, 4), ``slides`` (n_slides, 4) and ``crops`` (n_crops, 4) arrays of
    (left, top, right, bottom) boxes
    """
    short, long_ = min(width, height), max(width, height)
    boxes = {"whole": np.array([[0.0, 0.0, width, height]])}
    slides = []
    if long_ > 1.05 * short:
        n = int(np.ceil((long_ - short) / (SLIDE_STEP * short))) + 1
        for start in np.linspace(0.0, long_ - short, n):
            slides.append([start, 0.0, start + short, short] if width > height
                          else [0.0, start, short, start + short])
    boxes["slides"] = np.array(slides).reshape(-1, 4)
    sub = []
    if crops:
        for s in CROP_SCALES:
            w, h = s * width, s * height
            sub += [[ax * (width - w), ay * (height - h), ax * (width - w) + w,
                     ay * (height - h) + h] for ax, ay in CROP_ANCHORS]
    boxes["crops"] = np.array(sub).reshape(-1, 4)
    return boxes


def _box_weights(lo: np.ndarray, hi: np.ndarray, size: int) -> np.ndarray:
    """Box-resampling weights of intervals [lo, hi) of a pixel axis into SIDE cells.

    Parameters
    ----------
    lo, hi : float arrays (n,), interval ends in pixels
    size : number of pixels along the axis

    Returns
    -------
    float array (n, SIDE, size): cell value = weights @ pixels (each row sums to 1)
    """
    edges = lo[:, None] + (hi - lo)[:, None] * np.arange(SIDE + 1)[None, :] / SIDE  # (n, S+1)
    k = np.arange(size)[None, None, :]
    overlap = np.minimum(k + 1, edges[:, 1:, None]) - np.maximum(k, edges[:, :-1, None])
    return np.clip(overlap, 0, None) / ((hi - lo) / SIDE)[:, None, None]


def window_hashes(grey: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """63-bit DCT sign hashes of windows of a grey image.

    The window is box-resampled to SIDE x SIDE and its 2D DCT taken, both as one product
    ``(D Ry) grey (D Rx)^T`` per window.

    Parameters
    ----------
    grey : float32 array (H, W), grey levels 0-255
    boxes : array (n, 4) of (left, top, right, bottom) in pixels

    Returns
    -------
    uint64 array (n,), :data:`NONE` for windows too flat to hash
    """
    n = len(boxes)
    if n == 0:
        return np.zeros(0, np.uint64)
    boxes = np.asarray(boxes, np.float64)
    ay = _DCT @ _box_weights(boxes[:, 1], boxes[:, 3], grey.shape[0])  # (n, LOW, H)
    ax = _DCT @ _box_weights(boxes[:, 0], boxes[:, 2], grey.shape[1])  # (n, LOW, W)
    right = grey.astype(np.float64) @ ax.transpose(2, 0, 1).reshape(grey.shape[1], n * LOW)
    right = right.reshape(grey.shape[0], n, LOW).transpose(1, 0, 2)  # (n, H, LOW)
    coef = (ay @ right)[:, _U, _V]  # (n, 63)
    energy = np.sort(coef ** 2, axis=1)[:, ::-1]
    total = energy.sum(1)
    flat = (np.sqrt(total) / SIDE < FLAT_STD) | (
        energy[:, :FLAT_TERMS].sum(1) > FLAT_SHARE * np.maximum(total, 1e-12))
    hashes = ((coef > 0).astype(np.uint64) * _BITS).sum(1, dtype=np.uint64)
    hashes[flat] = NONE
    return hashes


def grey_levels(rgb: np.ndarray) -> np.ndarray:
    """Grey levels of an RGB picture reduced to a short side of at most :data:`WORK_SIDE`.

    Parameters
    ----------
    rgb : uint8 array (H, W, 3) (or (H, W) grey)

    Returns
    -------
    float32 array (h, w)
    """
    from PIL import Image

    im = Image.fromarray(np.asarray(rgb, np.uint8))
    im = im.convert("L") if im.mode != "L" else im
    scale = WORK_SIDE / min(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.Resampling.BOX)
    return np.asarray(im, np.float32)


def fingerprint(rgb: np.ndarray, crops: bool = True) -> str:
    """Window fingerprint of a picture (see the module docstring).

    Parameters
    ----------
    rgb : uint8 array (H, W, 3) or (H, W)
    crops : bool
        Also hash the crop windows (for stimuli that may be held out).

    Returns
    -------
    str, ``w2:<whole>:<slides>:<crops>``
    """
    grey = grey_levels(rgb)
    boxes = window_boxes(grey.shape[1], grey.shape[0], crops)
    parts = [_hex(window_hashes(grey, boxes[k])) for k in ("whole", "slides", "crops")]
    return PREFIX + ":".join(parts)


def _hex(hashes: np.ndarray) -> str:
    return hashes.astype(">u8").tobytes().hex()


def is_current(print_: str) -> bool:
    """Whether a stored print was made by this version (legacy prints are recomputed)."""
    return print_.startswith(PREFIX)


def has_crops(print_: str) -> bool:
    """Whether a current print holds crop windows (see :func:`fingerprint`)."""
    return is_current(print_) and not print_.endswith(":")


@dataclass
class _Windows:
    """Hashes of one kind of window of many prints: ``hashes`` (m,) and ``owner`` (m,)."""

    hashes: np.ndarray
    owner: np.ndarray


def _parse(prints: Sequence[str]) -> tuple[dict[str, _Windows], _Windows]:
    """Current prints split by window kind, and the legacy 64-bit pHashes."""
    kinds = ("whole", "slides", "crops")
    texts: dict[str, list[str]] = {k: [] for k in kinds}
    counts: dict[str, list[int]] = {k: [] for k in kinds}
    current, legacy_v, legacy_o = [], [], []
    for i, p in enumerate(prints):
        if p and p.startswith(PREFIX):
            current.append(i)
            for kind, text in zip(kinds, p[len(PREFIX):].split(":")):
                texts[kind].append(text)
                counts[kind].append(len(text) // 16)
        elif p and len(p) == 16:
            legacy_v.append(int(p, 16))
            legacy_o.append(i)
    out = {}
    for k in kinds:
        h = np.frombuffer(bytes.fromhex("".join(texts[k])), ">u8").astype(np.uint64)
        owner = np.repeat(np.array(current, np.int64), np.array(counts[k] or [0][:0], np.int64))
        keep = h != NONE
        out[k] = _Windows(h[keep], owner[keep])
    return out, _Windows(np.array(legacy_v, np.uint64), np.array(legacy_o, np.int64))


def _near(a: _Windows, b: _Windows, max_distance: int, mirror: bool, two: bool = False,
          rows: int = 64, cols: int = 4096) -> dict[tuple[int, int], int]:
    """Owner pairs of hashes of ``a`` and ``b`` within ``max_distance`` bits (and of the
    mirrored hashes of ``a`` where ``mirror``) -> their least distance, or with ``two`` the
    mean (rounded down) of their two least distances (64 for a missing second); brute force
    in cache-sized blocks (about 3 ns per pair of hashes on one core)."""
    pairs: dict[tuple[int, int], list[int]] = {}
    if a.hashes.size == 0 or b.hashes.size == 0:
        return pairs
    xor = np.empty((rows, cols), np.uint64)
    bits = np.empty((rows, cols), np.uint8)
    for q in ([a.hashes, a.hashes ^ FLIP] if mirror else [a.hashes]):
        for i0 in range(0, q.size, rows):
            qa = q[i0:i0 + rows, None]
            for j0 in range(0, b.hashes.size, cols):
                tb = b.hashes[None, j0:j0 + cols]
                x, d = xor[:qa.shape[0], :tb.shape[1]], bits[:qa.shape[0], :tb.shape[1]]
                np.bitwise_xor(qa, tb, out=x)
                np.bitwise_count(x, out=d)
                if d.min() <= max_distance:
                    r, c = np.nonzero(d <= max_distance)
                    for key, dist in zip(zip(a.owner[i0 + r].tolist(),
                                             b.owner[j0 + c].tolist()), d[r, c].tolist()):
                        best = pairs.setdefault(key, [64, 64])
                        best[:] = sorted([*best, dist])[:2]
    out = {key: (best[0] + best[1]) // 2 if two else best[0] for key, best in pairs.items()}
    return {key: dist for key, dist in out.items() if dist <= max_distance}


def _merge(*found: dict[tuple[int, int], int]) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for f in found:
        for key, dist in f.items():
            out[key] = min(dist, out.get(key, 64))
    return out


def _relations(h: dict[str, _Windows], u: dict[str, _Windows], max_distance: int,
               crops: bool) -> dict[tuple[int, int], int]:
    """(held, used) owner pairs that are one picture by some window relation -> distance."""
    found = [_near(h["whole"], u["whole"], max_distance, mirror=True),
             _near(h["whole"], u["slides"], max_distance, mirror=True)]
    if crops:  # a crop lies between crop windows: two of them must agree
        found.append(_near(h["crops"], u["whole"], max_distance, mirror=True, two=True))
    return _merge(*found)


def _allowed(near: dict[tuple[int, int], int], n: int, max_distance: int) -> np.ndarray:
    """Per held print, the largest distance ``t <= max_distance`` with no neighbour at
    ``t + 1 .. t + GAP`` bits (never under :data:`LEGACY_MAX_DISTANCE`).

    Parameters
    ----------
    near : (held, other) -> distance, for every pair within ``max_distance + GAP``
    n : number of held prints

    Returns
    -------
    int array (n,)
    """
    counts = np.zeros((n, max_distance + GAP + 2), np.int64)
    for (i, _), dist in near.items():
        counts[i, dist] += 1
    allowed = np.full(n, max_distance, np.int64)
    for i in np.flatnonzero(counts[:, LEGACY_MAX_DISTANCE + 1:].any(1)):
        t = max_distance
        while t > LEGACY_MAX_DISTANCE and counts[i, t + 1:t + GAP + 1].any():
            t -= 1
        allowed[i] = t
    return allowed


def copy_pairs(held: Sequence[str], used: Sequence[str], max_distance: int = MAX_DISTANCE,
               crops: bool = True) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)`` where ``used[j]`` is a copy of ``held[i]``.

    Parameters
    ----------
    held, used : sequences of prints (``""`` for none), lengths n_held and n_used
    max_distance : int
        Bits (of 63) within which two window hashes are the same picture. A ratio test
        lowers it for a held print (down to :data:`LEGACY_MAX_DISTANCE`) while other images
        lie just beyond it (within :data:`GAP` more bits): a copy must stand apart from the
        pictures that are merely alike, as plain gratings or faces are.
    crops : bool
        Also find used images that are crops of held ones (needs the held prints' crop
        windows; the costliest test).

    Returns
    -------
    sorted list of (i, j)
    """
    h, h_legacy = _parse(held)
    u, u_legacy = _parse(used)
    near = _relations(h, u, max_distance + GAP, crops)
    others = {(i, -1 - j): d for (i, j), d in _relations(h, h, max_distance + GAP, True).items()
              if i != j}
    allowed = _allowed({**near, **others}, len(held), max_distance)
    found = [key for key, dist in near.items() if dist <= allowed[key[0]]]
    found += list(_near(h_legacy, u_legacy, LEGACY_MAX_DISTANCE, mirror=False))
    return sorted(set(found))


def legacy_count(prints: Sequence[str]) -> int:
    """Number of prints made by an earlier version (recomputed by the next ingest/embed)."""
    return sum(1 for p in prints if p and not p.startswith(PREFIX))


__all__ = ["fingerprint", "copy_pairs", "is_current", "has_crops", "legacy_count", "window_hashes",
           "window_boxes", "grey_levels", "MAX_DISTANCE", "FLIP", "PREFIX"]
