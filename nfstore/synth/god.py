"""``nf synth god``: GOD BData files (``Subject{n}.h5``), ImageNet-named images and ID tables.

Real GOD: 1200 training images (150 categories x 8) seen once in 24 runs, 50 test images seen in
35 runs, imagery of the 50 test categories in 20 runs of 25; 4133-4643 VC voxels on a 64x64x50
3 mm grid. Files are written in the BData layout bdpy writes (``dataset``, ``metadata/key|
description|value``, ``header``, ``vmap``), or with the legacy spellings (``dataSet``,
``metaData``, variable-length strings) when ``legacy_names`` is set. Per-sample columns are put
on both sides of the voxel columns, so readers cannot rely on column order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from nfstore.synth import _signal
from nfstore.synth.images import write_images

ROIS = ("V1", "V2", "V3", "V4", "LOC", "FFA", "PPA")


@dataclass(frozen=True)
class GODSynthConfig:
    """Sizes of a synthetic GOD tree (real values in brackets).

    Attributes
    ----------
    subjects : tuple of int      [1..5]
    train_categories : int       [150]
    images_per_category : int    training images per category [8]
    test_images : int            one per test category [50]
    train_runs, test_runs, imagery_runs : int   [24, 35, 20]
    image_size : int             [500]
    grid : tuple of int          voxel box (X, Y, Z) inside the 3 mm grid
    noise : float
    legacy_names : bool          write dataSet/metaData with variable-length strings
    seed : int
    """

    subjects: tuple[int, ...] = (1, 2)
    train_categories: int = 12
    images_per_category: int = 4
    test_images: int = 10
    train_runs: int = 4
    test_runs: int = 3
    imagery_runs: int = 2
    image_size: int = 48
    grid: tuple[int, int, int] = (10, 12, 8)
    noise: float = 1.0
    legacy_names: bool = False
    seed: int = 0


def _categories(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(np.arange(1440000, 15000000), n, replace=False))


def synth_god(out: Path, cfg: GODSynthConfig = GODSynthConfig()) -> dict[str, float]:
    """Write a synthetic GOD tree under ``out``; returns a summary."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    cats = _categories(cfg.train_categories + cfg.test_images, rng)
    train_cats, test_cats = cats[:cfg.train_categories], cats[cfg.train_categories:]
    train = [(c, int(n)) for c in train_cats
             for n in rng.choice(np.arange(1, 60000), cfg.images_per_category, replace=False)]
    test = [(c, int(rng.integers(1, 60000))) for c in test_cats]
    cat_z = {c: _signal.latents(1, rng)[0] for c in cats}
    z = {img: cat_z[img[0]] + 0.5 * _signal.latents(1, rng)[0] for img in train + test}
    for folder, imgs in (("training", train), ("test", test)):
        pix = _signal.render_images(np.array([z[i] for i in imgs]), cfg.image_size, rng)
        write_images([out / "images" / folder / f"n{c:08d}_{n}.JPEG" for c, n in imgs], pix)
        csv = out / f"imageID_{folder}.csv"
        csv.write_text("".join(f'{c}.{n:06d},"n{c:08d}_{n}.JPEG"\n' for c, n in imgs))

    # samples: (DataType, Run, Block, stimulus_id, latent)
    samples = []
    per_run = int(np.ceil(len(train) / cfg.train_runs))
    order = rng.permutation(len(train))
    for r in range(cfg.train_runs):
        for b, i in enumerate(order[r * per_run:(r + 1) * per_run], start=1):
            samples.append((1, r + 1, b, train[i], z[train[i]]))
    for r in range(cfg.test_runs):
        for b, i in enumerate(rng.permutation(len(test)), start=1):
            samples.append((2, r + 1, b, test[i], z[test[i]]))
    for r in range(cfg.imagery_runs):
        for b, i in enumerate(rng.permutation(len(test_cats)), start=1):
            c = test_cats[i]
            samples.append((3, r + 1, b, (c, None), 0.5 * cat_z[c]))  # imagery: weaker
    for sub in cfg.subjects:
        _write_subject(out / f"Subject{sub}.h5", cfg, samples, rng)
    _signal.save_truth(out, categories=cats)
    return {"subjects": len(cfg.subjects), "images": len(train) + len(test),
            "trials": len(samples) * len(cfg.subjects), "seconds": time.perf_counter() - t0}


def _voxel_box(cfg: GODSynthConfig) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Voxels of an ellipsoid inside the ``cfg.grid`` box, and their ROIs.

    Returns
    -------
    ijk : ndarray
        int (n_voxels, 3), grid indices inside the box.
    mm : ndarray
        float (n_voxels, 3), coordinates in mm of the 64x64x50 3 mm volume.
    roi : dict of str to ndarray
        bool (n_voxels,) per ROI: bands along Y, plus LVC, HVC and VC.
    """
    x, y, zz = np.meshgrid(*[np.arange(n) for n in cfg.grid], indexing="ij")
    inside = ((x - cfg.grid[0] / 2) ** 2 / cfg.grid[0] ** 2 + (y - cfg.grid[1] / 2) ** 2
              / cfg.grid[1] ** 2 + (zz - cfg.grid[2] / 2) ** 2 / cfg.grid[2] ** 2) < 0.22
    ijk = np.argwhere(inside)
    offset = np.array([20, 8, 14])  # position of the box in the 64x64x50 volume
    mm = (ijk + offset) * 3.0 - np.array([96.0, 120.0, 60.0])
    band = np.digitize(ijk[:, 1], np.quantile(ijk[:, 1], np.linspace(0, 1, len(ROIS) + 1)[1:-1]))
    roi = {name: band == i for i, name in enumerate(ROIS)}
    roi["LVC"] = roi["V1"] | roi["V2"] | roi["V3"]
    roi["HVC"] = roi["LOC"] | roi["FFA"] | roi["PPA"]
    roi["VC"] = np.ones(len(ijk), bool)
    return ijk, mm, roi


def _data_matrix(cfg: GODSynthConfig, samples: list, n_vox: int, rng: np.random.Generator
                 ) -> np.ndarray:
    """The BData ``dataset`` matrix, float64 (n_samples, 2 + n_voxels + 2).

    Columns: Run, DataType | voxels | Block, stimulus_id (order is not part of the format).
    """
    w = _signal.voxel_weights(n_vox, rng)
    lat = np.array([s[4] for s in samples])
    runs = np.array([s[0] * 100 + s[1] for s in samples])
    base = rng.normal(0, 2.0, (runs.max() + 1, n_vox))[runs]  # run baselines
    betas = lat @ w + base + rng.normal(0, cfg.noise, (len(samples), n_vox))
    stim = np.array([c + (n / 1e6 if n is not None else 0.0) for _, _, _, (c, n), _ in samples])

    head = np.stack([[s[1] for s in samples], [s[0] for s in samples]], axis=1)
    tail = np.stack([[s[2] for s in samples], stim], axis=1)
    return np.hstack([head, betas, tail]).astype(np.float64)


def _metadata(n_col: int, n_vox: int, mm: np.ndarray, roi: dict[str, np.ndarray]
              ) -> tuple[list[str], list[str], np.ndarray]:
    """BData metadata keys, descriptions and values, float (n_keys, n_col), NaN off-column."""
    vox_cols = slice(2, 2 + n_vox)

    def single(col: int) -> np.ndarray:
        v = np.full(n_col, np.nan)
        v[col] = 1
        return v

    def on_voxels(values: np.ndarray) -> np.ndarray:
        v = np.full(n_col, np.nan)
        v[vox_cols] = values
        return v

    meta = [("Run", "1 = Run", single(0)), ("DataType", "1 = DataType", single(1)),
            ("VoxelData", "1 = VoxelData", on_voxels(np.ones(n_vox))),
            ("Block", "1 = Block", single(n_col - 2)),
            ("stimulus_id", "1 = stimulus_id", single(n_col - 1))]
    meta += [(f"voxel_{a}", f"Voxel {a} coordinate (mm)", on_voxels(mm[:, i]))
             for i, a in enumerate("xyz")]
    meta += [(f"ROI_{k}", f"1 = ROI {k}", on_voxels(m.astype(float))) for k, m in roi.items()]
    return [m[0] for m in meta], [m[1] for m in meta], np.stack([m[2] for m in meta])


def _write_subject(path: Path, cfg: GODSynthConfig, samples: list, rng: np.random.Generator
                   ) -> None:
    """Write one subject's BData file (see the module docstring for the layout)."""
    _, mm, roi = _voxel_box(cfg)
    n_vox = len(mm)
    data = _data_matrix(cfg, samples, n_vox, rng)
    keys, descs, values = _metadata(data.shape[1], n_vox, mm, roi)
    dname, mname = ("dataSet", "metaData") if cfg.legacy_names else ("dataset", "metadata")
    with h5py.File(path, "w") as f:
        f.create_dataset(dname, data=data)
        g = f.create_group(mname)
        if cfg.legacy_names:
            text = h5py.string_dtype("utf-8")
            g.create_dataset("key", data=np.array(keys, dtype=object), dtype=text)
            g.create_dataset("description", data=np.array(descs, dtype=object), dtype=text)
        else:
            g.create_dataset("key", data=[k.encode() for k in keys])
            g.create_dataset("description", data=[d.encode() for d in descs])
        g.create_dataset("value", data=values)
        h = f.create_group("header")
        h.create_dataset("ctime", data=time.strftime("%Y-%m-%d %H:%M:%S").encode())
        h.create_dataset("ctime_epoch", data=str(time.time()).encode())
        f.create_group("vmap")
