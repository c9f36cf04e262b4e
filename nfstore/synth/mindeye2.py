"""``nf synth mindeye2``: a small MindEye2 bundle made from a synthetic NSD tree, as MindEye2's
``dataset_creation.ipynb`` makes the real one.

The NSD tree is written first (:mod:`nfstore.synth.nsd`) and kept in ``OUT/nsd`` (its ROI
folders serve ``--option rois=OUT/nsd``; ``nf ingest nsd OUT/nsd`` ingests the same subjects
from the release files). From it, per subject:

- betas: each session's NIfTI betas (int16, not divided by 300, as ``nsd_access`` reads them),
  the ``nsdgeneral == 1`` voxels in C order, sessions stacked, then every voxel z-scored with the
  mean and std (ddof 0) of the training trials, float32;
- behav arrays: the 17 columns from ``responses.tsv`` (absent columns -1), written to the
  train / test / new_test tars; ``test/0.tar`` leaves out the last ``new_sessions`` sessions
  (the real bundle leaves out the 3 sessions released in 2023);
- images: the NSD brick rows any subject shows, resized to 224 px (PIL bicubic), float16 CHW
  in [0, 1]; the other rows are left unwritten (fill value 0).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from nfstore import _io
from nfstore.community import mindeye2_files as me2
from nfstore.errors import OptionError
from nfstore.readers.nsd import EXPDESIGN, STIMULI
from nfstore.synth.nsd import NSDSynthConfig, synth_nsd

NSD_FOLDER = "nsd"
_BEHAV = {6: "TIME", 7: "ISOLD", 8: "ISCORRECT", 9: "RT", 10: "CHANGEMIND", 11: "ISOLDCURRENT",
          12: "ISCORRECTCURRENT", 13: "TOTAL1", 14: "TOTAL2", 15: "BUTTON"}


@dataclass(frozen=True)
class MindEye2SynthConfig(NSDSynthConfig):
    """Sizes of a synthetic bundle: those of its NSD tree (:class:`NSDSynthConfig`, real values
    in brackets there) plus ``new_sessions``, the last sessions left out of ``test/0.tar`` [3]."""

    new_sessions: int = 1

    def nsd(self) -> NSDSynthConfig:
        """The settings of the NSD tree the bundle is made from."""
        own = {f.name for f in dataclasses.fields(NSDSynthConfig)}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k in own}
        if isinstance(self.new_sessions, bool) or not isinstance(self.new_sessions, int) \
                or self.new_sessions < 0:
            raise OptionError(f"new_sessions: expected an integer >= 0; found "
                              f"{self.new_sessions!r}")
        return NSDSynthConfig(**{**values, "grid": tuple(self.grid),
                                 "subjects": tuple(self.subjects)})


def synth_mindeye2(out: Path, cfg: MindEye2SynthConfig = MindEye2SynthConfig()
                   ) -> dict[str, float]:
    """Write the NSD tree to ``out/nsd`` and the bundle made from it to ``out``."""
    t0 = time.perf_counter()
    nsd = out / NSD_FOLDER
    nsd.mkdir(parents=True)
    summary = synth_nsd(nsd, cfg.nsd())
    sharedix = _io.load_mat(nsd / EXPDESIGN, ("sharedix",))["sharedix"].ravel().astype(np.int64)
    with h5py.File(nsd / STIMULI, "r") as f:
        n_images = int(f["imgBrick"].shape[0])
    shared = np.zeros(n_images, bool)
    shared[sharedix - 1] = True
    np.save(out / "shared1000.npy", shared)
    shown = [bundle_subject(out, nsd, sub, shared, cfg.new_sessions) for sub in cfg.subjects]
    rows = np.unique(np.concatenate(shown))
    with h5py.File(nsd / STIMULI, "r") as f:
        brick = f["imgBrick"]
        me2.write_images(out / me2.IMAGES, n_images, rows, (brick[r] for r in rows.tolist()))
    return {**summary, "seconds": time.perf_counter() - t0}


def bundle_subject(out: Path, nsd: Path, sub: int, shared: np.ndarray, new_sessions: int
                   ) -> np.ndarray:
    """Write one subject's betas file and tars; returns the 0-based 73k ids it shows."""
    name = f"subj{sub:02d}"
    resp = pd.read_csv(nsd / "nsddata/ppdata" / name / "behav/responses.tsv", sep="\t")
    kid = resp["73KID"].to_numpy(np.int64) - 1
    cols = {me2.IMAGE: kid, me2.ROW: np.arange(len(resp)), me2.SHARED: shared[kid]}
    for col, key in ((me2.SUBJECT, "SUBJECT"), (me2.SESSION, "SESSION"), (me2.RUN, "RUN"),
                     (me2.TRIAL, "TRIAL")):
        cols[col] = resp[key].to_numpy()
    for col, key in _BEHAV.items():
        if key in resp.columns:
            v = resp[key].to_numpy(np.float64)
            cols[col] = np.trunc(v) if key in ("TIME", "ISOLD") else v
    behav = me2.behav_matrix(len(resp), cols)
    session = behav[:, me2.SESSION].astype(np.int64)
    betas = _session_betas(nsd, name, np.unique(session))
    train = behav[:, me2.SHARED] == 0
    mean = betas[train].mean(axis=0)
    std = betas[train].std(axis=0)
    z = np.divide(betas - mean, std, out=np.zeros_like(betas), where=std > 0)
    me2.write_betas(out / me2.betas_name(sub), z.shape, [(0, z.astype(np.float32))])
    old = session <= session.max() - new_sessions
    me2.write_tars(out / me2.wds_dir(sub), behav, old)
    return np.unique(kid)


def _session_betas(nsd: Path, name: str, sessions: np.ndarray) -> np.ndarray:
    """The sessions' betas, float64 (n_trials, n_voxels): nsdgeneral == 1 voxels, C order."""
    func = nsd / "nsddata/ppdata" / name / "func1pt8mm"
    mask = (_io.nifti_data(func / "roi/nsdgeneral.nii.gz") == 1).flatten()
    beta_dir = nsd / "nsddata_betas/ppdata" / name / "func1pt8mm/betas_fithrf_GLMdenoise_RR"
    parts = []
    for s in sessions.tolist():
        vol = _io.nifti_data(beta_dir / f"betas_session{s:02d}.nii.gz")  # (X, Y, Z, T) int16
        vol = np.moveaxis(vol, -1, 0)
        parts.append(vol.reshape(len(vol), -1)[:, mask].astype(np.float64))
    return np.concatenate(parts)
