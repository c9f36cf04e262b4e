"""``nf synth bold5000``: a small BOLD5000 release-1 tree (ROI files, stimulus lists, images).

Real BOLD5000: 4916 images (2000 COCO, 1916 ImageNet, 1000 Scene) of 375 px, 113 of them
repeated (test); CSI1-3 have 15 sessions and CSI4 9, of 9-10 runs of 37 trials, ROI files with
5254 (CSI4: 3108) trials. Here the sizes are parameters; CSI4 gets one session fewer than the
others, so it sees a subset of the images, as in the real data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io

from nfstore.readers.bold5000 import PRESENTATION, ROI_KEYS, STIMULI, TEST_LISTS, TRS
from nfstore.synth import _signal
from nfstore.synth.images import write_images

HRF = {"TR1": 0.2, "TR2": 0.6, "TR3": 1.0, "TR4": 0.9, "TR5": 0.5}


@dataclass(frozen=True)
class BOLD5000SynthConfig:
    """Sizes of a synthetic BOLD5000 tree (real values in brackets).

    Attributes
    ----------
    subjects : tuple of int   CSI subjects to write (1..4)
    sessions : int            sessions of CSI1-3; CSI4 has one fewer [15, CSI4 9]
    runs_per_session : int    [9-10]
    trials_per_run : int      [37]
    images : tuple of int     (COCO, ImageNet, Scene) images [(2000, 1916, 1000)]
    test_images : int         repeated (test) images, 4 presentations each [113]
    image_size : int          [375]
    voxels : tuple of int     (min, max) voxels per ROI variable [~90-290]
    noise : float
    nsd_overlap : int         COCO images that are also NSD images (``nf synth nsd`` plants the
                              same COCO ids and pictures)
    seed : int
    release : int             1: ROI files; 2: GLMsingle volumes (:mod:`nfstore.synth.bold5000_r2`;
                              the same seed gives the same images, test list and trial order)
    grid : tuple of int       release 2: (X, Y, Z) volume of CSI1 [(71, 89, 72)]
    """

    subjects: tuple[int, ...] = (1, 4)
    sessions: int = 3
    runs_per_session: int = 3
    trials_per_run: int = 20
    images: tuple[int, int, int] = (40, 30, 30)
    test_images: int = 10
    image_size: int = 48
    voxels: tuple[int, int] = (12, 30)
    noise: float = 1.0
    nsd_overlap: int = 6
    seed: int = 0
    release: int = 1
    grid: tuple[int, int, int] = (12, 14, 10)


def _names(cfg: BOLD5000SynthConfig, rng: np.random.Generator) -> list[str]:
    coco, imnet, scene = cfg.images
    ids = rng.choice(np.setdiff1d(np.arange(1, 580000), _signal.overlap_coco_ids(coco)), coco,
                     replace=False)
    n_ov = min(cfg.nsd_overlap, coco)
    ids[:n_ov] = _signal.overlap_coco_ids(n_ov)
    names = [f"COCO/COCO_train2014_{i:012d}.jpg" for i in ids]
    syn = rng.choice(np.arange(1440000, 15000000), imnet, replace=False)
    names += [f"ImageNet/n{s:08d}_{rng.integers(1, 30000)}.JPEG" for s in syn]
    words = ["airplanecabin", "bedroom", "kitchen", "library", "street", "beach", "forest"]
    names += [f"Scene/{words[i % len(words)]}{i // len(words) + 1}.jpg" for i in range(scene)]
    return names


def _sequence(cfg: BOLD5000SynthConfig, n_images: int, test: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    """Image index of every trial of the full (CSI1-3) design."""
    n_trials = cfg.sessions * cfg.runs_per_session * cfg.trials_per_run
    train = np.setdiff1d(np.arange(n_images), test)
    seq = list(np.repeat(test, 4))
    seq += list(rng.permutation(train))
    while len(seq) < n_trials:  # a few train images shown again
        seq += list(rng.permutation(train))
    return rng.permutation(np.array(seq[:n_trials]))


def subject_trials(cfg: Any, seq: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """(subject, sessions, image index of each trial) of every subject: the shared trial
    sequence ``seq`` cut to the subject's sessions (CSI4 has one session less, as in the
    release)."""
    per_session = cfg.runs_per_session * cfg.trials_per_run
    for sub in cfg.subjects:
        n_sess = cfg.sessions - 1 if sub == 4 else cfg.sessions
        yield sub, n_sess, seq[: n_sess * per_session]


def write_presentation_lists(out: Path, sub: int, files: list[str], n_sess: int, runs: int,
                             per_run: int) -> None:
    """Release-1 presentation lists: one file per run, 'rep_' marking test images."""
    for s in range(n_sess):
        sd = out / PRESENTATION / f"CSI{sub}" / f"CSI{sub}_sess{s + 1:02d}"
        sd.mkdir(parents=True, exist_ok=True)
        for r in range(runs):
            a = (s * runs + r) * per_run
            (sd / f"CSI{sub}_sess{s + 1:02d}_run{r + 1:02d}.txt").write_text(
                "\n".join(files[a:a + per_run]) + "\n")


def write_stimuli(out: Path, cfg: BOLD5000SynthConfig, rng: np.random.Generator
                  ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Write the images and the test list (both releases draw them alike from ``rng``).

    Returns (image names (n_images,), latents (n_images, k), test image indices, the trial
    sequence of image indices)."""
    names = _names(cfg, rng)
    z = _signal.latents(len(names), rng)
    pixels = _signal.render_images(z, cfg.image_size, rng)
    n_ov = min(cfg.nsd_overlap, cfg.images[0])  # the pictures NSD also showed
    z[:n_ov], pixels[:n_ov] = _signal.world_images(
        [f"coco/{c}" for c in _signal.overlap_coco_ids(n_ov)], cfg.image_size)
    write_images([out / STIMULI / n for n in names], pixels)
    test = np.sort(rng.choice(len(names), cfg.test_images, replace=False))
    (out / TEST_LISTS[0]).write_text("\n".join(names[i].split("/")[1] for i in test) + "\n")
    return names, z, test, _sequence(cfg, len(names), test, rng)


def synth_bold5000(out: Path, cfg: BOLD5000SynthConfig = BOLD5000SynthConfig()
                   ) -> dict[str, float]:
    """Write a synthetic BOLD5000 tree under ``out``; returns a summary."""
    if cfg.release == 2:
        from nfstore.synth.bold5000_r2 import synth_release2

        return synth_release2(out, cfg)
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    names, z, test, seq = write_stimuli(out, cfg, rng)
    per_session = cfg.runs_per_session * cfg.trials_per_run
    total = 0
    for sub, n_sess, trials in subject_trials(cfg, seq):
        total += trials.size
        files = [("rep_" if i in test else "") + names[i].split("/")[1] for i in trials]
        lists = out / "ROIs/stim_lists"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"CSI0{sub}_stim_lists.txt").write_text("\n".join(files) + "\n")
        write_presentation_lists(out, sub, files, n_sess, cfg.runs_per_session,
                                 cfg.trials_per_run)
        _write_rois(out, cfg, sub, z[trials], n_sess, per_session, rng)
    _signal.save_truth(out, latents=z, names=np.array(names))
    return {"subjects": len(cfg.subjects), "images": len(names), "trials": total,
            "seconds": time.perf_counter() - t0}


def _write_rois(out: Path, cfg: BOLD5000SynthConfig, sub: int, z: np.ndarray, n_sess: int,
                per_session: int, rng: np.random.Generator) -> None:
    sizes = rng.integers(cfg.voxels[0], cfg.voxels[1] + 1, len(ROI_KEYS))
    n_vox = int(sizes.sum())
    w = _signal.voxel_weights(n_vox, rng)
    signal = (z @ w).astype(np.float64)
    offset = np.repeat(rng.normal(0, 2.0, (n_sess, n_vox)), per_session, axis=0)
    edges = np.concatenate([[0], np.cumsum(sizes)])
    by_tr = {}
    for tr, h in HRF.items():
        by_tr[tr] = h * signal + offset + rng.normal(0, cfg.noise, signal.shape)
    by_tr["TR34"] = (by_tr["TR3"] + by_tr["TR4"]) / 2
    for tr in TRS:
        data = by_tr[tr]
        variables = {k: data[:, edges[i]:edges[i + 1]] for i, k in enumerate(ROI_KEYS)}
        mat = out / "ROIs" / f"CSI{sub}" / "mat" / f"CSI{sub}_ROIs_{tr}.mat"
        mat.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(mat, variables)
        h5 = out / "ROIs" / f"CSI{sub}" / "h5" / f"CSI{sub}_ROIs_{tr}.h5"
        h5.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(h5, "w") as f:  # as MATLAB writes it: (voxels, trials)
            for k, v in variables.items():
                f.create_dataset(k, data=v.T)
