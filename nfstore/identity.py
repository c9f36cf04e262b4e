"""Stimulus identity across datasets and pools: names, content fingerprints, duplicates.

The same picture can reach a store under several stimulus ids: NSD images are COCO images, some
of which BOLD5000 also showed (as ``COCO_train2014_<12-digit id>``); GOD and BOLD5000 show
ImageNet images, and an ImageNet pool for augmentation may hold them again. Two signals find
such copies whatever their names:

- ``identity``: the picture's id in its source collection -- ``coco/<cocoId>`` (NSD rows with a
  ``cocoId`` in ``nsd_stim_info_merged.csv``, BOLD5000 COCO files, pool files with COCO names),
  ``imagenet/<synset>_<n>`` (GOD images, BOLD5000 ImageNet files, pool files with ImageNet
  names), otherwise ``<dataset or pool>/<id>``;
- ``fingerprint``: hashes of windows of the decoded picture (:mod:`nfstore.copies`), which
  find re-encoded, resized, grey, brightened, mirrored and cropped copies, and the uncropped
  original of a square-cropped stimulus.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from nfstore import copies
from nfstore.errors import ReaderError

COCO_FILE = re.compile(r"COCO_(?:train|val)\d{4}_(\d{12})")
IMAGENET_FILE = re.compile(r"(n\d{8}_\d+)")
MAX_DISTANCE = copies.MAX_DISTANCE  # bits of a 63-bit window hash
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


def fingerprint(pixels: np.ndarray, crops: bool = True) -> str:
    """Window fingerprint of an RGB image (H, W, 3) uint8 (:func:`nfstore.copies.fingerprint`).

    ``crops`` adds the crop windows (stimuli of datasets, which may be held out); pool images
    need only the whole image and its square slides.
    """
    return copies.fingerprint(pixels, crops)


def fingerprint_files(items: Iterable[tuple[str, int]], root: Path, workers: int = 4,
                      crops: bool = True, errors: list[str] | None = None) -> list[str]:
    """Fingerprints of images stored as files or rows of image bricks (:mod:`nfstore.bricks`).

    Parameters
    ----------
    items : iterable of (file relative to ``root``, row in the brick or -1 for image files)
    crops : bool
        Also hash the crop windows (see :func:`fingerprint`).
    errors : list, optional
        Receives one line per unreadable image file (``<path>: expected ...; found ...``,
        decompression bombs included); such files get no fingerprint.

    Returns
    -------
    list of str, one per item (``""`` for none)
    """
    from nfstore.imagefile import open_rgb

    items = list(items)
    out = [NO_FINGERPRINT] * len(items)
    failed: dict[int, str] = {}
    bricks: dict[str, list[int]] = {}
    files: list[int] = []
    for i, (f, row) in enumerate(items):
        if not f:
            continue
        (bricks.setdefault(f, []) if row >= 0 else files).append(i)

    def one_file(i: int) -> None:
        try:
            out[i] = fingerprint(np.asarray(open_rgb(root / items[i][0], copies.WORK_SIDE)),
                                 crops)
        except ReaderError as err:  # no fingerprint; reported to the caller
            failed[i] = str(err)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one_file, files))
        from nfstore.bricks import read_brick_rows

        for f, idx in bricks.items():
            for start in range(0, len(idx), 256):  # rows of an image brick, 256 at a time
                part = idx[start:start + 256]
                block = read_brick_rows(np.array([items[i][1] for i in part]), str(root / f))
                for i, p in zip(part, pool.map(lambda x: fingerprint(x, crops), list(block))):
                    out[i] = p
    if errors is not None:
        errors += [failed[i] for i in sorted(failed)]
    return out


def near_pairs(a: Sequence[str], b: Sequence[str], max_distance: int = MAX_DISTANCE,
               crops: bool = True) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)`` where ``b[j]`` is a copy of ``a[i]`` (missing prints never match;
    :func:`nfstore.copies.copy_pairs`).

    Parameters
    ----------
    a, b : sequences of fingerprints (``""`` for none), lengths n_a and n_b
    max_distance : int
        Bits (of 63) within which two window hashes are the same picture.
    crops : bool
        Also find ``b`` images that are crops of ``a`` images.
    """
    return copies.copy_pairs(a, b, max_distance, crops)


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
    for i, j in near_pairs(prints, prints, max_distance, crops=False):
        if i != j:
            union(i, j)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


__all__ = ["identity_from_name", "identities", "fingerprint", "fingerprint_files",
           "near_pairs", "groups", "MAX_DISTANCE"]
