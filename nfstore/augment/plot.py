"""Diagnostics figure of an augmentation run (``nf augment --plot FILE.png``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def diagnostics(out: Path, cv_corr: np.ndarray, measured: np.ndarray, synthetic: np.ndarray,
                title: str) -> Path:
    """Histogram of per-voxel CV correlation and measured vs. synthetic voxel statistics.

    Parameters
    ----------
    cv_corr : array of shape (n_voxels,)
    measured : array of shape (n_train_trials, n_voxels)
    synthetic : array of shape (n_synthetic, n_voxels)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    ax[0].hist(cv_corr, bins=40, color="tab:blue")
    ax[0].axvline(np.median(cv_corr), color="k", ls="--", label=f"median {np.median(cv_corr):.2f}")
    ax[0].set(xlabel="CV correlation (train trials)", ylabel="voxels",
              title="encoding model per voxel")
    ax[0].legend()
    for a, stat, label in ((ax[1], np.mean, "mean"), (ax[2], np.std, "std")):
        m, s = stat(measured, axis=0), stat(synthetic, axis=0)
        a.scatter(m, s, s=3, alpha=0.4)
        lo, hi = float(min(m.min(), s.min())), float(max(m.max(), s.max()))
        a.plot([lo, hi], [lo, hi], "k--", lw=1)
        a.set(xlabel=f"measured voxel {label}", ylabel=f"synthetic voxel {label}",
              title=f"voxel {label}: measured vs synthetic")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
