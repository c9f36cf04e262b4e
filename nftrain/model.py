"""The decoder: per-subject adapters -> shared residual MLP backbone -> head to the embedding,
plus, with ``skip``, a shared linear map from the adapter space straight to the embedding (the
path that ``ridge_init`` sets to a closed-form ridge solution; see :mod:`nftrain.ridge_init`).

Every layer acts on one sample at a time (Linear, LayerNorm, GELU, dropout): a sample's output
never depends on the other samples of its batch (the original code's transformer attended across
the batch; see docs/internals/architecture.md, "What the original code got wrong").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of a decoder (saved in ``config.json`` with the checkpoint).

    Attributes
    ----------
    subjects : subject keys, in adapter order
    n_voxels : voxels per subject (native counts, no padding)
    adapter_dim, width, depth, dropout : sizes
    embed_dim : width of the target embedding (1280 for ip-adapter-sdxl)
    skip : add the linear path ``adapter space -> embedding`` beside the MLP
    """

    subjects: tuple[str, ...]
    n_voxels: tuple[int, ...]
    adapter_dim: int
    width: int
    depth: int
    dropout: float
    embed_dim: int
    skip: bool = False


class Block(nn.Module):
    """Pre-norm residual MLP block: ``x + W2 gelu(W1 norm(x))``."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, width)
        return x + self.drop(self.fc2(nn.functional.gelu(self.fc1(self.norm(x)))))


class Decoder(nn.Module):
    """fMRI of any subject -> embedding space.

    ``forward(groups, batch_size)`` takes ``{adapter index: (positions, x)}`` with
    ``x`` of shape (n_s, n_voxels_s) and returns (batch_size, embed_dim).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.adapters = nn.ModuleList(nn.Linear(v, spec.adapter_dim) for v in spec.n_voxels)
        self.proj = nn.Linear(spec.adapter_dim, spec.width)
        self.drop = nn.Dropout(spec.dropout)
        self.blocks = nn.Sequential(*(Block(spec.width, spec.dropout) for _ in range(spec.depth)))
        self.head = nn.Sequential(nn.LayerNorm(spec.width), nn.Linear(spec.width, spec.embed_dim))
        self.skip = nn.Linear(spec.adapter_dim, spec.embed_dim) if spec.skip else None

    def embed_subject(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """(n, n_voxels) betas of adapter ``index`` -> (n, embed_dim)."""
        return self.trunk(self.adapters[index](x))

    def trunk(self, h: torch.Tensor) -> torch.Tensor:
        """(n, adapter_dim) adapter outputs -> (n, embed_dim)."""
        out = self.head(self.blocks(self.drop(self.proj(nn.functional.gelu(h)))))
        return out if self.skip is None else out + self.skip(h)

    def forward(self, groups: dict[int, tuple[torch.Tensor, torch.Tensor]],
                batch_size: int) -> torch.Tensor:
        first = next(iter(groups.values()))[1]
        h = first.new_zeros((batch_size, self.spec.adapter_dim))
        for index, (positions, x) in groups.items():
            h[positions] = self.adapters[index](x).to(h.dtype)
        return self.trunk(h)

    def add_subjects(self, keys: list[str], n_voxels: list[int]) -> list[int]:
        """New adapters (for fine-tuning); returns their indices."""
        start = len(self.adapters)
        for v in n_voxels:
            self.adapters.append(nn.Linear(v, self.spec.adapter_dim))
        from dataclasses import replace

        self.spec = replace(self.spec, subjects=self.spec.subjects + tuple(keys),
                            n_voxels=self.spec.n_voxels + tuple(n_voxels))
        return list(range(start, len(self.adapters)))
