"""Noise models for synthetic trials, learned from cross-validated residuals of train trials.

- ``gaussian``: zero mean, per-voxel std of the residuals.
- ``lowrank``: the top-k principal components of the residuals (shared across voxels, so
  synthetic voxels keep realistic correlations) plus independent gaussian noise carrying each
  voxel's remaining variance.
- ``paper-histogram``: the NeuroFusion paper's procedure, for comparison only: a 5-bin histogram
  of the per-voxel mean squared errors, sampled i.i.d. for every trial and voxel (strictly
  positive, non-zero mean; the paper fitted it on test residuals, here train CV residuals).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOISE_MODELS = ("gaussian", "lowrank", "paper-histogram")


@dataclass(frozen=True)
class NoiseModel:
    """Everything a voxel chunk needs to draw its noise.

    Attributes
    ----------
    kind : one of NOISE_MODELS
    std : array of shape (n_voxels,)
        Residual std (gaussian) or remaining std after the components (lowrank).
    components : array of shape (rank, n_voxels), optional
        Principal axes scaled by their std (lowrank).
    latent : array of shape (n_synthetic, rank), optional
        Standard normal scores shared by all chunks (lowrank).
    hist : (density, edges) of per-voxel mean squared errors (paper-histogram)
    """

    kind: str
    std: np.ndarray
    components: np.ndarray | None = None
    latent: np.ndarray | None = None
    hist: tuple[np.ndarray, np.ndarray] | None = None


def draw(model: NoiseModel, cols: slice, n: int, rng: np.random.Generator) -> np.ndarray:
    """Noise for ``n`` synthetic trials and the voxels ``cols``: array (n, n_cols) float32."""
    width = cols.stop - cols.start
    if model.kind == "paper-histogram":
        import scipy.stats

        assert model.hist is not None
        dist = scipy.stats.rv_histogram(model.hist, density=True)
        return dist.rvs(size=(n, width), random_state=rng).astype(np.float32)
    noise = rng.standard_normal((n, width), dtype=np.float32) * model.std[cols]
    if model.kind == "lowrank":
        assert model.latent is not None and model.components is not None
        noise += model.latent @ model.components[:, cols]
    return noise


def lowrank_components(sketch: np.ndarray, project: list[np.ndarray], variance: np.ndarray,
                       rank: int, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Top principal components of the residuals from a randomized range sketch.

    Parameters
    ----------
    sketch : array of shape (n_samples, rank + oversampling)
        ``R @ Omega`` summed over voxel chunks.
    project : list of arrays (rank + oversampling, n_cols)
        ``Q.T @ R`` per chunk, in voxel order (see :func:`range_basis`).
    variance : array of shape (n_voxels,)
        Residual variance per voxel.

    Returns
    -------
    components : array of shape (rank, n_voxels)
        ``S_k / sqrt(n) * Vt_k``: noise ``z @ components`` has the residuals' top-k covariance.
    remaining_std : array of shape (n_voxels,)
    """
    B = np.concatenate(project, axis=1)
    _, s, vt = np.linalg.svd(B, full_matrices=False)
    comps = (s[:rank, None] / np.sqrt(n_samples)) * vt[:rank]
    remaining = np.clip(variance - (comps ** 2).sum(0), 0, None)
    return comps.astype(np.float32), np.sqrt(remaining).astype(np.float32)


def range_basis(sketch: np.ndarray) -> np.ndarray:
    """Orthonormal basis (n_samples, k) of the sketch's range."""
    q, _ = np.linalg.qr(sketch)
    return q
