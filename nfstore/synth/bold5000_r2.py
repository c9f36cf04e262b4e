"""``nf synth bold5000 release=2``: a small BOLD5000 release-2 tree (GLMsingle volumes).

Layout as the figshare release 2 and OpenNeuro ds001499 give it::

    CSI{n}_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_ses-NN.nii.gz   (X, Y, Z, trials) float32,
        saved with a wrong affine (diag(2, 2, 2, 1)), as the release's TYPED files
    CSI{n}_GLMbetas-TYPEA-ASSUMEHRF_ses-NN.nii.gz               another beta type
    CSI{n}_brainmask.nii.gz                                    uint8, the correct affine
    CSI{n}_imgnames.txt                                        one file name per trial
    derivatives/spm/sub-CSI{n}/sub-CSI{n}_mask-<ROI>.nii.gz    ten ROI masks (CSI2 and CSI3
        with the release's misnamed LHLO, RHLO and (CSI2) RHRRSC files, stored as float64)
    BOLD5000_Stimuli/...                                       images, test list and
        presentation lists of release 1

The same seed and sizes give the same images, test list and trial order as release 1
(:func:`nfstore.synth.bold5000.synth_bold5000`), so one picture has one stimulus id in both.
Betas are NaN outside the brain mask, as in the release.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from nfstore.readers.bold5000 import ROI_KEYS
from nfstore.readers.bold5000_r2 import MISNAMED, ROI_DIRS, betas_name, roi_file_name
from nfstore.synth import _signal
from nfstore.synth.bold5000 import subject_trials, write_presentation_lists, write_stimuli

MASK_AFFINE = np.array([[2.0, 0, 0, -70], [0, 2, 0, -90], [0, 0, 2, -60], [0, 0, 0, 1]])
WRONG_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])  # the TYPED files' header (a release bug)
TYPES = {"TYPED-FITHRF-GLMDENOISE-RR": 1.0, "TYPEA-ASSUMEHRF": 0.6}  # version -> signal gain
MISSPELT = {2: ("LHLOC", "RHLOC", "RHRSC"), 3: ("LHLOC", "RHLOC")}  # as in ds001499


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    nib.save(img, str(path))


def _brain_mask(grid: tuple[int, int, int]) -> np.ndarray:
    """An ellipsoid filling most of ``grid``: bool (X, Y, Z)."""
    axes = [(np.arange(n) - (n - 1) / 2) / (0.45 * n) for n in grid]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return x ** 2 + y ** 2 + z ** 2 <= 1.0


def _roi_masks(mask: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Ten balls of radius 2 centred on brain-mask voxels; the first one on the mask's edge,
    so that some ROI voxels lie outside the brain mask (as in the release)."""
    inside = np.argwhere(mask)
    grid = np.indices(mask.shape).reshape(3, -1).T
    out = {}
    for n, key in enumerate(ROI_KEYS):
        centre = inside[0] if n == 0 else inside[rng.integers(len(inside))]
        ball = ((grid - centre) ** 2).sum(axis=1) <= 4
        out[key] = ball.reshape(mask.shape)
    return out


def _write_volumes(out: Path, cfg: Any, sub: int, z: np.ndarray, n_sess: int,
                   rng: np.random.Generator) -> None:
    """Brain mask, ROI masks and one betas file per session and beta type.

    Parameters
    ----------
    z : array of shape (n_trials, k)
        Latent of every trial's image, sessions concatenated.
    """
    grid = (cfg.grid[0] + sub - 1, cfg.grid[1], cfg.grid[2])  # grids differ by subject
    mask = _brain_mask(grid)
    _save(out / f"CSI{sub}_brainmask.nii.gz", mask.astype(np.uint8), MASK_AFFINE)
    for key, roi in _roi_masks(mask, rng).items():
        name = MISNAMED[key] if key in MISSPELT.get(sub, ()) else key
        dtype = np.float64 if name != key else np.uint8
        folder = out / ROI_DIRS[0].format(subject=f"CSI{sub}")
        _save(folder / roi_file_name(f"CSI{sub}", name), roi.astype(dtype), MASK_AFFINE)
    n_vox = int(mask.sum())
    w = _signal.voxel_weights(n_vox, rng)
    per_session = z.shape[0] // n_sess
    for s in range(n_sess):
        rows = slice(s * per_session, (s + 1) * per_session)
        offset = rng.normal(0, 2.0, n_vox)
        for version, gain in TYPES.items():
            vals = _signal.responses(z[rows], w, np.full(n_vox, gain), cfg.noise, offset, rng)
            vol = np.full(grid + (per_session,), np.nan, np.float32)
            vol[mask] = vals.T
            _save(out / betas_name(f"CSI{sub}", version, s + 1), vol, WRONG_AFFINE)


def synth_release2(out: Path, cfg: Any) -> dict[str, float]:
    """Write a synthetic BOLD5000 release-2 tree under ``out`` (``cfg``: a
    :class:`nfstore.synth.bold5000.BOLD5000SynthConfig`); returns a summary."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)  # the calls of release 1, in its order
    names, z, test, seq = write_stimuli(out, cfg, rng)
    total = 0
    for sub, n_sess, trials in subject_trials(cfg, seq):
        total += trials.size
        bare = [names[i].split("/")[1] for i in trials]
        (out / f"CSI{sub}_imgnames.txt").write_text("\n".join(bare) + "\n")
        files = [("rep_" if i in test else "") + b for i, b in zip(trials, bare)]
        write_presentation_lists(out, sub, files, n_sess, cfg.runs_per_session,
                                 cfg.trials_per_run)
        _write_volumes(out, cfg, sub, z[trials], n_sess, rng)
    _signal.save_truth(out, latents=z, names=np.array(names))
    return {"subjects": len(cfg.subjects), "images": len(names), "trials": total,
            "seconds": time.perf_counter() - t0}
