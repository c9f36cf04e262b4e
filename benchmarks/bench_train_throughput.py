"""Training samples/s reading from the store vs. the same model fed from in-memory tensors.

Both runs take the same batches (same composition, same order) and the same model; the store run
includes everything the loader does (chunk reads, ROI selection, shuffle buffer). Goal: >= 0.8.
Run: ``python benchmarks/bench_train_throughput.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK  # noqa: E402

import nfstore  # noqa: E402
from nftrain.config import build  # noqa: E402
from nftrain.data import batches, load_dataset, prefetch  # noqa: E402
from nftrain.losses import info_nce  # noqa: E402
from nftrain.model import Decoder, ModelSpec  # noqa: E402
from nftrain.train import to_device  # noqa: E402


def bench_store() -> Path:
    """Two NSD subjects (4 x 250 trials, ~9k voxels each) with embeddings, built once."""
    from nfstore.embeddings import embed_store
    from nfstore.synth import synthesize
    from nfstore.tiny import write_tiny_encoder

    store = WORK / "train_store.zarr"
    if (store / "embeddings").is_dir():
        return store
    raw = WORK / "train_raw"
    synthesize("nsd", raw, overwrite=True, subjects=(1, 2), sessions=4, trials_per_session=250,
               runs_per_session=5, images_per_subject=600, shared=50, image_size=32,
               grid=(36, 42, 36))
    nfstore.ingest("nsd", raw, store, overwrite=True)
    embed_store(store, "ip-adapter-sdxl", write_tiny_encoder(WORK / "enc")["hf"], workers=2)
    return store


def step_fn(model: Decoder, opt: torch.optim.Optimizer, E: torch.Tensor):  # noqa: ANN201
    def step(groups: dict, targets: np.ndarray, size: int) -> None:
        stim = torch.from_numpy(targets)
        loss = info_nce(model(groups, size), E[stim], stim, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def main() -> None:
    store = nfstore.open_store(bench_store())
    cfg = build({"subjects": store.subjects(), "batch_size": 256, "adapter_dim": 1024,
                 "width": 1024, "depth": 2, "epochs": 1, "cache_mb": 256, "input_noise": 0})
    data = load_dataset(store, cfg)
    E = torch.from_numpy(data.embeddings)
    torch.manual_seed(0)
    spec = ModelSpec(tuple(cfg.subjects), tuple(s.n_voxels for s in data.subjects), 1024, 1024,
                     2, 0.1, int(E.shape[1]))

    def fresh() -> tuple[Decoder, torch.optim.Optimizer]:
        torch.manual_seed(0)
        m = Decoder(spec)
        return m, torch.optim.AdamW(m.parameters(), lr=1e-4)

    data_mb = sum(src.rows.size * sub.n_voxels * 4 for sub in data.subjects
                  for src in sub.train) / 2**20
    print(f"{len(cfg.subjects)} subjects, voxels {[s.n_voxels for s in data.subjects]}, "
          f"{data_mb:.0f} MiB of train betas, batch 256, adapter 1024, width 1024, depth 2")
    from dataclasses import replace

    for label, c in (("buffer holds the data", cfg),
                     ("streaming", replace(cfg, cache_mb=max(1, int(data_mb / 8))))):
        compare(label, c, data, E, fresh)


def compare(label: str, cfg, data, E, fresh) -> None:  # noqa: ANN001
    """In-memory tensors vs. the store loader, on the same batches in the same order."""
    held = [(to_device(b, torch.device("cpu")), b.targets, b.size)
            for b in batches(data, cfg, epoch=0)]
    n = sum(h[2] for h in held)

    def from_memory() -> float:
        model, opt = fresh()
        step = step_fn(model, opt, E)
        t0 = time.perf_counter()
        for groups, targets, size in held:
            step(groups, targets, size)
        return time.perf_counter() - t0

    def from_store() -> float:
        model, opt = fresh()
        step = step_fn(model, opt, E)
        t0 = time.perf_counter()
        for b in prefetch(batches(data, cfg, epoch=0)):  # as nftrain.train does
            step(to_device(b, torch.device("cpu")), b.targets, b.size)
        return time.perf_counter() - t0

    from_memory()  # warm-up (allocator, thread pools)
    t_mem, t_store = float("inf"), float("inf")
    for _ in range(3):  # alternate; best of three each
        t_mem = min(t_mem, from_memory())
        t_store = min(t_store, from_store())
    print(f"{label} (cache_mb = {cfg.cache_mb}), {n} samples/epoch:")
    print(f"  in-memory tensors : {n / t_mem:8.0f} samples/s")
    print(f"  from the store    : {n / t_store:8.0f} samples/s")
    print(f"  ratio store / in-memory: {t_mem / t_store:.2f} (goal >= 0.8)")


if __name__ == "__main__":
    main()
