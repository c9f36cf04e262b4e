"""BOLD5000 release 2 (GLMsingle TYPED betas) ingest time vs. the bare read of the same files
(nibabel: every session's ``CSI1_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_ses-NN.nii.gz`` and the
brain mask, masked): the ratio ingest / bare read, measured in one run.

Size: the real CSI1 grid (71 x 89 x 72, ~170k brain-mask voxels) and the real session size
(10 runs x 37 = 370 trials per session, float32: ~670 MB per session uncompressed), for
``--sessions`` sessions (default 3 of CSI1's 15; the time grows linearly with sessions, as
ingest streams session by session). ``--tiny`` runs a small grid and 2 sessions to check that
the script works.

Run: ``python benchmarks/bench_ingest_bold5000_r2.py [--sessions N] [--tiny]``. Prints the
date, the commit, the machine and the measured ratio. The synthetic tree is built once under
``$NF_BENCH_DIR`` (default ``benchmarks/_work``) and reused.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK, report_ratio, timed  # noqa: E402

import nfstore  # noqa: E402

TYPED = "TYPED-FITHRF-GLMDENOISE-RR"


def header() -> str:
    """One line: UTC date, commit, machine (CPU count, processor, OS)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = platform.processor() or platform.machine()
    return (f"{now}; commit {commit}; {platform.node()}, {os.cpu_count()} CPUs ({cpu}), "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def tree(sessions: int, tiny: bool) -> Path:
    """The synthetic release-2 tree of CSI1 (built once)."""
    from nfstore.synth import synthesize

    if tiny:
        sizes = {"sessions": 2, "runs_per_session": 2, "trials_per_run": 10,
                 "images": (20, 10, 10), "test_images": 5, "grid": (12, 14, 10)}
    else:
        sizes = {"sessions": sessions, "runs_per_session": 10, "trials_per_run": 37,
                 "images": (500, 400, 200), "test_images": 30, "grid": (71, 89, 72)}
    out = WORK / ("bold5000_r2_tiny" if tiny else f"bold5000_r2_{sessions}")
    if not (out / "nf_synth_truth.npz").is_file():
        synthesize("bold5000", out, overwrite=True, release=2, subjects=(1,), image_size=16,
                   seed=0, **sizes)
    return out


def bare_read(raw: Path) -> int:
    """Every session's TYPED betas masked by the brain mask, as a nibabel script would."""
    mask = np.asanyarray(nib.load(raw / "CSI1_brainmask.nii.gz").dataobj) > 0
    n = 0
    for f in sorted(raw.glob(f"CSI1_GLMbetas-{TYPED}_ses-*.nii.gz")):
        n += np.asanyarray(nib.load(f).dataobj)[mask].nbytes
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=3, help="sessions of CSI1 (default 3)")
    ap.add_argument("--tiny", action="store_true", help="a small tree, to check the script")
    args = ap.parse_args(argv)
    raw = tree(args.sessions, args.tiny)
    store = WORK / "ingest_bold5000_r2.zarr"
    files = sorted(raw.glob(f"CSI1_GLMbetas-{TYPED}_ses-*.nii.gz"))
    shape = nib.load(files[0]).shape

    def ingest() -> nfstore.IngestSummary:
        shutil.rmtree(store, ignore_errors=True)
        return nfstore.ingest("bold5000", raw, store, subjects=["CSI1"])

    repeat = 3 if args.tiny else 1
    t_bare, nbytes = timed(lambda: bare_read(raw), repeat=repeat)
    t_ingest, summary = timed(ingest, repeat=repeat)
    print(header())
    print(f"bold5000 release 2 (synthetic{', tiny' if args.tiny else ''}): {len(files)} "
          f"sessions, grid {shape[:3]}, {summary.trials} trials x "
          f"{summary.voxels['bold5000/CSI1']} brain-mask voxels, {nbytes / 2**20:.0f} MiB "
          f"float32 masked")
    report_ratio("bare nibabel read", t_bare, t_ingest)


if __name__ == "__main__":
    main()
