"""``nf export-images``: a reconstruction set as PNG files and a grid figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import nfstore
from nfrecon.reconstruct import read_reconstructions, recon_subjects


def export_images(location: str | Path, name: str, out: str | Path,
                  subjects: list[str] | None = None, max_rows: int = 16) -> dict[str, int]:
    """Write ``OUT/<subject>/<row>_<stimulus>_s<k>.png`` for every sample and
    ``OUT/<subject>_grid.png``: one row per stimulus, ground truth first, then each sample,
    the chosen one framed in red. Returns files written per subject."""
    from PIL import Image

    store = nfstore.open_store(location)
    keys = recon_subjects(location, name, subjects)
    out = Path(out)
    counts = {}
    for key in keys:
        r = read_reconstructions(location, name, key)
        imgs = np.asarray(r["images"][:max_rows])
        stim = r["stimulus"][:max_rows]
        folder = out / key.replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        n = 0
        for i, (row, sid) in enumerate(zip(imgs, stim)):
            for k, img in enumerate(row):
                Image.fromarray(img).save(folder / f"{i:04d}_{sid.replace('/', '_')}_s{k}.png")
                n += 1
        gt = _ground_truth(store, stim, imgs.shape[2])
        _grid(out / f"{key.replace('/', '_')}_grid.png", gt, imgs, r["chosen"][:max_rows], stim)
        counts[key] = n + 1
    return counts


def _ground_truth(store: nfstore.Store, stim: np.ndarray, size: int) -> np.ndarray | None:
    try:
        return np.asarray(store.images(stim, size=(size, size)).values)
    except (nfstore.NFError, OSError):
        return None  # pixels not reachable (raw files moved): grid without ground truth


def _grid(path: Path, gt: np.ndarray | None, imgs: np.ndarray, chosen: np.ndarray,
          stim: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_s = imgs.shape[:2]
    cols = n_s + (gt is not None)
    fig, axes = plt.subplots(n_rows, cols, figsize=(1.6 * cols, 1.6 * n_rows), squeeze=False)
    for i in range(n_rows):
        panels = ([("ground truth", gt[i], False)] if gt is not None else []) + [
            (f"sample {k}", imgs[i, k], k == chosen[i]) for k in range(n_s)]
        for j, (title, img, picked) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img)
            ax.set_xticks([]), ax.set_yticks([])
            if picked and n_s > 1:
                for side in ax.spines.values():
                    side.set_edgecolor("red"), side.set_linewidth(3)
            ax.set_title(title if i == 0 else "", fontsize=7)
        axes[i, 0].set_ylabel(str(stim[i]), fontsize=6)
    if n_s > 1:
        fig.suptitle("red frame: the sample chosen (closest to the decoded embedding)",
                     fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
