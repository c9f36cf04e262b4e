"""Steps of a training run: how many batches and optimizer steps an epoch has (one process,
or shards under torchrun), the learning-rate schedule, torchrun's process group, and what one
step does to a batch (to the device, input noise and mixup, the finiteness check)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from nfstore.errors import OptionError
from nftrain.config import TrainConfig
from nftrain.data import Batch, Dataset, n_batches, shard_batch_counts, shard_blocks
from nftrain.errors import TrainingError


def _batches_per_epoch(data: Dataset, cfg: TrainConfig) -> int:
    """Exactly the number of batches :func:`batches` yields (full ones, then a last one of >= 2)."""
    return n_batches(sum(src.rows.size for s in data.subjects for src in s.train),
                     cfg.batch_size)


def _steps_per_epoch(data: Dataset, cfg: TrainConfig, world: int
                     ) -> tuple[int, int, list[int]]:
    """(shards, batches each shard gives per optimizer step, optimizer steps of each epoch).

    Under torchrun each rank is a shard and reads only its blocks; ``cfg.shards`` makes one
    process read the same shards in turn. Every rank takes the same number of steps: that of
    the smallest shard. Too few batches for a step is an error, never a hang.
    """
    if world > 1 and cfg.shards not in (1, world):
        raise OptionError(f"shards: expected 1 or the number of torchrun ranks ({world}); "
                          f"got {cfg.shards}")
    n = world if world > 1 else cfg.shards
    per_shard = cfg.accumulate if world > 1 else cfg.accumulate // n
    if n == 1:
        total = _batches_per_epoch(data, cfg)
        if total < cfg.accumulate:
            raise OptionError(f"batch_size: an epoch has {total} batches, fewer than 1 rank(s) "
                              f"x accumulate {cfg.accumulate}; lower batch_size or accumulate")
        return 1, per_shard, [total // cfg.accumulate] * cfg.epochs
    steps = []
    for epoch in range(cfg.epochs):
        counts = shard_batch_counts(data, cfg, epoch, n)
        if min(counts) < per_shard:
            n_blocks = sum(len(b) for b in shard_blocks(data, cfg, epoch, n))
            raise OptionError(f"batch_size: epoch {epoch + 1} deals {n_blocks} chunk-aligned "
                              f"blocks to {n} ranks (shards); the smallest gets {min(counts)} "
                              f"batches, fewer than accumulate {per_shard}; use fewer ranks, "
                              f"a smaller batch_size or more data")
        steps.append(min(counts) // per_shard)
    return n, per_shard, steps


def _round_robin(streams: list[Iterator[Any]]) -> Iterator[Any]:
    """One item of each stream in turn (one stream: that stream), until one runs out."""
    if len(streams) == 1:
        yield from streams[0]
        return
    while True:
        for s in streams:
            item = next(s, None)
            if item is None:
                return
            yield item


def _distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device) under torchrun; (0, 1, device) otherwise."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        torch.cuda.set_device(device)
    return dist.get_rank(), world, device


def schedule(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return factor


def to_device(batch: Batch, device: torch.device) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The batch's groups as tensors on ``device``: {adapter: (positions (n_s,), x (n_s, V_s))}."""
    return {s: (torch.from_numpy(p).to(device), torch.from_numpy(x).to(device))
            for s, (p, x) in batch.groups.items()}


def augment_batch(groups: dict[int, tuple[torch.Tensor, torch.Tensor]], targets: torch.Tensor,
                  stim: torch.Tensor, cfg: TrainConfig
                  ) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], torch.Tensor,
                             torch.Tensor]:
    """Input noise, and mixup within a subject (mixed samples get mixed targets and a stimulus
    identity of their own, so they have no positives but themselves).

    Parameters
    ----------
    groups : {adapter: (positions (n_s,), x (n_s, V_s))}
    targets : (batch, D) target embeddings
    stim : (batch,) picture identity of each sample
    """
    out = {}
    for s, (pos, x) in groups.items():
        if cfg.input_noise:
            x = x + cfg.input_noise * torch.randn_like(x)
        if cfg.mixup and len(pos) > 1:
            mix = torch.rand(len(pos), device=x.device) < cfg.mixup
            if mix.any():
                perm = torch.randperm(len(pos), device=x.device)
                lam = torch.distributions.Beta(1.0, 1.0).sample((len(pos),)).to(x.device)
                lam = torch.where(mix, lam, torch.ones_like(lam))
                x = lam[:, None] * x + (1 - lam[:, None]) * x[perm]
                targets = targets.clone()
                targets[pos] = lam[:, None] * targets[pos] + (1 - lam[:, None]) * targets[
                    pos[perm]]
                stim = stim.clone()
                stim[pos[mix]] = -1 - pos[mix]
        out[s] = (pos, x)
    return out, targets, stim


def check_finite(step: int, loss: torch.Tensor, pred: torch.Tensor,
                 groups: dict[int, tuple[torch.Tensor, torch.Tensor]], names: tuple[str, ...]
                 ) -> None:
    """Raise a one-line :class:`TrainingError` naming the step, the subject and what was
    non-finite (inputs, outputs or the loss) when the loss is not finite."""
    if bool(torch.isfinite(loss)):
        return
    for s, (pos, x) in groups.items():
        if not bool(torch.isfinite(x).all()):
            n = int((~torch.isfinite(x)).sum())
            raise TrainingError(f"step {step}: non-finite inputs for subject {names[s]} ({n} "
                                f"values in the batch's betas); run `nf validate`")
    for s, (pos, _) in groups.items():
        if not bool(torch.isfinite(pred[pos]).all()):
            raise TrainingError(f"step {step}: non-finite outputs of the model for subject "
                                f"{names[s]} (inputs were finite; lower lr or check amp)")
    raise TrainingError(f"step {step}: non-finite loss ({float(loss)}) with finite inputs and "
                        f"outputs (subjects {sorted(names[s] for s in groups)}); check "
                        f"temperature and the embeddings")


def _device(cfg: TrainConfig) -> torch.device:
    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        raise OptionError(f"device: expected a torch device (cpu, cuda, cuda:N, mps, ...); "
                          f"found {cfg.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device: {cfg.device} asked for but CUDA is not available")
    return device
