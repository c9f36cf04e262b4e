"""The paper's "Top-1 acc" column and brain retrieval, as part of ``nf metrics``.

- 50-way semantic top-1 (the paper's notebook): an ImageNet classifier (torchvision
  ``vit_h_14``, ``ViT_H_14_Weights.DEFAULT`` = IMAGENET1K_SWAG_E2E_V1, file
  ``vit_h_14_swag-80465313.pth``, its transforms: resize 518 bicubic, center crop 518, ImageNet
  mean/std) labels each ground-truth image by its argmax; for each reconstruction, ``trials``
  times, 49 other classes are drawn and the trial counts if the ground-truth class has the
  highest probability among the 50. Seeded here (the notebook was not).
- Brain retrieval from decoded embeddings (:func:`nfstore.decoding.brain_retrieval`, named here
  for ``nf metrics``): top-1/top-5 both directions among the subject's test stimuli, and
  MindEye2's protocol (30 random subsets of 300 images, top-1) where a subject has at least 300.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nfstore.decoding import brain_retrieval
from nfstore.errors import MissingFileError

VIT_H_FILE = "vit_h_14_swag-80465313.pth"

__all__ = ["VIT_H_FILE", "brain_retrieval", "load_classifier", "semantic_top1"]


def semantic_top1(prob_gt: np.ndarray, prob_rec: np.ndarray, trials: int = 1000, ways: int = 50,
                  seed: int = 0) -> np.ndarray:
    """Per-image 50-way top-1, (N,).

    Parameters
    ----------
    prob_gt, prob_rec : class probabilities (N, n_classes) of ground truth and reconstructions
    """
    rng = np.random.default_rng(seed)
    n, k = prob_rec.shape
    label = prob_gt.argmax(1)
    out = np.empty(n)
    for i in range(n):
        others = np.delete(np.arange(k), label[i])
        picks = np.array([rng.choice(others, ways - 1, replace=False) for _ in range(trials)])
        out[i] = (prob_rec[i, label[i]] > prob_rec[i, picks].max(1)).mean()
    return out


def load_classifier(classifier: str | Path, device: str = "cpu"
                    ) -> Callable[[np.ndarray], np.ndarray]:
    """torchvision ``vit_h_14`` from a local weights file; returns uint8 images (N, H, W, 3),
    or N arrays of any sizes (ground truth at native sizes) -> probabilities (N, 1000)."""
    import torch
    import torchvision.models as tvm
    from torchvision.transforms import functional as TF

    from nfrecon.metrics import IMAGENET, _load_state

    p = Path(classifier)
    if p.is_dir():
        p = p / VIT_H_FILE
    if not p.is_file():
        raise MissingFileError(f"classifier: expected {VIT_H_FILE} (torchvision vit_h_14, "
                               f"ViT_H_14_Weights.DEFAULT); found no such file at {classifier}")
    model = tvm.vit_h_14(weights=None, image_size=518)
    model.load_state_dict(_load_state(p, "classifier"))
    model = model.eval().to(device)
    mean = torch.tensor(IMAGENET[0]).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET[1]).view(1, 3, 1, 1)

    def one(image: np.ndarray) -> Any:  # (H, W, 3) uint8 of any size -> (3, 518, 518)
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return TF.center_crop(TF.resize(x, 518, interpolation=TF.InterpolationMode.BICUBIC,
                                        antialias=True), 518).float() / 255

    def probs(images: Any) -> np.ndarray:
        """uint8 (N, H, W, 3), or N arrays (H_i, W_i, 3) -> probabilities (N, 1000)."""
        out = []
        for a in range(0, len(images), 8):
            x = torch.stack([one(im) for im in images[a:a + 8]])
            with torch.no_grad():
                out.append(model(((x - mean) / std).to(device)).softmax(1).cpu().numpy())
        return np.concatenate(out)
    return probs
