"""Start the decoder from closed-form ridge (``ridge_init = true``).

Brain decoders are nearly linear at the sizes of today's datasets, and a closed-form ridge is a
strong baseline that a contrastive MLP started from random weights often fails to reach. The
decoder therefore gets a linear path ``skip: adapter space -> embedding`` beside its MLP:

- ``skip`` is set to the principal axes of the train targets (weight (D, A): the top
  ``k = min(A, rank)`` axes, zero columns after them; bias: the targets' mean), so adapter
  coordinates are target coordinates on those axes;
- each subject's adapter rows ``0..k`` are set to the ridge solution from its repeat-averaged
  measured train betas (validation stimuli excluded) to those coordinates, with one alpha per
  subject chosen by 5-fold CV (:func:`nfstore.decoding.fit_ridge`; a shared alpha commutes
  with the rotation, so with ``k = rank`` this is exactly the full ridge); its other rows keep
  their random start and feed the MLP;
- the MLP's output layer starts at zero, so the untrained model *is* the ridge decoder.

Training then moves away from ridge only where validation says it helps: the trainer scores
the starting point as epoch 0 and keeps the best epoch. Fine-tuning new subjects of a model
with ``skip`` maps their ridge solutions into the model's fixed space through ``pinv(skip)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nfstore.decoding import fit_ridge
from nftrain.config import TrainConfig
from nftrain.data import Dataset, SubjectData, read_block
from nftrain.errors import TrainingError
from nftrain.model import Decoder


def averaged_train(subject: SubjectData, n_targets: int) -> tuple[np.ndarray, np.ndarray]:
    """Repeat-averaged measured train betas of a subject (validation stimuli excluded).

    Returns
    -------
    X : float64 array (n_stimuli, n_voxels)
    targets : int array (n_stimuli,), rows of the embedding table
    """
    src = subject.train[0]  # the measured trials; synthetic sets follow it
    sums = np.zeros((n_targets, subject.n_voxels))
    counts = np.zeros(n_targets)
    for chunk in np.unique(src.rows // src.chunk):
        x, t = read_block(subject, src, int(chunk))
        np.add.at(sums, t, x)
        np.add.at(counts, t, 1)
    have = np.flatnonzero(counts)
    bad = int((~np.isfinite(sums[have])).sum())
    if bad:
        raise TrainingError(f"ridge_init: non-finite train betas for subject {subject.key} "
                            f"({bad} values after averaging repeats); run `nf validate` and "
                            f"re-ingest {subject.key}")
    return sums[have] / counts[have, None], have


@torch.no_grad()
def set_skip_to_principal_axes(model: Decoder, data: Dataset) -> int:
    """``skip`` <- the train targets' top principal axes and mean; the MLP output <- 0.

    Returns the number of axes ``k`` used.
    """
    rows = np.unique(np.concatenate([s.train[0].targets for s in data.subjects]))
    Y = data.embeddings[rows].astype(np.float64)
    mean = Y.mean(0)
    _, sv, vt = np.linalg.svd(Y - mean, full_matrices=False)
    rank = int((sv > sv[0] * 1e-6).sum()) if sv.size else 0
    k = min(model.spec.adapter_dim, rank)
    weight = np.zeros((model.spec.embed_dim, model.spec.adapter_dim))
    weight[:, :k] = vt[:k].T
    model.skip.weight.copy_(torch.from_numpy(weight))
    model.skip.bias.copy_(torch.from_numpy(mean))
    model.head[-1].weight.zero_()
    model.head[-1].bias.zero_()
    return k


@torch.no_grad()
def ridge_initialise(model: Decoder, data: Dataset, cfg: TrainConfig,
                     fresh: bool = True) -> dict[str, Any]:
    """Set ``model`` (with ``skip``) to the ridge decoder of every subject in ``data``.

    ``fresh``: also set ``skip`` and zero the MLP's output (a new model); otherwise (new
    subjects of a trained model) only the subjects' adapters are set, through ``pinv(skip)``.
    Returns ``{"axes": k, "alpha": {subject: alpha}}``.
    """
    if model.skip is None:
        raise ValueError("model: expected a decoder with a skip path (ModelSpec.skip); "
                         "found none")
    if fresh:
        set_skip_to_principal_axes(model, data)
    W = model.skip.weight.double().cpu().numpy()          # (D, A)
    used = np.flatnonzero(np.abs(W).sum(0) > 0)            # adapter rows the skip reads
    coords = (data.embeddings - model.skip.bias.double().cpu().numpy()) @ np.linalg.pinv(W).T
    alphas = {}
    for sub in data.subjects:
        X, t = averaged_train(sub, len(data.embeddings))
        fit = fit_ridge(X, coords[t][:, used], shared_alpha=True, cv=min(5, len(t)))
        adapter = model.adapters[sub.index]
        adapter.weight[used] = torch.from_numpy(fit.W.T).to(adapter.weight)
        adapter.bias[used] = torch.from_numpy(fit.b).to(adapter.bias)
        alphas[sub.key] = float(fit.alpha[0])
    return {"axes": int(used.size), "alpha": alphas}
