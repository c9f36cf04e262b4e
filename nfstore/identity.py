"""Stimulus identity across datasets and pools: names, content fingerprints, duplicates.

The same picture can reach a store under several stimulus ids: NSD images are COCO images, some
of which BOLD5000 also showed (as ``COCO_train2014_<12-digit id>``); GOD and BOLD5000 show
ImageNet images, and an ImageNet pool for augmentation may hold them again. Two signals find
such copies whatever their names:

- ``identity``: the picture's id in its source collection -- ``coco/<cocoId>`` (NSD rows with a
  ``cocoId`` in ``nsd_stim_info_merged.csv``, BOLD5000 COCO files, pool files with COCO names),
  ``imagenet/<synset>_<n>`` (GOD images, BOLD5000 ImageNet files, pool files with ImageNet
  names), otherwise ``<dataset or pool>/<id>``;
- ``fingerprint``: a 64-bit perceptual hash (DCT pHash, :mod:`imagehash`) of the decoded
  pixels, which survives re-encoding and mild resizing; two images whose hashes differ in at
  most ``max_distance`` bits are taken as the same picture.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

COCO_FILE = re.compile(r"COCO_(?:train|val)\d{4}_(\d{12})")
IMAGENET_FILE = re.compile(r"(n\d{8}_\d+)")
MAX_DISTANCE = 3  # pHash bits; re-encoded copies differ by 0-2 bits, other images by ~32
NO_FINGERPRINT = ""


def identity_from_name(table: str, stimulus: str) -> str:
    """Identity of a stimulus from its id alone (BOLD5000, GOD and pool naming rules).

    Parameters
    ----------
    table : str
        Dataset or pool name (the stimulus table).
    stimulus : str
        Stimulus id, ``<table>/<stem>``.

    Examples
    --------
    >>> identity_from_name("bold5000", "bold5000/COCO_train2014_000000000036")
    'coco/36'
    >>> identity_from_name("god", "god/n01518878_14910")
    'imagenet/n01518878_14910'
    >>> identity_from_name("bold5000", "bold5000/kitchen3")
    'bold5000/kitchen3'
    """
    stem = stimulus.rsplit("/", 1)[-1]
    m = COCO_FILE.fullmatch(stem)
    if m:
        return f"coco/{int(m.group(1))}"
    m = IMAGENET_FILE.fullmatch(stem)
    if m:
        return f"imagenet/{m.group(1)}"
    return f"{table}/{stimulus.split('/', 1)[-1]}"


def identities(table: str, stimuli: Sequence[str], coco_ids: dict[str, int] | None = None
               ) -> np.ndarray:
    """Identity of every stimulus of one table, object array of shape (n,).

    ``coco_ids`` maps stimulus ids to COCO ids where the dataset says so (NSD's ``cocoId``).
    """
    coco_ids = coco_ids or {}
    return np.array([f"coco/{coco_ids[s]}" if s in coco_ids else identity_from_name(table, s)
                     for s in stimuli], dtype=object)


def fingerprint(pixels: np.ndarray) -> str:
    """64-bit DCT perceptual hash of an RGB image (H, W, 3) uint8, as 16 hex digits."""
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.fromarray(np.asarray(pixels, np.uint8))))


def fingerprint_files(items: Iterable[tuple[str, int]], root: Path, workers: int = 4
                      ) -> list[str]:
    """Fingerprints of images stored as files or rows of an HDF5 ``imgBrick``.

    Parameters
    ----------
    items : iterable of (file relative to ``root``, row in the brick or -1 for image files)
    """
    items = list(items)
    out = [NO_FINGERPRINT] * len(items)
    bricks: dict[str, list[int]] = {}
    files: list[int] = []
    for i, (f, row) in enumerate(items):
        if not f:
            continue
        (bricks.setdefault(f, []) if row >= 0 else files).append(i)

    def one_file(i: int) -> None:
        from PIL import Image

        try:
            with Image.open(root / items[i][0]) as im:
                out[i] = fingerprint(np.asarray(im.convert("RGB")))
        except (OSError, ValueError):  # unreadable: no fingerprint (nf embed reports it)
            out[i] = NO_FINGERPRINT

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one_file, files))
        from nfstore.stimuli import read_brick_rows

        for f, idx in bricks.items():
            for start in range(0, len(idx), 256):  # rows of an image brick, 256 at a time
                part = idx[start:start + 256]
                block = read_brick_rows(np.array([items[i][1] for i in part]), str(root / f),
                                         "imgBrick")
                for i, p in zip(part, pool.map(fingerprint, list(block))):
                    out[i] = p
    return out


def _as_int(prints: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    ok = np.array([bool(p) for p in prints])
    vals = np.array([int(p, 16) if p else 0 for p in prints], dtype=np.uint64)
    return vals, ok


def near_pairs(a: Sequence[str], b: Sequence[str], max_distance: int = MAX_DISTANCE,
               block: int = 4096) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)`` with ``hamming(a[i], b[j]) <= max_distance`` (missing prints never
    match).

    Parameters
    ----------
    a, b : sequences of 16-hex-digit fingerprints (``""`` for none), lengths n_a and n_b
    """
    va, oka = _as_int(a)
    vb, okb = _as_int(b)
    ia, ib = np.flatnonzero(oka), np.flatnonzero(okb)
    pairs: list[tuple[int, int]] = []
    for start in range(0, ia.size, block):
        rows = ia[start:start + block]
        d = np.bitwise_count(va[rows][:, None] ^ vb[ib][None, :])
        r, c = np.nonzero(d <= max_distance)
        pairs += list(zip(rows[r].tolist(), ib[c].tolist()))
    return pairs


def groups(identity: Sequence[str], prints: Sequence[str], max_distance: int = MAX_DISTANCE
           ) -> np.ndarray:
    """Connected groups of stimuli that are the same picture (same identity or near prints).

    Returns
    -------
    group : int array of shape (n,), equal values for the same picture (union-find)
    """
    n = len(identity)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    first: dict[str, int] = {}
    for i, ident in enumerate(identity):
        if ident in first:
            union(first[ident], i)
        else:
            first[ident] = i
    for i, j in near_pairs(prints, prints, max_distance):
        if i < j:
            union(i, j)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


__all__ = ["identity_from_name", "identities", "fingerprint", "fingerprint_files",
           "near_pairs", "groups", "MAX_DISTANCE"]
