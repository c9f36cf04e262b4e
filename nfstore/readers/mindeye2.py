"""MindEye2 bundle reader: the prepared NSD files of Hugging Face ``pscotti/mindeyev2``.

Files (relative to the bundle root, MindEye2's ``data_path``)::

    betas_all_subj0N_fp32_renorm.hdf5     'betas' float32 (n_trials, n_voxels), z-scored already
    coco_images_224_float16.hdf5          'images' float16 (73000, 3, 224, 224) in [0, 1]
    wds/subj0N/{train,test,new_test}/*.tar   behav arrays (column meanings:
                                          :data:`nfstore.community.mindeye2_files.COLUMNS`)

One trial per betas row. Its stimulus, session, run and split come from the ``behav`` array
whose column 5 names the row: column 0 is the 0-based 73k id (stimulus ``nsd/<5-digit id>``, the
NSD release reader's ids), 2 the session, 3 the run, and column 16 == 1 marks a test (shared
1000) trial. A trial found in both ``test/0.tar`` and ``new_test/0.tar`` counts once. The
subjects are NSD subjects: the reader writes the ``nsd`` group.

The values are kept as stored (default normalization ``none``): the bundle's makers z-scored
each voxel with the mean and std of the training trials. The bundle holds no voxel
coordinates; the ``rois`` option points at the NSD release's ROI files to recover them (columns
are the ``nsdgeneral == 1`` voxels in C order over the (X, Y, Z) grid).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nfstore import _io
from nfstore.community import mindeye2_files as me2
from nfstore.errors import MissingFileError, ReaderError
from nfstore.names import SPLIT, STIMULUS, VOXEL_I, VOXEL_J, VOXEL_K
from nfstore.readers.base import Block, RawSubject, Reader, StimulusTable

NAME = "mindeye2"
DATASET = "nsd"
ROI_SUBDIR = Path("func1pt8mm") / "roi"
USED_COLUMNS = [me2.IMAGE, me2.SESSION, me2.RUN, me2.ROW, me2.SHARED]


@dataclass(frozen=True)
class Options:
    """MindEye2 ingest options.

    Attributes
    ----------
    rois : str or None
        NSD ROI files: a folder holding ``nsdgeneral.nii.gz`` (one subject), a folder with one
        such folder per subject (``subj01/``), or an NSD release root
        (``nsddata/ppdata/subj01/func1pt8mm/roi``). Without it, voxel coordinates are -1 and
        the only ROI is ``nsdgeneral`` (every column).
    block_trials : int
        Most betas rows read at once (a block never spans two sessions).
    """

    rois: str | None = field(default=None, metadata={
        "help": "NSD roi folder (nsdgeneral.nii.gz ...), per-subject folders or NSD root"})
    block_trials: int = field(default=750, metadata={"help": "betas rows read at once"})


def roi_folder(rois: str | Path, subject: str) -> Path:
    """The folder holding ``subject``'s ``nsdgeneral.nii.gz`` under the ``rois`` option."""
    base = Path(rois).expanduser()
    for cand in (base / "nsddata" / "ppdata" / subject / ROI_SUBDIR, base / subject / ROI_SUBDIR,
                 base / subject, base):
        if (cand / "nsdgeneral.nii.gz").is_file():
            return cand
    raise MissingFileError(f"{base / 'nsdgeneral.nii.gz'}: missing file; expected rois to hold "
                           f"nsdgeneral.nii.gz directly, in {subject}/ or in an NSD release "
                           f"tree (nsddata/ppdata/{subject}/func1pt8mm/roi)")


def _voxels(rois: str | None, subject: str, n_columns: int, betas: Path
            ) -> tuple[dict[str, np.ndarray], list[str], np.ndarray, dict[str, Any], list[Path]]:
    """Voxel coordinates, ROI names and masks (n_rois, n_columns), geometry attrs and files."""
    if rois is None:
        minus = np.full(n_columns, -1, np.int64)
        return ({VOXEL_I: minus, VOXEL_J: minus.copy(), VOXEL_K: minus.copy()}, ["nsdgeneral"],
                np.ones((1, n_columns), bool), {}, [])
    from nfstore.readers._nsd_betas import _read_rois

    folder = roi_folder(rois, subject)
    general_path = folder / "nsdgeneral.nii.gz"
    grid, affine, img = _io.nifti_header(general_path)
    ijk = np.nonzero(_io.nifti_data(general_path) == 1)  # C order: the bundle's columns
    if ijk[0].size != n_columns:
        raise ReaderError(f"{general_path}: expected {n_columns} voxels labelled 1 (the columns "
                          f"of {betas.name}); found {ijk[0].size}")
    nsd_root = Path(rois).expanduser()
    names, masks, _ = _read_rois(folder, nsd_root, (general_path, img), ijk)
    coords = {c: np.asarray(a, np.int64) for c, a in zip((VOXEL_I, VOXEL_J, VOXEL_K), ijk)}
    attrs = {"volume_shape": [int(n) for n in grid[:3]],
             "affine": np.asarray(affine).tolist()}
    return coords, names, masks, attrs, sorted(folder.glob("*.nii.gz"))


def _betas_shape(path: Path) -> tuple[int, int]:
    import h5py

    _io.require_file(path, "the MindEye2 betas (betas_all_subj0N_fp32_renorm.hdf5)")
    with _io.reading(path, "HDF5"), h5py.File(path, "r") as f:
        if "betas" not in f:
            raise ReaderError(f"{path}: expected dataset 'betas'; found {sorted(f.keys())}")
        d = f["betas"]
        if d.ndim != 2 or d.dtype.kind != "f":
            raise ReaderError(f"{path}: expected betas of shape (trials, voxels) float32; "
                              f"found {d.shape} {d.dtype}")
        return int(d.shape[0]), int(d.shape[1])


def trial_rows(tars: list[Path], betas: Path, n_rows: int) -> np.ndarray:
    """The behav row of every betas row, (n_rows, 17) float64, row r describing betas row r.

    A row found in several tars (``new_test`` and ``test``) counts once, the first tar's row
    kept, when the columns the reader uses (:data:`USED_COLUMNS`) agree: the two test sets
    were made at different times and may differ in the behavioural columns. Every betas row
    must be covered exactly once.
    """
    out = np.full((n_rows, len(me2.COLUMNS)), np.nan)
    origin: dict[int, Path] = {}
    n_found = 0
    for tar in tars:
        behav = me2.read_behav(tar)
        rows = behav[:, me2.ROW].astype(np.int64)
        if behav.size and (rows.min() < 0 or rows.max() >= n_rows):
            bad = int(rows.max() if rows.max() >= n_rows else rows.min())
            raise ReaderError(f"{betas}: expected {n_rows} rows to cover the betas rows of "
                              f"the behav arrays; {tar} names row {bad}")
        for r, b in zip(rows.tolist(), behav):
            if r in origin:
                if not np.array_equal(out[r, USED_COLUMNS], b[USED_COLUMNS]):
                    raise ReaderError(f"{tar}: expected betas row {r} to have the image, "
                                      f"session, run and test flag it has in {origin[r]}; "
                                      f"found {b[USED_COLUMNS].tolist()} instead of "
                                      f"{out[r, USED_COLUMNS].tolist()}")
                continue
            origin[r] = tar
            out[r] = b
            n_found += 1
    if n_found != n_rows:
        raise ReaderError(f"{betas}: expected {n_found} rows (one per trial of the behav "
                          f"arrays under {tars[0].parents[1]}); found {n_rows}")
    return out


class MindEye2Reader(Reader):
    """The MindEye2 bundle (see the module docstring): NSD subjects, values as stored."""

    name = NAME
    dataset = DATASET
    Options = Options
    normalization = "none"
    subject_regex = r"(?:subj)?0*([1-9]\d*)"
    subject_template = "subj{n:02d}"
    subject_examples = "NSD subjects like 1 or subj01"
    subject_pattern = r"subj0[1-8]"

    def list_subjects(self, root: Path) -> list[str]:
        """Subjects with a betas file in ``root``."""
        found = [re.fullmatch(r"betas_all_subj(\d\d)_fp32_renorm\.hdf5", p.name)
                 for p in Path(root).glob("betas_all_subj*_fp32_renorm.hdf5")]
        return sorted(f"subj{m.group(1)}" for m in found if m)

    def stimulus_table(self, root: Path, options: Any = None) -> StimulusTable:
        """Every row of ``coco_images_224_float16.hdf5`` as stimulus ``nsd/<5-digit 73k id>``."""
        n = me2.image_count(root / me2.IMAGES)
        return StimulusTable(
            dataset=DATASET,
            stimulus=np.array([f"{DATASET}/{i:05d}" for i in range(n)], dtype=object),
            file=np.array([me2.IMAGES] * n, dtype=object),
            index=np.arange(n, dtype=np.int64), root=Path(root).resolve())

    def synth_config(self) -> type:
        from nfstore.synth.mindeye2 import MindEye2SynthConfig

        return MindEye2SynthConfig

    def check_synth(self, config: Any) -> None:
        from nfstore.synth.nsd import check_config

        check_config(config.nsd())

    def synthesize(self, out: Path, config: Any) -> dict[str, float]:
        from nfstore.synth.mindeye2 import synth_mindeye2

        return synth_mindeye2(out, config)

    def open_subject(self, root: Path, subject: str, options: Any = None) -> RawSubject:
        """Read the behav arrays and betas header of one subject (betas stay in blocks)."""
        options = options if options is not None else Options()
        subject = self.subject_name(subject)
        number = int(subject[4:])
        betas = Path(root) / me2.betas_name(number)
        n_rows, n_cols = _betas_shape(betas)
        tars = me2.subject_tars(Path(root), number)
        behav = trial_rows(tars, betas, n_rows)
        trials = self._trials(behav)
        voxels, names, masks, geometry, roi_files = _voxels(options.rois, subject, n_cols, betas)
        blocks = self._blocks(betas, trials["session"].to_numpy(), max(1, options.block_trials))
        records = [_io.file_record(p, root) for p in [betas, *tars]]
        if options.rois is not None:
            records += [_io.file_record(p, Path(options.rois).expanduser())
                        for p in roi_files]
        return RawSubject(
            dataset=DATASET, subject=subject, trials=trials,
            norm_group=trials["session"].to_numpy(), voxels=voxels, roi_names=names,
            roi_mask=masks, blocks=blocks,
            attrs={**geometry, "source": "MindEye2 bundle", "source_files": records,
                   "sessions": sorted(int(s) for s in np.unique(trials["session"])),
                   "voxel_order": "nsdgeneral == 1 voxels in C order over (X, Y, Z)"},
            normalization={"method": "none", "group": "none", "ddof": 0,
                           "statistics_from": "none",
                           "as_provided": "z-scored per voxel by the bundle's makers with the "
                                          "mean and std of the training trials"})

    @staticmethod
    def _trials(behav: np.ndarray) -> pd.DataFrame:
        """The trial table (one row per betas row) from its behav rows (n, 17)."""
        ids = behav[:, me2.IMAGE].astype(np.int64)
        stim = np.array([f"{DATASET}/{i:05d}" for i in ids], dtype=object)
        return pd.DataFrame({
            STIMULUS: stim,
            SPLIT: np.where(behav[:, me2.SHARED] == 1, "test", "train").astype(object),
            "session": behav[:, me2.SESSION].astype(np.int64),
            "run": behav[:, me2.RUN].astype(np.int64),
            "repeat": pd.Series(ids).groupby(ids).cumcount().to_numpy(),
            "bundle_row": np.arange(len(ids), dtype=np.int64),
        })

    @staticmethod
    def _blocks(betas: Path, session: np.ndarray, max_rows: int) -> list[Block]:
        """Row ranges of at most ``max_rows`` rows, never spanning two sessions."""
        blocks = []
        cuts = [0] + [i for i in range(1, session.size) if session[i] != session[i - 1]]
        for a, b in zip(cuts, cuts[1:] + [session.size]):
            edges = list(range(a, b, max_rows)) + [b]
            blocks += [Block(f"session {int(session[p])} rows {p}-{q - 1}", p, q,
                             (lambda p=p, q=q: _load_rows(betas, p, q)), (betas,))
                       for p, q in zip(edges[:-1], edges[1:])]
        return blocks


def _load_rows(path: Path, start: int, stop: int) -> np.ndarray:
    """Betas rows ``start:stop`` as float32 (stop - start, n_voxels)."""
    import h5py

    with _io.reading(path, "HDF5"), h5py.File(path, "r") as f:
        return np.asarray(f["betas"][start:stop], dtype=np.float32)
