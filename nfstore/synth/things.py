"""``nf synth things``: THINGS-fMRI single-trial tables (``betas_csv/``), brain masks and images.

Real THINGS-fMRI: 3 subjects, 12 sessions x 10 runs x 82 trials; per session each of 720 train
concepts once (a different image of it every session) and 100 test images (one each of 100 train
concepts, the same every session); 189k-227k voxels. ``ResponseData.h5`` is written with h5py in
the exact layout of ``DataFrame.to_hdf(key="ResponseData")`` (fixed format: PyTables is not
needed to write or read it); ``pd.read_hdf`` opens it where PyTables is installed.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from nfstore.readers._things_files import KEY
from nfstore.synth import _signal
from nfstore.synth.images import write_images

CONCEPTS = ("aardvark", "ping-pong_table", "mouse1", "chest2", "bean_bag", "dog", "t-shirt",
            "zucchini", "air_conditioner", "banana", "cat", "hammer")
SUFFIXES = ("s", "n", "b")
NATIVE_ROIS = ("V1", "V2", "V3", "hV4", "VO1", "VO2", "LO1 (prf)", "LO2 (prf)", "TO1", "TO2",
               "V3b", "V3a", "lEBA", "rEBA", "lFFA", "rFFA", "lOFA", "rOFA", "lSTS", "rSTS",
               "lPPA", "rPPA", "lRSC", "rRSC", "lTOS", "rTOS", "lLOC", "rLOC", "IT")
GLASSER = ("glasser-V1", "glasser-p9-\n46v", "glasser-a9-\n46v")
EMPTY_ROI = "lSTS"  # a localizer ROI some subjects lack: written all-zero
STIMULUS_COLUMNS = ("trial_type", "session", "run", "subject_id", "trial_id", "stimulus",
                    "concept")


@dataclass(frozen=True)
class THINGSSynthConfig:
    """Sizes of a synthetic THINGS tree (real values in brackets).

    Attributes
    ----------
    subjects : tuple of int      [1, 2, 3]
    sessions : int               [12]
    runs : int                   runs per session [10]
    train_concepts : int         [720]
    test_concepts : int          test images, one per concept among the train ones [100]
    catch_trials : int           catch rows per session in StimulusMetadata (and columns in
                                 ResponseData) [0: the release has none]
    image_size : int
    grid : tuple of int          brain-mask volume (X, Y, Z)
    noise : float
    seed : int
    """

    subjects: tuple[int, ...] = (1, 2)
    sessions: int = 3
    runs: int = 2
    train_concepts: int = 8
    test_concepts: int = 3
    catch_trials: int = 0
    image_size: int = 32
    grid: tuple[int, int, int] = (10, 12, 9)
    noise: float = 1.0
    seed: int = 0


def concept_names(n: int) -> list[str]:
    """``n`` concept names (with ``_``, ``-`` and digits, as THINGS has)."""
    return [CONCEPTS[i] if i < len(CONCEPTS) else f"object{i}" for i in range(n)]


def _design(cfg: THINGSSynthConfig, rng: np.random.Generator) -> pd.DataFrame:
    """One subject's StimulusMetadata rows (without subject_id), shuffled within sessions."""
    concepts = concept_names(cfg.train_concepts)
    rows = []
    for s in range(1, cfg.sessions + 1):
        shown = [("train", c, f"{c}_{s:02d}{SUFFIXES[s % 3]}.jpg") for c in concepts]
        shown += [("test", c, f"{c}_13s.jpg") for c in concepts[:cfg.test_concepts]]
        shown += [("catch", "catch", "catch.jpg")] * cfg.catch_trials
        order = rng.permutation(len(shown))
        runs = np.array_split(order, cfg.runs)
        for r, idx in enumerate(runs, start=1):
            rows += [(shown[i][0], s, r, shown[i][2], shown[i][1]) for i in idx]
    out = pd.DataFrame(rows, columns=["trial_type", "session", "run", "stimulus", "concept"])
    out["trial_id"] = np.arange(len(out))
    return out


def _images(out: Path, cfg: THINGSSynthConfig, rng: np.random.Generator
            ) -> dict[str, np.ndarray]:
    """Write every shown image plus one unshown per concept; returns file -> latent."""
    concepts = concept_names(cfg.train_concepts)
    files = [(c, f"{c}_{s:02d}{SUFFIXES[s % 3]}.jpg") for c in concepts
             for s in range(1, cfg.sessions + 1)]
    files += [(c, f"{c}_13s.jpg") for c in concepts[:cfg.test_concepts]]
    files += [(c, f"{c}_99n.jpg") for c in concepts]  # in the database, never shown
    cz = {c: _signal.latents(1, rng)[0] for c in concepts}
    z = np.array([cz[c] + 0.5 * _signal.latents(1, rng)[0] for c, _ in files])
    write_images([out / "object_images" / c / f for c, f in files],
                 _signal.render_images(z, cfg.image_size, rng))
    return {f: zi for (_, f), zi in zip(files, z)}


def _brainmask(cfg: THINGSSynthConfig, sub: int) -> np.ndarray:
    """Ellipsoid mask, bool (X, Y, Z); a little larger for each subject."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in cfg.grid], indexing="ij")
    g = np.array(cfg.grid, float)
    r = sum(((a - n / 2) / n) ** 2 for a, n in zip((x, y, z), g))
    return r < 0.18 + 0.01 * sub


def _voxel_metadata(ijk: np.ndarray, sub: int, rng: np.random.Generator) -> pd.DataFrame:
    """VoxelMetadata: ids, coordinates, reliability/pRF floats, ROI blobs (0/1), glasser."""
    n = len(ijk)
    table = {"voxel_id": np.arange(n), "subject_id": np.full(n, sub),
             "voxel_x": ijk[:, 0], "voxel_y": ijk[:, 1], "voxel_z": ijk[:, 2]}
    for name in ("nc_singletrial", "nc_testset", "splithalf_uncorrected", "splithalf_corrected",
                 "prf-eccentricity", "prf-polarangle", "prf-rsquared", "prf-size"):
        table[name] = np.round(rng.uniform(0, 60, n), 4)
    for name in NATIVE_ROIS + GLASSER:
        centre = ijk[rng.integers(n)]
        blob = np.abs(ijk - centre).sum(axis=1) <= rng.integers(1, 4)
        table[name] = np.zeros(n, np.int64) if name == EMPTY_ROI else blob.astype(np.int64)
    return pd.DataFrame(table)


def _attrs(node: h5py.HLObject, **kw: object) -> None:
    """Attributes as PyTables writes them (text: scalar fixed-length UTF-8)."""
    for k, v in kw.items():
        if isinstance(v, str):
            b = v.encode()
            node.attrs.create(k, np.bytes_(b), dtype=h5py.string_dtype("utf-8", max(len(b), 1)))
        else:
            node.attrs[k] = v


def _array(g: h5py.Group, key: str, data: np.ndarray, **extra: object) -> None:
    """A PyTables ARRAY node (a plain dataset with PyTables' attributes)."""
    _attrs(g.create_dataset(key, data=data), CLASS="ARRAY", FLAVOR="numpy", TITLE="",
           VERSION="2.4", transposed=np.uint8(1), **extra)


def _pickled(g: h5py.Group, key: str, obj: object) -> None:
    """A PyTables object VLARRAY: ``obj`` pickled (protocol 2) into one uint8 row."""
    ds = g.create_dataset(key, shape=(1,), dtype=h5py.vlen_dtype(np.uint8))
    ds[0] = np.frombuffer(pickle.dumps(obj, protocol=2), np.uint8)
    _attrs(ds, CLASS="VLARRAY", PSEUDOATOM="object", TITLE="", VERSION="1.4", kind="object",
           name="N.", transposed=np.uint8(1))


def write_response_data(path: Path, values: np.ndarray) -> None:
    """Write ``values`` (n_voxels, n_trials) as pandas' fixed-format frame ``ResponseData``
    with columns ``voxel_id, 0 .. n_trials-1`` (the float block first, as pandas orders them)."""
    nv, nt = values.shape
    with h5py.File(path, "w") as f:
        _attrs(f, CLASS="GROUP", PYTABLES_FORMAT_VERSION="2.1", TITLE="", VERSION="1.0")
        g = f.create_group(KEY)
        _attrs(g, CLASS="GROUP", TITLE="", VERSION="1.0", axis0_variety="regular",
               axis1_variety="regular", block0_items_variety="regular",
               block1_items_variety="regular", encoding="UTF-8", errors="strict",
               nblocks=np.int64(2), ndim=np.int64(2), pandas_type="frame",
               pandas_version="0.15.2")
        _pickled(g, "axis0", np.array(["voxel_id", *range(nt)], dtype=object))
        _array(g, "axis1", np.arange(nv, dtype=np.int64), kind="integer", name="N.")
        _pickled(g, "block0_items", np.array(list(range(nt)), dtype=object))
        _array(g, "block0_values", np.asarray(values, np.float64))
        _array(g, "block1_items", np.array([b"voxel_id"]), kind="string", name="N.")
        _array(g, "block1_values", np.arange(nv, dtype=np.int64)[:, None])


def _write_subject(out: Path, cfg: THINGSSynthConfig, sub: int, latent: dict[str, np.ndarray],
                   rng: np.random.Generator) -> int:
    """Write one subject's three tables and brain mask; returns its trial count."""
    import nibabel as nib

    name = f"sub-{sub:02d}"
    mask = _brainmask(cfg, sub)
    affine = np.array([[2.0, 0, 0, -60], [0, 2, 0, -80], [0, 0, 2, -40], [0, 0, 0, 1]])
    (out / "brainmasks").mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine),
             str(out / "brainmasks" / f"{name}_space-T1w_brainmask.nii.gz"))
    ijk = np.argwhere(mask)  # C order, as nilearn's unmask
    voxels = _voxel_metadata(ijk, sub, rng)
    voxels.to_csv(out / "betas_csv" / f"{name}_VoxelMetadata.csv", index=False)

    design = _design(cfg, rng)
    design["subject_id"] = sub
    design[list(STIMULUS_COLUMNS)].to_csv(out / "betas_csv" / f"{name}_StimulusMetadata.csv",
                                          index=False)
    z = np.array([latent.get(f, np.zeros(_signal.N_LATENT)) for f in design["stimulus"]])
    w = _signal.voxel_weights(len(ijk), rng)
    gain = rng.uniform(0.05, 0.2, len(ijk))
    betas = np.empty((len(design), len(ijk)))
    for s in np.unique(design["session"]):
        rows = (design["session"] == s).to_numpy()
        betas[rows] = _signal.responses(z[rows], w, gain, cfg.noise * 0.1,
                                        rng.normal(0, 0.3, len(ijk)), rng)
    write_response_data(out / "betas_csv" / f"{name}_ResponseData.h5", betas.T)
    return len(design)


def synth_things(out: Path, cfg: THINGSSynthConfig = THINGSSynthConfig()) -> dict[str, float]:
    """Write a synthetic THINGS tree under ``out``; returns a summary."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    latent = _images(out, cfg, rng)
    (out / "betas_csv").mkdir(parents=True, exist_ok=True)
    trials = sum(_write_subject(out, cfg, sub, latent, rng) for sub in cfg.subjects)
    _signal.save_truth(out, latents=np.array(list(latent.values())))
    return {"subjects": len(cfg.subjects), "images": len(latent), "trials": trials,
            "seconds": time.perf_counter() - t0}
