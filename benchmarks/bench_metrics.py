"""All eight metrics on image pairs at 425 px on CPU: the batched implementation (each network
loaded once, batches of 32) against a naive loop (the same networks, one image at a time).
Random weights under the real file names (``nfrecon.tiny.write_metric_weights``; the real CLIP
ViT-L/14 is replaced by a tiny one, so CLIP's share is understated).

Run: ``python benchmarks/bench_metrics.py [N] [N_NAIVE]`` (defaults 1000 and 50; the naive
loop's per-image cost is constant, so it is timed on fewer pairs and reported per image).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK  # noqa: E402


def naive_seconds_per_pair(nets: list, gt: np.ndarray, rec: np.ndarray, device: str) -> float:
    """The naive loop: one pair at a time through each network (networks loaded once)."""
    from nfrecon import metrics as M

    t0 = time.perf_counter()
    for i in range(len(gt)):
        for net in nets:
            M.features(net, gt[i:i + 1], "mindeye2", device, batch=1)
            M.features(net, rec[i:i + 1], "mindeye2", device, batch=1)
        M.pixel_metrics(gt[i:i + 1], rec[i:i + 1], "mindeye2")
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / len(gt)


def main() -> None:
    from nfrecon import metrics as M
    from nfrecon.tiny import write_metric_weights

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    n_naive = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    w = write_metric_weights(WORK / "metric_weights")
    nets = M.load_networks(M.weight_paths(w["weights"], "mindeye2"), w["clip"], "cpu")
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (n, 425, 425, 3), dtype=np.uint8)
    rec = rng.integers(0, 256, (n, 425, 425, 3), dtype=np.uint8)
    M.image_metrics(gt[:4], rec[:4], nets, "mindeye2")  # warm-up
    t0 = time.perf_counter()
    M.image_metrics(gt, rec, nets, "mindeye2")
    t_batched = time.perf_counter() - t0

    t_naive = naive_seconds_per_pair(nets, gt[:n_naive], rec[:n_naive], "cpu")
    print("all eight metrics, 425 px pairs, CPU (2 cores), random weights, tiny CLIP")
    print(f"  batched (32), {n} pairs : {t_batched:.1f} s = {n / t_batched:.2f} pairs/s")
    print(f"  naive, one image at a time ({n_naive} pairs): {1 / t_naive:.2f} pairs/s")
    print(f"  ratio batched / naive: {t_naive * n / t_batched:.2f}x (goal >= 5x)")


if __name__ == "__main__":
    main()
