"""ROI label tables and harmonized aliases shared by the readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nfstore import _io

# Built-in label names of NSD atlases, used when the atlas' .ctab file is absent.
NSD_ATLAS_LABELS: dict[str, dict[int, str]] = {
    "prf-visualrois": {1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"},
    "floc-places": {1: "OPA", 2: "PPA", 3: "RSC"},
    "floc-faces": {1: "OFA", 2: "FFA-1", 3: "FFA-2", 4: "mTL-faces", 5: "aTL-faces"},
    "floc-bodies": {1: "EBA", 2: "FBA-1", 3: "FBA-2", 4: "mTL-bodies"},
    "floc-words": {1: "OWFA", 2: "VWFA-1", 3: "VWFA-2", 4: "mfs-words", 5: "mTL-words"},
    "streams": {1: "early", 2: "midventral", 3: "midlateral", 4: "midparietal", 5: "ventral",
                6: "lateral", 7: "parietal"},
}

# Harmonized alias -> native labels (of any atlas) whose union it is.
ALIASES: dict[str, tuple[str, ...]] = {
    "V1": ("V1v", "V1d"),
    "V2": ("V2v", "V2d"),
    "V3": ("V3v", "V3d"),
    "V4": ("hV4",),
    "EarlyVis": ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d"),
    "OFA": ("OFA",),
    "FFA": ("FFA-1", "FFA-2"),
    "EBA": ("EBA",),
    "VWFA": ("VWFA-1", "VWFA-2"),
    "OPA": ("OPA",),
    "PPA": ("PPA",),
    "RSC": ("RSC",),
}


def read_ctab(path: Path) -> dict[int, str]:
    """Read a FreeSurfer-style ``index name`` colour table (first two columns only).

    FreeSurfer writes these tables as ASCII, and NSD's loaders read them with pandas' UTF-8
    default; any other encoding is a one-line :class:`ReaderError` naming the file.
    """
    labels: dict[int, str] = {}
    for line in _io.read_text(path, "a FreeSurfer colour table").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].lstrip("-").isdigit():
            labels[int(parts[0])] = parts[1]
    return labels


def atlas_rois(atlas: str, values: np.ndarray, labels: dict[int, str]
               ) -> tuple[list[str], list[np.ndarray], dict[str, np.ndarray]]:
    """Split an integer label vector into native ROI masks.

    Parameters
    ----------
    atlas : str
        Atlas name used as prefix of native ROI names (``"prf-visualrois/V1v"``).
    values : int array of shape (n_voxels,)
        Atlas label of each selected voxel (<= 0 means none).
    labels : dict
        Label value -> name.

    Returns
    -------
    names : list of native ROI names, masks : list of bool arrays (n_voxels,),
    by_label : label name -> mask (for building aliases)
    """
    names, masks, by_label = [], [], {}
    for value in sorted(int(v) for v in np.unique(values) if v > 0):
        name = labels.get(value, str(value))
        mask = values == value
        names.append(f"{atlas}/{name}")
        masks.append(mask)
        by_label[name] = mask
    return names, masks, by_label


def alias_rois(by_label: dict[str, np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    """Harmonized NSD aliases present in ``by_label`` (label name -> mask)."""
    return union_aliases(by_label, ALIASES)


def union_aliases(by_name: dict[str, np.ndarray], aliases: dict[str, tuple[str, ...]]
                  ) -> tuple[list[str], list[np.ndarray]]:
    """Alias ROIs as unions of named masks (missing parts are ignored; absent aliases dropped)."""
    names, masks = [], []
    for alias, parts in aliases.items():
        present = [by_name[p] for p in parts if p in by_name]
        if present:
            names.append(alias)
            masks.append(np.logical_or.reduce(present))
    return names, masks
