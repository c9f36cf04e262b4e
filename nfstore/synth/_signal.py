"""Planted stimulus-driven signal shared by the synthetic dataset generators.

Each image is drawn from a low-dimensional latent vector ``z`` (pixels are a smooth, fixed linear
function of ``z`` plus a little pixel noise), and each voxel responds linearly to the same
latent: ``beta = gain * (z @ W)[voxel] + session drift + noise``. A decoder that can recover
``z`` from an image embedding can therefore learn to predict images from betas, and how well
it does is measurable against the known ``z`` (saved as ``nf_synth_truth.npz`` beside the tree,
a file that is not part of the original layouts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_LATENT = 16
TRUTH_FILE = "nf_synth_truth.npz"


def latents(n_images: int, rng: np.random.Generator, k: int = N_LATENT) -> np.ndarray:
    """Latent vectors, float64 array of shape (n_images, k), standard normal."""
    return rng.standard_normal((n_images, k))


def render_images(z: np.ndarray, size: int, rng: np.random.Generator,
                  world: int = 0) -> np.ndarray:
    """Images from latents: uint8 array of shape (n_images, size, size, 3).

    The pixel pattern is ``128 + sum_k z_k * basis_k`` with smooth colour basis patterns
    (low-frequency sinusoids) plus a small per-image pixel noise from ``rng``. The basis
    depends only on ``world`` (not on the dataset): every synthetic dataset and image pool
    renders the same latent the same way, as natural images share one visual world, so
    cross-dataset training and augmentation can transfer.
    """
    n, k = z.shape
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    basis = np.empty((k, size, size, 3))
    brng = np.random.default_rng([world, k])
    for b in range(k):
        fy, fx = brng.uniform(0.5, 3.0, 2)
        phase = brng.uniform(0, 2 * np.pi, 3)
        colour = brng.standard_normal(3)
        wave = np.sin(2 * np.pi * (fy * yy + fx * xx)[..., None] + phase)
        basis[b] = wave * colour
    basis *= 40.0 / np.sqrt(k)
    out = np.empty((n, size, size, 3), np.uint8)
    for start in range(0, n, 256):  # bounded memory for large pools
        img = 128 + np.tensordot(z[start:start + 256], basis, axes=1)
        img += rng.normal(0, 4.0, img.shape)
        out[start:start + 256] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def voxel_weights(n_voxels: int, rng: np.random.Generator, k: int = N_LATENT) -> np.ndarray:
    """Voxel tuning to the latent, float64 array of shape (k, n_voxels), unit variance response."""
    return rng.standard_normal((k, n_voxels)) / np.sqrt(k)


def responses(z: np.ndarray, w: np.ndarray, gain: np.ndarray, noise: float,
              offset: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Single-trial responses, float64 array of shape (n_trials, n_voxels).

    Parameters
    ----------
    z : array of shape (n_trials, k)
        Latent of each trial's image.
    w : array of shape (k, n_voxels)
    gain : array of shape (n_voxels,)
        Signal amplitude per voxel (0 for voxels without stimulus drive).
    noise : float
        Standard deviation of the trial noise.
    offset : array of shape (n_voxels,)
        Session-specific baseline (removed by per-session z-scoring).
    """
    return offset + gain * (z @ w) + rng.normal(0.0, noise, (z.shape[0], w.shape[1]))


def save_truth(out: Path, **arrays: np.ndarray) -> None:
    """Write the planted ground truth next to a synthetic tree."""
    np.savez_compressed(out / TRUTH_FILE, **arrays)


class _NoNoise:
    """Stands in for a generator in :func:`render_images`: no pixel noise."""

    @staticmethod
    def normal(loc: float, scale: float, size: tuple[int, ...]) -> np.ndarray:
        return np.zeros(size)


def world_latent(identity: str, k: int = N_LATENT) -> np.ndarray:
    """The latent of a picture known by ``identity`` (``coco/<id>``, ``imagenet/<stem>``),
    float64 array of shape (k,): the same in every generator, so datasets that show the same
    picture (NSD and BOLD5000 COCO images, GOD images in a pool) plant the same one."""
    import hashlib

    seed = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(k)


def world_images(identities: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Latents (n, k) and noise-free pixels (n, size, size, 3) uint8 of named pictures."""
    z = np.array([world_latent(i) for i in identities]).reshape(len(identities), N_LATENT)
    return z, render_images(z, size, _NoNoise())  # type: ignore[arg-type]


def overlap_coco_ids(n: int) -> list[int]:
    """COCO ids of the pictures shared by synthetic NSD and BOLD5000 (as in the real data,
    where 'BOLD5000' in ``nsd_stim_info_merged.csv`` marks them)."""
    return [100003 + 7919 * k for k in range(n)]
