"""Contrastive losses (pure functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(pred: torch.Tensor, target: torch.Tensor, stimulus: torch.Tensor,
             temperature: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE where trials of the same stimulus are not negatives of each other.

    Parameters
    ----------
    pred : (batch, D) decoder outputs
    target : (batch, D) image embeddings
    stimulus : (batch,) integer stimulus identity; rows sharing it are positives of each other
        and are removed from each other's negatives (their embeddings are identical anyway).
    temperature : scalar (float or 0-d tensor, e.g. ``exp(log_t)`` when learnable)

    Returns
    -------
    loss : 0-d tensor, ``(CE(brain -> image) + CE(image -> brain)) / 2``
    """
    p = F.normalize(pred.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    logits = p @ t.T / temperature
    same = stimulus[:, None] == stimulus[None, :]
    eye = torch.eye(len(stimulus), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    labels = torch.arange(len(stimulus), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos(pred, target)`` over the batch: a regression term (MindEye-style) that
    pulls each output towards its own target, not only away from the others."""
    return (1 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean()
