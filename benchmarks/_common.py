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


def nsd_bench_tree(sessions: int = 4, trials: int = 250, grid: tuple[int, int, int] = (48, 56, 48)
                   ) -> Path:
    """A synthetic NSD tree big enough to time (built once, reused)."""
    from nfstore.synth import synthesize

    out = WORK / f"nsd_{sessions}x{trials}_{'x'.join(map(str, grid))}"
    if not (out / "nf_synth_truth.npz").is_file():
        synthesize("nsd", out, overwrite=True, subjects=(1,), sessions=sessions,
                   trials_per_session=trials, runs_per_session=5, images_per_subject=500,
                   shared=50, image_size=32, grid=grid)
    return out
