"""Helpers shared by the benchmark scripts (not a test module)."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORK = Path(os.environ.get("NF_BENCH_DIR", Path(__file__).parent / "_work"))


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls (seconds) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report_ratio(baseline: str, t_bare: float, t_ingest: float) -> None:
    """Print an ingest benchmark's times, their ratio and the peak RSS (one format for all)."""
    print(f"  {baseline:26s}: {t_bare:7.2f} s")
    print(f"  {'nf ingest':26s}: {t_ingest:7.2f} s")
    print(f"  {'ratio ingest/bare':26s}: {t_ingest / t_bare:.2f}x")
    print(f"  {'peak RSS':26s}: {peak_rss_mib():.0f} MiB")


def nsd_bench_tree(sessions: int = 4, trials: int = 250, grid: tuple[int, int, int] = (48, 56, 48)
                   ) -> Path:
    """A synthetic NSD tree big enough to time (built once, reused)."""
    from nfstore.synth import synthesize

    out = WORK / f"nsd_{sessions}x{trials}_{'x'.join(map(str, grid))}"
    if not (out / "nf_synth_truth.npz").is_file():
        synthesize("nsd", out, overwrite=True, subjects=(1,), sessions=sessions,
                   trials_per_session=trials, runs_per_session=5,
                   images_per_subject=max(500, -(-sessions * trials // 3)),  # <= 3 shows each
                   shared=50, image_size=32, grid=grid)
    return out


def bold5000_bench_tree() -> Path:
    """A synthetic BOLD5000 subject at about real size (CSI1: ~1700 ROI voxels, 5550 trials)."""
    from nfstore.synth import synthesize

    out = WORK / "bold5000_real_size"
    if not (out / "nf_synth_truth.npz").is_file():
        synthesize("bold5000", out, overwrite=True, subjects=(1,), sessions=15,
                   runs_per_session=10, trials_per_run=37, images=(2000, 1916, 1000),
                   test_images=113, image_size=16, voxels=(90, 250))
    return out


def god_bench_tree() -> Path:
    """A synthetic GOD subject at about real size (1200 + 1750 + 1000 samples, ~4400 voxels)."""
    from nfstore.synth import synthesize

    out = WORK / "god_real_size"
    if not (out / "nf_synth_truth.npz").is_file():
        synthesize("god", out, overwrite=True, subjects=(1,), train_categories=150,
                   images_per_category=8, test_images=50, train_runs=24, test_runs=35,
                   imagery_runs=20, image_size=16, grid=(22, 26, 18))
    return out
