"""The low-level comparison table: PixCorr / SSIM (and, with networks, AlexNet(2) 2-way) of
several reconstruction sets of one subject on the same test stimuli, beside the shuffled and
mean-train-image baselines (``nf demo`` step 13, ``benchmarks/bench_lowlevel_quality.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import nfstore
from nfrecon import metrics as M
from nfrecon.init_images import resize
from nfrecon.report import chosen_images, derangement, ground_truth, mean_train_image
from nfstore.decoding import two_way


def compare(location: str | Path, subject: str, names: dict[str, str], size: int,
            seed: int = 0, networks: list[Any] | None = None,
            variant: str = "mindeye2") -> dict[str, dict[str, float]]:
    """Mean metrics per row label.

    Parameters
    ----------
    names : row label -> reconstruction set; every set must hold the first set's stimuli
    size : the sets are resized to this size; the ground truth enters at its native size
        (the metric convention resizes both)
    networks : :func:`nfrecon.metrics.load_networks` output; adds ``alexnet2`` (2-way)

    Returns
    -------
    {label: {"pixcorr", "ssim"[, "alexnet2"]}}, plus rows ``shuffled`` (a seeded derangement
    of the first set) and ``mean train image``.
    """
    store = nfstore.open_store(location)
    sets = {}
    stim = None
    for label, name in names.items():
        imgs, ids = chosen_images(location, name, subject)
        if stim is None:
            stim = ids
        index = {s: i for i, s in enumerate(ids)}
        missing = [s for s in stim if s not in index]
        if missing:
            raise nfstore.StoreError(f"{name}: no image of {len(missing)} stimuli of the "
                                     f"first set (e.g. {missing[:3]})")
        sets[label] = resize(imgs[[index[s] for s in stim]], size)
    gt = ground_truth(store, stim)
    first = next(iter(sets.values()))
    sets["shuffled"] = first[derangement(len(first), seed)]
    sets["mean train image"] = np.broadcast_to(mean_train_image(store, subject, size),
                                               first.shape).copy()
    alex = [n for n in networks or [] if n.name == "alexnet"]
    out = {}
    for label, imgs in sets.items():
        vals = M.pixel_metrics(gt, imgs, variant)
        if alex:
            fg, fr = M.features(alex[0], gt, variant, "cpu"), M.features(alex[0], imgs,
                                                                         variant, "cpu")
            vals["alexnet2"] = two_way(fg["alexnet2"], fr["alexnet2"])
        out[label] = {k: float(np.mean(v)) for k, v in vals.items()}
    return out
