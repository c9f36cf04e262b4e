"""``nf synth brain-diffuser``: Brain-Diffuser's ``data/`` folder made from a synthetic NSD tree.

The NSD tree (:func:`nfstore.synth.nsd.synth_nsd`) is written into the folder itself, where
Brain-Diffuser's download script puts the release files (``nsddata/``, ``nsddata_betas/``,
``nsddata_stimuli/``), together with ``annots/COCO_73k_annots_curated.npy``. The arrays under
``processed_data/`` are then made as ``data/prepare_nsddata.py`` makes them: the NIfTI betas of
the first ``array_sessions`` sessions as float32, the ``nsdgeneral > 0`` voxels in C order,
each image's trials averaged in float32 and stored as float64, rows in order of first
appearance (train and test separately), images as float64 and captions as a fixed-width
unicode array with ``''`` for missing ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path

import h5py
import numpy as np

from nfstore import _io
from nfstore.community import brain_diffuser_files as bdf
from nfstore.errors import OptionError
from nfstore.readers.nsd import STIMULI
from nfstore.synth.nsd import NSDSynthConfig, synth_nsd
from nfstore.synth.nsd import check_config as check_nsd

BETAS = ("nsddata_betas/ppdata/{s}/func1pt8mm/betas_fithrf_GLMdenoise_RR/"
         "betas_session{n:02d}.nii.gz")
ROI = "nsddata/ppdata/{s}/func1pt8mm/roi/nsdgeneral.nii.gz"


@dataclass(frozen=True)
class BrainDiffuserSynthConfig:
    """Sizes of a synthetic Brain-Diffuser ``data/`` folder (real values in brackets).

    Attributes
    ----------
    subjects : tuple of int      NSD subjects (Brain-Diffuser's scripts accept 1, 2, 5, 7)
    sessions : int               sessions of the NSD tree [40]
    array_sessions : int         sessions the arrays average [37]
    trials_per_session, runs_per_session, images_per_subject, shared, image_size, grid,
    noise, bold5000_overlap : as :class:`nfstore.synth.nsd.NSDSynthConfig`
    missing_captions : float     fraction of captions left '' [about 0.002]
    seed : int
    """

    subjects: tuple[int, ...] = (1, 2)
    sessions: int = 4
    array_sessions: int = 3
    trials_per_session: int = 60
    runs_per_session: int = 4
    images_per_subject: int = 100
    shared: int = 20
    image_size: int = 32
    grid: tuple[int, int, int] = (14, 16, 14)
    noise: float = 1.0
    bold5000_overlap: int = 6
    missing_captions: float = 0.2
    seed: int = 0


def nsd_config(cfg: BrainDiffuserSynthConfig) -> NSDSynthConfig:
    """The settings of the NSD tree underneath."""
    names = {f.name for f in fields(NSDSynthConfig)}
    return NSDSynthConfig(**{k: getattr(cfg, k) for k in names})


def check_config(cfg: BrainDiffuserSynthConfig) -> None:
    """One-line :class:`OptionError` for sizes the generator cannot lay out."""
    check_nsd(nsd_config(cfg))
    if not isinstance(cfg.array_sessions, int) or not 1 <= cfg.array_sessions <= cfg.sessions:
        raise OptionError(f"array_sessions: expected 1..sessions ({cfg.sessions}); found "
                          f"{cfg.array_sessions!r}")
    if not 0.0 <= cfg.missing_captions < 1.0:
        raise OptionError(f"missing_captions: expected a fraction in [0, 1); found "
                          f"{cfg.missing_captions!r}")


def write_annots(out: Path, n_images: int, missing: float, rng: np.random.Generator
                 ) -> np.ndarray:
    """Write ``annots/COCO_73k_annots_curated.npy``: (n_images, 5) unicode captions."""
    words = np.array(["a", "red", "dog", "sits", "on", "the", "grass", "near", "two", "cats",
                      "blue", "kite", "over", "beach", "man", "rides", "bike"])
    caps = [[" ".join(rng.choice(words, rng.integers(4, 9))) if rng.random() >= missing
             else "" for _ in range(bdf.N_CAPTIONS)] for _ in range(n_images)]
    annots = bdf.caption_array(caps)
    (out / bdf.ANNOTS).parent.mkdir(parents=True, exist_ok=True)
    bdf.write_array(out / bdf.ANNOTS, annots)
    return annots


def prepare_subject(out: Path, number: int, n_sessions: int, annots: np.ndarray) -> int:
    """Write one subject's arrays as ``prepare_nsddata.py`` does; returns the trials used."""
    subject = f"subj{number:02d}"
    design = bdf.read_design(out / bdf.EXPDESIGN, number)
    mask = _io.nifti_data(out / ROI.format(s=subject)) > 0
    fmri = np.concatenate([
        _io.nifti_data(out / BETAS.format(s=subject, n=s)).astype(np.float32)[mask].T
        for s in range(1, n_sessions + 1)])
    rows = bdf.design_rows(design, n_sessions)
    folder = bdf.subject_dir(out, number)
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(out / STIMULI, "r") as f:
        brick = f["imgBrick"]
        for split in bdf.SPLITS:
            ids = rows[split].nsd_ids
            bdf.write_array(bdf.array_path(out, number, split, "fmri"),
                            bdf.average_rows(fmri, rows[split].trials))
            bdf.write_array(bdf.array_path(out, number, split, "stim"),
                            np.stack([brick[i] for i in ids]).astype(np.float64))
            bdf.write_array(bdf.array_path(out, number, split, "cap"), annots[ids])
    return len(fmri)


def synth_brain_diffuser(out: Path, cfg: BrainDiffuserSynthConfig = BrainDiffuserSynthConfig()
                         ) -> dict[str, float]:
    """Write a synthetic Brain-Diffuser ``data/`` folder under ``out``; returns a summary."""
    t0 = time.perf_counter()
    summary = synth_nsd(out, nsd_config(cfg))
    rng = np.random.default_rng([cfg.seed, 17])
    annots = write_annots(out, int(summary["images"]), cfg.missing_captions, rng)
    trials = sum(prepare_subject(out, s, cfg.array_sessions, annots) for s in cfg.subjects)
    return {"subjects": len(cfg.subjects), "images": summary["images"], "trials": trials,
            "seconds": time.perf_counter() - t0}
