"""Validation during training: the mean InfoNCE and batch-wise top-1 over the validation
batches, and whether an epoch is the best so far (``select``)."""

from __future__ import annotations

import math
from typing import Any

import torch

from nftrain.config import TrainConfig
from nftrain.data import Dataset, batches
from nftrain.losses import info_nce
from nftrain.model import Decoder
from nftrain.steps import to_device


def is_better(val: dict[str, float], state: dict[str, Any], select: str) -> bool:
    """Is this validation better than the best so far (``select``: loss, or top1 then loss)?"""
    if not math.isfinite(val["val_loss"]):
        return False
    if select == "top1":
        return (val["val_top1"], -val["val_loss"]) > (state["best_val_top1"],
                                                      -state["best_val_loss"])
    return val["val_loss"] < state["best_val_loss"]


@torch.no_grad()
def validate(model: Decoder, data: Dataset, cfg: TrainConfig, E: torch.Tensor,
             temperature: torch.Tensor | float, device: torch.device) -> dict[str, float]:
    """Mean InfoNCE over validation batches (fixed order) and batch-wise top-1 accuracy.

    Parameters
    ----------
    E : (n_stimuli, D) target embeddings, on ``device``
    temperature : the InfoNCE temperature (not its log)

    Returns
    -------
    dict : ``val_loss`` and ``val_top1`` (NaN without validation rows)
    """
    model.eval()
    losses, hits, n = [], 0, 0
    for batch in batches(data, cfg, 0, split="val"):
        groups = to_device(batch, device)
        rows = torch.from_numpy(batch.targets).to(device)
        stim = torch.from_numpy(data.groups[batch.targets]).to(device)  # picture identity
        pred = model(groups, batch.size)
        losses.append(float(info_nce(pred, E[rows], stim, temperature)) * batch.size)
        sim = torch.nn.functional.normalize(pred.float(), dim=-1) @ torch.nn.functional.normalize(
            E[rows], dim=-1).T
        hits += int((stim[sim.argmax(1)] == stim).sum())
        n += batch.size
    model.train()
    if n == 0:
        return {"val_loss": float("nan"), "val_top1": float("nan")}
    return {"val_loss": sum(losses) / n, "val_top1": hits / n}
