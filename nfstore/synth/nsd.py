"""``nf synth nsd``: a small NSD tree in the original layout and formats, with planted signal.

Real NSD has 73000 images of 425 px, 8 subjects, 30-40 sessions of 750 trials in 12 runs; the
sizes here are parameters (:class:`NSDSynthConfig`) and the reader takes every size from the
files. The design follows the real one: a master ordering shared by all subjects into each
subject's image list, whose first ``n_shared`` entries are the shared (test) images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io

from nfstore.errors import OptionError
from nfstore.readers._rois import NSD_ATLAS_LABELS
from nfstore.readers.nsd import EXPDESIGN, SCALE, STIMULI
from nfstore.synth import _signal

N_SUBJECT_ROWS = 8  # subjectim always has one row per NSD subject


@dataclass(frozen=True)
class NSDSynthConfig:
    """Sizes of a synthetic NSD tree (real values in brackets).

    Attributes
    ----------
    subjects : tuple of int   subjects to write (1..8)
    sessions : int            sessions per subject [30-40]
    trials_per_session : int  [750]
    runs_per_session : int    [12]
    images_per_subject : int  entries of each subject's image list [10000]
    shared : int              shared test images, first entries of every list [1000]
    image_size : int          pixels per side [425]
    grid : tuple of int       (X, Y, Z) grid of subject 1; others differ by a voxel or two
    noise : float             trial noise (percent signal change)
    bold5000_overlap : int    images that are also BOLD5000 COCO stimuli (half of them shared
                              test images), with the COCO ids of ``nf synth bold5000``
    seed : int
    """

    subjects: tuple[int, ...] = (1, 2)
    sessions: int = 3
    trials_per_session: int = 60
    runs_per_session: int = 4
    images_per_subject: int = 100
    shared: int = 20
    image_size: int = 64
    grid: tuple[int, int, int] = (20, 24, 20)
    noise: float = 1.0
    bold5000_overlap: int = 6
    seed: int = 0


def check_config(cfg: NSDSynthConfig) -> None:
    """One-line :class:`OptionError` for NSD sizes the generator cannot lay out."""
    for name in ("sessions", "trials_per_session", "runs_per_session", "images_per_subject",
                 "shared", "image_size"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OptionError(f"{name}: expected an integer >= 1; found {value!r}")
    bad = [s for s in cfg.subjects if isinstance(s, bool) or not isinstance(s, int)
           or not 1 <= s <= 8]
    if not cfg.subjects or bad:
        raise OptionError(f"subjects: expected NSD subject numbers in 1..8; found "
                          f"{list(cfg.subjects)}")
    if cfg.shared >= cfg.images_per_subject:
        raise OptionError(f"shared: expected fewer shared images than images_per_subject "
                          f"({cfg.images_per_subject}); found {cfg.shared}")
    trials = cfg.sessions * cfg.trials_per_session
    if trials > 3 * cfg.images_per_subject:
        raise OptionError(
            f"sessions x trials_per_session: expected at most 3 x images_per_subject = "
            f"{3 * cfg.images_per_subject} trials (each image is shown at most 3 times); "
            f"found {cfg.sessions} x {cfg.trials_per_session} = {trials}; raise "
            f"images_per_subject to {-(-trials // 3)} or ask for fewer trials")



def _grid(cfg: NSDSynthConfig, sub: int) -> tuple[int, int, int]:
    dx = (0, 1, 0, 2, -1, 2, -1, 0)[(sub - 1) % 8]
    return (cfg.grid[0] + dx, cfg.grid[1] + (sub - 1) % 3, cfg.grid[2] - (sub - 1) % 2)


def _volumes(grid: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Brain mask and ROI label volumes (X, Y, Z) for one subject."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in grid], indexing="ij")
    brain = (x**2 + y**2 + z**2) < 0.85
    general = brain & (y < 0.15)  # posterior part: "visual cortex"
    nsdgeneral = np.where(brain, general.astype(np.int16), -1).astype(np.int16)
    # V1, V2, V3, hV4: the most posterior 10%, 8%, 7%, 5% of nsdgeneral (ranked along y)
    prf = np.zeros(grid, np.int16)
    key = (y + 0.01 * z + 0.001 * x)[general]
    rank = np.argsort(np.argsort(key)) / key.size
    labels = np.zeros(key.size, np.int16)
    dorsal = z[general] >= 0
    for b, (lo, hi) in enumerate([(0.0, 0.10), (0.10, 0.18), (0.18, 0.25), (0.25, 0.30)]):
        band = (rank >= lo) & (rank < hi)
        labels[band] = 7 if b == 3 else 2 * b + 1
        labels[band & dorsal] = 7 if b == 3 else 2 * b + 2
    prf[general] = labels
    prf = np.where(brain, prf, -1).astype(np.int16)
    places = np.zeros(grid, np.int16)
    places[general & (y >= -0.2) & (x < -0.3)] = 1  # OPA
    places[general & (y >= -0.2) & (np.abs(x) <= 0.3)] = 2  # PPA
    places[general & (y >= -0.2) & (x > 0.3)] = 3  # RSC
    places = np.where(brain, places, -1).astype(np.int16)
    return {"brainmask": brain.astype(np.int16), "nsdgeneral": nsdgeneral,
            "prf-visualrois": prf, "floc-places": places}


def _design(cfg: NSDSynthConfig, n_images: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-based masterordering (n_trials,), subjectim (8, images_per_subject), sharedix."""
    n_trials = cfg.sessions * cfg.trials_per_session
    n_list = cfg.images_per_subject
    shared = np.sort(rng.choice(n_images, cfg.shared, replace=False))
    rest = np.setdiff1d(np.arange(n_images), shared)
    subjectim = np.empty((N_SUBJECT_ROWS, n_list), np.int64)
    own = n_list - cfg.shared
    for s in range(N_SUBJECT_ROWS):
        disjoint = rest[s * own:(s + 1) * own]
        pick = disjoint if disjoint.size == own else rng.choice(rest, own, replace=False)
        subjectim[s] = np.concatenate([shared, rng.permutation(pick)]) + 1
    # shared images seen 3 times each, the rest fill the remaining trials (<= 3 times each)
    seq = list(np.repeat(np.arange(cfg.shared), 3)[:n_trials])
    others = np.repeat(np.arange(cfg.shared, n_list), 3)
    seq += list(rng.permutation(others)[: max(0, n_trials - len(seq))])
    if len(seq) < n_trials:
        raise ValueError(f"images_per_subject={n_list} is too small for {n_trials} trials "
                         f"(at most 3 repeats per image)")
    masterordering = rng.permutation(np.array(seq)) + 1
    return masterordering, subjectim, shared + 1


def _run_sizes(cfg: NSDSynthConfig) -> list[int]:
    base, extra = divmod(cfg.trials_per_session, cfg.runs_per_session)
    return [base + (1 if r < extra else 0) for r in range(cfg.runs_per_session)]


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    nib.save(img, str(path))


def _write_expdesign(out: Path, cfg: NSDSynthConfig, runs: list[int],
                     masterordering: np.ndarray, subjectim: np.ndarray,
                     sharedix: np.ndarray) -> None:
    """Write ``nsd_expdesign.mat``.

    Parameters
    ----------
    runs : list of int
        Trials of each run of a session.
    masterordering : ndarray
        int (n_trials,), 1-based positions in a subject's 10k list.
    subjectim : ndarray
        int (N_SUBJECT_ROWS, n_list), 1-based nsdIds of each subject's list.
    sharedix : ndarray
        int (n_shared,), 1-based nsdIds of the shared images.
    """
    (out / EXPDESIGN).parent.mkdir(parents=True, exist_ok=True)
    stimpattern = np.zeros((cfg.sessions, cfg.runs_per_session, max(runs) + 2), np.uint8)
    for r, n in enumerate(runs):
        stimpattern[:, r, 1:n + 1] = 1
    scipy.io.savemat(out / EXPDESIGN, {
        "masterordering": masterordering[None, :].astype(np.float64),
        "subjectim": subjectim.astype(np.float64),
        "sharedix": sharedix[None, :].astype(np.float64),
        "basiccnt": np.tile(np.array([[cfg.trials_per_session], [0], [0]], np.float64),
                            (1, cfg.sessions)),
        "stimpattern": stimpattern.astype(np.float64),
    })


def _write_stim_info(out: Path, coco: np.ndarray, overlap: np.ndarray,
                     design: tuple[np.ndarray, np.ndarray, np.ndarray],
                     rng: np.random.Generator) -> None:
    """Write ``nsd_stim_info_merged.csv`` (COCO ids, splits, per-subject repeats).

    Parameters
    ----------
    coco : ndarray
        int (n_images,), the COCO id of every image.
    overlap : ndarray
        int (n_overlap,), 0-based nsdIds that BOLD5000 also showed.
    design : tuple of ndarray
        ``masterordering``, ``subjectim`` and ``sharedix`` as in :func:`_write_expdesign`.
    """
    masterordering, subjectim, sharedix = design
    n_images = coco.size
    info = pd.DataFrame({"cocoId": coco,
                         "cocoSplit": np.where(rng.random(n_images) < 0.9, "train2017",
                                               "val2017"),
                         "cropBox": ["(0, 0, 0.1, 0.1)"] * n_images,
                         "loss": np.zeros(n_images), "nsdId": np.arange(n_images),
                         "flagged": False,
                         "BOLD5000": np.isin(np.arange(n_images), overlap),
                         "shared1000": np.isin(np.arange(n_images), sharedix - 1)})
    for sub in range(1, N_SUBJECT_ROWS + 1):
        ids = subjectim[sub - 1, masterordering - 1] - 1
        info[f"subject{sub}"] = np.isin(np.arange(n_images), ids).astype(int)
        reps = np.zeros((n_images, 3), np.int64)
        seen = np.zeros(n_images, np.int64)
        for t, i in enumerate(ids):
            if seen[i] < 3:
                reps[i, seen[i]] = t + 1
            seen[i] += 1
        for r in range(3):
            info[f"subject{sub}_rep{r}"] = reps[:, r]
    info.to_csv(out / "nsddata/experiments/nsd/nsd_stim_info_merged.csv")


def _write_ctabs(out: Path) -> None:
    """Write the colour tables naming the prf-visualrois and floc-places labels."""
    label_dir = out / "nsddata/freesurfer/fsaverage/label"
    label_dir.mkdir(parents=True, exist_ok=True)
    for atlas in ("prf-visualrois", "floc-places"):
        lines = ["0 Unknown"] + [f"{k} {v}" for k, v in NSD_ATLAS_LABELS[atlas].items()]
        (label_dir / f"{atlas}.mgz.ctab").write_text("\n".join(lines) + "\n")


def synth_nsd(out: Path, cfg: NSDSynthConfig = NSDSynthConfig()) -> dict[str, float]:
    """Write a synthetic NSD tree under ``out``; returns a summary (counts, seconds)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    n_own = cfg.images_per_subject - cfg.shared
    n_images = cfg.shared + N_SUBJECT_ROWS * n_own
    z = _signal.latents(n_images, rng)
    images = _signal.render_images(z, cfg.image_size, rng)
    masterordering, subjectim, sharedix = _design(cfg, n_images, rng)
    coco = rng.choice(np.setdiff1d(np.arange(1, 600000), _signal.overlap_coco_ids(
        2 * cfg.shared)), n_images, replace=False)
    # pictures BOLD5000 also showed: shared test images and images of subject 1's own list
    n_ov = min(cfg.bold5000_overlap, 2 * cfg.shared)
    half = min(n_ov // 2 + n_ov % 2, cfg.shared)
    overlap = np.concatenate([sharedix[:half] - 1,
                              subjectim[0, cfg.shared:cfg.shared + n_ov - half] - 1])
    coco[overlap] = _signal.overlap_coco_ids(len(overlap))
    z[overlap], images[overlap] = _signal.world_images(
        [f"coco/{c}" for c in coco[overlap]], cfg.image_size)
    (out / STIMULI).parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(out / STIMULI, "w") as f:
        f.create_dataset("imgBrick", data=images, chunks=(1, *images.shape[1:]))

    runs = _run_sizes(cfg)
    _write_expdesign(out, cfg, runs, masterordering, subjectim, sharedix)
    _write_stim_info(out, coco, overlap, (masterordering, subjectim, sharedix), rng)
    _write_ctabs(out)
    n_trials = cfg.sessions * cfg.trials_per_session
    for sub in cfg.subjects:
        _write_subject(out, cfg, sub, z, subjectim, masterordering, runs, rng)
    _signal.save_truth(out, latents=z)
    return {"subjects": len(cfg.subjects), "images": n_images,
            "trials": n_trials * len(cfg.subjects), "seconds": time.perf_counter() - t0}


def _write_subject(out: Path, cfg: NSDSynthConfig, sub: int, z: np.ndarray,
                   subjectim: np.ndarray, masterordering: np.ndarray, runs: list[int],
                   rng: np.random.Generator) -> None:
    name = f"subj{sub:02d}"
    grid = _grid(cfg, sub)
    affine = np.diag([1.8, 1.8, 1.8, 1.0])
    affine[:3, 3] = -0.9 * np.array(grid)
    vols = _volumes(grid)
    func = out / "nsddata/ppdata" / name / "func1pt8mm"
    _write_nifti(func / "brainmask.nii.gz", vols["brainmask"], affine)
    for atlas in ("nsdgeneral", "prf-visualrois", "floc-places"):
        _write_nifti(func / "roi" / f"{atlas}.nii.gz", vols[atlas], affine)

    brain = vols["brainmask"].astype(bool)
    n_brain = int(brain.sum())
    w = _signal.voxel_weights(n_brain, rng)
    gain = np.where((vols["nsdgeneral"] == 1)[brain], 1.0, 0.1)
    ids = subjectim[sub - 1, masterordering - 1] - 1
    rows = []
    beta_dir = out / "nsddata_betas/ppdata" / name / "func1pt8mm/betas_fithrf_GLMdenoise_RR"
    beta_dir.mkdir(parents=True, exist_ok=True)
    t_per = cfg.trials_per_session
    for s in range(1, cfg.sessions + 1):
        t_ids = ids[(s - 1) * t_per: s * t_per]
        offset = rng.normal(0, 2.0, n_brain)  # session baseline, removed by z-scoring
        resp = _signal.responses(z[t_ids], w, gain, cfg.noise, offset, rng)
        vol = np.zeros((*grid, t_per), np.int16)
        vol[brain] = np.clip(np.rint(resp.T * SCALE), -32768, 32767).astype(np.int16)
        _write_nifti(beta_dir / f"betas_session{s:02d}.nii.gz", vol, affine)
        with h5py.File(beta_dir / f"betas_session{s:02d}.hdf5", "w") as f:
            f.create_dataset("betas", data=np.transpose(vol, (3, 2, 1, 0)),
                             chunks=(t_per, 1, 1, 1))
        t = 0
        for r, n in enumerate(runs, start=1):
            for trial in range(1, n + 1):
                g = (s - 1) * t_per + t
                rows.append((sub, s, r, trial, ids[g] + 1, masterordering[g], 738000.0 + g / 1e3,
                             int((ids[:g] == ids[g]).any()), 1, 800 + (g % 400), 0, 0, 0))
                t += 1
    cols = ["SUBJECT", "SESSION", "RUN", "TRIAL", "73KID", "10KID", "TIME", "ISOLD", "ISCORRECT",
            "RT", "CHANGEMIND", "MEMORYRECENT", "MEMORYFIRST"]
    behav = out / "nsddata/ppdata" / name / "behav"
    behav.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=cols).to_csv(behav / "responses.tsv", sep="\t", index=False)
