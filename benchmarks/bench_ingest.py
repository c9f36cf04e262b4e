"""Ingest time vs. the bare nibabel read of the same NIfTI files (goal: <= 1.5x).

Run: ``python benchmarks/bench_ingest.py`` (or ``make bench``). Prints the measured ratio.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK, nsd_bench_tree, timed  # noqa: E402

import nfstore  # noqa: E402
from nfstore.readers.nsd import Options  # noqa: E402


def main() -> None:
    raw = nsd_bench_tree()
    files = sorted(raw.glob("nsddata_betas/ppdata/subj01/func1pt8mm/*/betas_session*.nii.gz"))
    nbytes = sum(np.prod(nib.load(f).shape) * 2 for f in files)

    def bare() -> int:
        return sum(int(np.asanyarray(nib.load(f).dataobj).shape[-1]) for f in files)

    store = WORK / "ingest.zarr"

    def ingest() -> nfstore.IngestSummary:
        shutil.rmtree(store, ignore_errors=True)
        return nfstore.ingest("nsd", raw, store, options=Options(format="nifti"))

    t_bare, n = timed(bare)
    t_ingest, summary = timed(ingest)
    print(f"NSD NIfTI: {len(files)} sessions, {n} trials, grid {nib.load(files[0]).shape[:3]}, "
          f"{nbytes / 2**20:.0f} MiB int16, {summary.voxels['nsd/subj01']} nsdgeneral voxels")
    print(f"  bare nibabel read : {t_bare:6.2f} s  ({nbytes / 2**20 / t_bare:.0f} MiB/s)")
    print(f"  nf ingest         : {t_ingest:6.2f} s")
    print(f"  ratio ingest/bare : {t_ingest / t_bare:.2f}x  (goal <= 1.5x)")


if __name__ == "__main__":
    main()
