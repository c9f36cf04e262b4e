"""Ingest time vs. the bare read of the same files (NSD NIfTI by nibabel: goal <= 1.5x;
BOLD5000 .mat by scipy.io and GOD BData by h5py: reported).

Run: ``python benchmarks/bench_ingest.py`` (or ``make bench``). Prints the measured ratio.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK, bold5000_bench_tree, god_bench_tree, nsd_bench_tree, timed  # noqa: E402

import nfstore  # noqa: E402
from nfstore.readers.nsd import Options  # noqa: E402


def _other(dataset: str, raw: Path, bare_read: object, what: str) -> None:
    store = WORK / f"ingest_{dataset}.zarr"

    def ingest() -> nfstore.IngestSummary:
        shutil.rmtree(store, ignore_errors=True)
        return nfstore.ingest(dataset, raw, store)

    t_bare, nbytes = timed(bare_read)  # type: ignore[arg-type]
    t_ingest, summary = timed(ingest)
    key = summary.subjects[0]
    print(f"{dataset}: {summary.trials} trials x {summary.voxels[key]} voxels, {what} "
          f"{nbytes / 2**20:.0f} MiB")
    print(f"  bare read         : {t_bare:6.2f} s")
    print(f"  nf ingest         : {t_ingest:6.2f} s")
    print(f"  ratio ingest/bare : {t_ingest / t_bare:.2f}x")


def bold5000() -> None:
    import scipy.io

    raw = bold5000_bench_tree()
    path = raw / "ROIs/CSI1/mat/CSI1_ROIs_TR34.mat"
    _other("bold5000", raw, lambda: sum(v.nbytes for k, v in scipy.io.loadmat(path).items()
                                        if not k.startswith("__")), "scipy.io.loadmat of")


def god() -> None:
    import h5py

    raw = god_bench_tree()

    def bare() -> int:
        with h5py.File(raw / "Subject1.h5") as f:
            return int(f["dataset"][()].nbytes + f["metadata/value"][()].nbytes)

    _other("god", raw, bare, "h5py read of")


def main() -> None:
    nsd()
    bold5000()
    god()


def nsd() -> None:
    raw = nsd_bench_tree()
    files = sorted(raw.glob("nsddata_betas/ppdata/subj01/func1pt8mm/*/betas_session*.nii.gz"))
    nbytes = sum(np.prod(nib.load(f).shape) * 2 for f in files)

    def bare() -> int:
        return sum(int(np.asanyarray(nib.load(f).dataobj).shape[-1]) for f in files)

    def bare_isal() -> int:  # the same one-call ISA-L inflate that ingest uses
        from nfstore._io import nifti_data

        return sum(int(nifti_data(f).shape[-1]) for f in files)

    store = WORK / "ingest.zarr"

    def ingest() -> nfstore.IngestSummary:
        shutil.rmtree(store, ignore_errors=True)
        return nfstore.ingest("nsd", raw, store, options=Options(format="nifti"))

    t_bare, t_isal, t_ingest = float("inf"), float("inf"), float("inf")
    for _ in range(5):  # alternate, so all see the same machine state; best of 5 each
        t, n = timed(bare, repeat=1)
        t_bare = min(t_bare, t)
        t, _ = timed(bare_isal, repeat=1)
        t_isal = min(t_isal, t)
        t, summary = timed(ingest, repeat=1)
        t_ingest = min(t_ingest, t)
    print(f"NSD NIfTI: {len(files)} sessions, {n} trials, grid {nib.load(files[0]).shape[:3]}, "
          f"{nbytes / 2**20:.0f} MiB int16, {summary.voxels['nsd/subj01']} nsdgeneral voxels")
    print(f"  bare nibabel read : {t_bare:6.2f} s  ({nbytes / 2**20 / t_bare:.0f} MiB/s)")
    print(f"  bare ISA-L read   : {t_isal:6.2f} s  ({nbytes / 2**20 / t_isal:.0f} MiB/s)")
    print(f"  nf ingest         : {t_ingest:6.2f} s")
    print(f"  ratio ingest/bare : {t_ingest / t_bare:.2f}x vs nibabel (goal <= 1.5x), "
          f"{t_ingest / t_isal:.2f}x vs the same ISA-L inflater")


if __name__ == "__main__":
    main()
