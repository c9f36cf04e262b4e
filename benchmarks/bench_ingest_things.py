"""THINGS-fMRI ingest time vs. the bare read of the same files (h5py read of the whole
``ResponseData.h5`` betas block, pandas read of ``StimulusMetadata.csv`` and
``VoxelMetadata.csv``): the ratio ingest / bare read, measured in one run.

Size: one real THINGS subject is 12 sessions x 10 runs x 82 trials = 9840 trials (8640 train,
100 test images x 12) by ~211k voxels: 16.6 GB of float64, too large for a test machine. This
benchmark keeps the real trial design (all 9840 trials, 720 train concepts, 100 test images)
and scales the voxel count by ``--fraction`` (default 0.1: ~21k voxels, ~1.7 GB of float64),
so the time per trial and per voxel is measured on the real column layout. The betas block is
read by ingest in blocks of trial columns, as on real data. ``--tiny`` runs a small tree
(2 sessions, 20 concepts, ~1.5k voxels) to check that the script works.

Run: ``python benchmarks/bench_ingest_things.py [--fraction F] [--tiny]``. Prints the date,
the commit, the machine and the measured ratio. The synthetic tree is built once under
``$NF_BENCH_DIR`` (default ``benchmarks/_work``) and reused.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK, report_ratio, timed  # noqa: E402
from bench_ingest_bold5000_r2 import header  # noqa: E402

import nfstore  # noqa: E402

REAL_VOXELS = 211_000  # sub-01's VoxelMetadata rows (~189k-227k over the 3 subjects)
MASK_FILL = 0.35  # the synthetic brain mask fills ~35% of its box


def tree(fraction: float, tiny: bool) -> tuple[Path, dict[str, object]]:
    """The synthetic THINGS tree (built once) and its sizes."""
    from nfstore.synth import synthesize

    side = round((fraction * REAL_VOXELS / MASK_FILL) ** (1 / 3))
    sizes: dict[str, object] = (
        {"sessions": 2, "runs": 2, "train_concepts": 20, "test_concepts": 5,
         "grid": (16, 16, 16)} if tiny else
        {"sessions": 12, "runs": 10, "train_concepts": 720, "test_concepts": 100,
         "grid": (side, side, side)})
    out = WORK / ("things_tiny" if tiny else f"things_{side}")
    if not (out / "nf_synth_truth.npz").is_file():
        synthesize("things", out, overwrite=True, subjects=(1,), image_size=16, seed=0,
                   **sizes)
    return out, sizes


def bare_read(raw: Path) -> int:
    """Read every beta and both metadata tables, as a script without nfstore would."""
    import h5py
    import pandas as pd

    tables = raw / "betas_csv"
    with h5py.File(tables / "sub-01_ResponseData.h5", "r") as f:
        g = f["ResponseData"]
        betas = next(g[k][()] for k in g if k.endswith("_values") and g[k].dtype.kind == "f")
    stim = pd.read_csv(tables / "sub-01_StimulusMetadata.csv")
    vox = pd.read_csv(tables / "sub-01_VoxelMetadata.csv")
    return int(betas.nbytes + stim.memory_usage().sum() + vox.memory_usage().sum())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=0.1,
                    help="fraction of a real subject's ~211k voxels (default 0.1)")
    ap.add_argument("--tiny", action="store_true", help="a small tree, to check the script")
    args = ap.parse_args(argv)
    raw, sizes = tree(args.fraction, args.tiny)
    store = WORK / "ingest_things.zarr"

    def ingest() -> nfstore.IngestSummary:
        shutil.rmtree(store, ignore_errors=True)
        return nfstore.ingest("things", raw, store)

    t_bare, nbytes = timed(lambda: bare_read(raw), repeat=1 if not args.tiny else 3)
    t_ingest, summary = timed(ingest, repeat=1 if not args.tiny else 3)
    print(header())
    print(f"things (synthetic, {'tiny' if args.tiny else f'voxel fraction {args.fraction}'}; "
          f"{sizes['sessions']} sessions x {sizes['runs']} runs): {summary.trials} trials x "
          f"{summary.voxels['things/sub-01']} voxels, bare read {nbytes / 2**20:.0f} MiB")
    report_ratio("bare read (h5py + pandas)", t_bare, t_ingest)
    assert np.isfinite(t_ingest / t_bare)


if __name__ == "__main__":
    main()
