"""Low-level targets in the store: ``nf embed --model pixels [--size 32]`` and
``nf embed --model sdxl-vae --weights SDXL_DIR [--latent-size 28]``.

- ``pixels``: downsampled RGB pixels of every stimulus with an image at ``/embeddings/pixels``
  (``embedding (row, size*size*3)`` float32 in [0, 1], row-major (y, x, rgb)); no weights
  needed. Resampling: PIL ``BOX`` (area averaging) from the stimulus image.
- ``sdxl-vae``: the SDXL VAE's **raw** latents (``latent_dist.mean``, not multiplied by the
  scaling factor) of each stimulus resized to ``f * latent_size`` px (``f`` the VAE's
  downsampling, 8 for SDXL: 224 px gives 4x28x28 = 3136 values), flattened (channel, y, x);
  attributes hold ``scaling_factor``, ``latent_shape`` and ``vae_scale_factor``.

Both are featurizers (:mod:`nfstore.featurizers`) cached by the one writer,
:func:`nfstore.embeddings.embed_store`: built staged batch by batch (a killed run resumes after
its last finished batch) and swapped in when complete; a cache made with other options is
rebuilt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nfstore.names import dataset_names

PIXELS = "pixels"


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, H, W, 3) -> float32 (n, size*size*3) in [0, 1] by area averaging."""
    from PIL import Image

    out = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BOX))
                    for im in images])
    return (out.reshape(len(images), -1) / 255.0).astype(np.float32)


def upsample(flat: np.ndarray, size: int, out_size: int) -> np.ndarray:
    """float (n, size*size*3) -> uint8 (n, out_size, out_size, 3), bicubic (clipped)."""
    from PIL import Image

    imgs = np.clip(np.rint(flat.reshape(-1, size, size, 3) * 255), 0, 255).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(im).resize((out_size, out_size),
                                                           Image.Resampling.BICUBIC))
                     for im in imgs])


def embed_pixels(location: str | Path, size: int = 32, batch: int = 256,
                 progress: bool = False) -> dict[str, float]:
    """Cache the downsampled pixels of every dataset stimulus that has an image (the
    ``pixels`` featurizer, :func:`nfstore.embeddings.embed_store`).

    Returns
    -------
    dict with ``stimuli`` (rows cached), ``resumed`` (rows there before) and ``seconds``
    """
    from nfstore.embeddings import embed_store

    s = embed_store(location, PIXELS, options={"size": size}, batch_size=batch, workers=0,
                    progress=progress)
    return {"stimuli": s.cached + s.embedded, "resumed": s.cached, "seconds": s.seconds}


def _stimuli_with_images(store, batch: int) -> list[np.ndarray]:  # noqa: ANN001
    """Batches of dataset stimulus ids with pixels, each of one dataset (the batches the cache
    writer featurizes for ``pixels`` and ``sdxl-vae``)."""
    out = []
    for ds in [t for t in store.stimulus_tables() if t in dataset_names()]:
        tab = store.stimuli(ds)
        have = [s for s, f in zip(tab["stimulus"].values, tab["file"].values) if f]
        out += [np.array(have[a:a + batch], dtype=object) for a in range(0, len(have), batch)]
    return out


def load_vae(weights: str | Path, device: str = "cpu"):  # noqa: ANN201
    """SDXL's ``AutoencoderKL`` from a local diffusers SDXL folder (``vae/``), nothing fetched."""
    from diffusers import AutoencoderKL

    from nfstore.errors import MissingFileError

    folder = Path(weights)
    if not (folder / "vae" / "config.json").is_file():
        raise MissingFileError(f"weights: expected a diffusers SDXL folder with vae/config.json "
                               f"and vae weights; found {folder} without them")
    return AutoencoderKL.from_pretrained(str(folder), subfolder="vae",
                                         local_files_only=True).eval().to(device)


def embed_vae_latents(location: str | Path, weights: str | Path, latent_size: int = 28,
                      batch: int = 16, device: str = "cpu", progress: bool = False
                      ) -> dict[str, float]:
    """Cache the SDXL VAE's raw latents of every dataset stimulus that has an image (the
    ``sdxl-vae`` featurizer, :func:`nfstore.embeddings.embed_store`).

    Returns
    -------
    dict with ``stimuli`` (rows cached), ``resumed`` (rows there before) and ``seconds``
    """
    from nfstore.embeddings import embed_store

    s = embed_store(location, "sdxl-vae", weights, options={"latent_size": latent_size},
                    batch_size=batch, device=device, workers=0, progress=progress)
    return {"stimuli": s.cached + s.embedded, "resumed": s.cached, "seconds": s.seconds}


def vae_latents(vae, images: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """Raw latents (``latent_dist.mean``) of uint8 images (n, H, W, 3) -> (n, C, H/8, W/8)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    param = next(vae.parameters())
    with torch.no_grad():
        z = vae.encode(x.to(param.device, param.dtype)).latent_dist.mean
    return z.float().cpu().numpy()


def vae_decode(vae, raw: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """Raw latents (n, C, h, w) -> uint8 images (n, 8h, 8w, 3) (no scaling: they are raw)."""
    import torch

    param = next(vae.parameters())
    with torch.no_grad():
        y = vae.decode(torch.from_numpy(np.ascontiguousarray(raw, np.float32)).to(
            param.device, param.dtype)).sample
    y = ((y.float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return y.permute(0, 2, 3, 1).cpu().numpy()
