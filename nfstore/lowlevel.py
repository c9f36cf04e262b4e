"""Low-level targets in the store: ``nf embed --model pixels [--size 32]`` and
``nf embed --model sdxl-vae --weights SDXL_DIR [--latent-size 28]``.

- ``pixels``: downsampled RGB pixels of every stimulus with an image at ``/embeddings/pixels``
  (``embedding (row, size*size*3)`` float32 in [0, 1], row-major (y, x, rgb)); no weights
  needed. Resampling: PIL ``BOX`` (area averaging) from the stimulus image.
- ``sdxl-vae``: the SDXL VAE's **raw** latents (``latent_dist.mean``, not multiplied by the
  scaling factor) of each stimulus resized to ``f * latent_size`` px (``f`` the VAE's
  downsampling, 8 for SDXL: 224 px gives 4x28x28 = 3136 values), flattened (channel, y, x);
  attributes hold ``scaling_factor``, ``latent_shape`` and ``vae_scale_factor``.

Both tables are built aside and swapped in (one call; a killed run leaves the store as it was).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import zarr

from nfstore import _layout
from nfstore._names import DATASETS
from nfstore._version import __version__
from nfstore.errors import OptionError

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


def embed_pixels(location: str | Path, size: int = 32, batch: int = 256) -> dict[str, float]:
    """Cache the downsampled pixels of every dataset stimulus that has an image."""
    import nfstore

    if not 4 <= size <= 256:
        raise OptionError(f"--size: expected 4..256 pixels; got {size}")
    t0 = time.perf_counter()
    path = _layout.local_store_path(location)
    store = nfstore.open_store(path)
    ids: list[str] = []
    rows: list[np.ndarray] = []
    for part in _stimuli_with_images(store, batch):
        px = np.asarray(store.images(part, size=(4 * size, 4 * size)).values)
        rows.append(downsample(px, size))
        ids += part.tolist()
    X = np.concatenate(rows) if rows else np.zeros((0, size * size * 3), np.float32)
    import hashlib

    prep = {"size": size, "resample": "PIL BOX (area) from the stimulus image (one-file "
            "datasets first resized to 4x the size, PIL bicubic)",
            "layout": "row-major (y, x, rgb), values in [0, 1]"}
    _write_table(path, PIXELS, ids, X, {
        "size": size, "preprocessing": prep,
        "weights": {"layout": "none (no network)", "path": "", "files": []},
        "weights_sha256": hashlib.sha256(repr(sorted(prep.items())).encode()).hexdigest()})
    return {"stimuli": len(ids), "seconds": time.perf_counter() - t0}


def _stimuli_with_images(store, batch: int) -> list[np.ndarray]:  # noqa: ANN001
    """Batches of stimulus ids with pixels, each of one dataset (as ``store.images`` wants)."""
    out = []
    for ds in [t for t in store.stimulus_tables() if t in DATASETS]:
        tab = store.stimuli(ds)
        have = [s for s, f in zip(tab["stimulus"].values, tab["file"].values) if f]
        out += [np.array(have[a:a + batch], dtype=object) for a in range(0, len(have), batch)]
    return out


def _write_table(path: Path, model: str, ids: list[str], X: np.ndarray,
                 attrs: dict) -> None:
    """``/embeddings/<model>``: ``stimulus`` and ``embedding`` (row, feature), staged."""
    with _layout.writing(path, f"nf embed --model {model}"):
        staged = _layout.staging_path(path, f"embeddings.{model}")
        _layout.discard(staged)
        staged.parent.mkdir(parents=True, exist_ok=True)
        g = zarr.open_group(str(staged), mode="w", zarr_format=3)
        g.create_array("stimulus", shape=(len(ids),), dtype=str, dimension_names=("stimulus",))
        g["stimulus"][:] = np.array(ids, dtype=object)
        g.create_array("embedding", data=X, chunks=(256, X.shape[1]),
                       dimension_names=("stimulus", "feature"))
        g.attrs.update({"model": model, "dtype": "float32", "feature_shape": [X.shape[1]],
                        "count": len(ids), "nf_version": __version__, **attrs})
        _layout.ensure_group(path, "embeddings")
        _layout.commit(path, staged, f"embeddings/{model}")


def load_vae(weights: str | Path, device: str = "cpu"):  # noqa: ANN201
    """SDXL's ``AutoencoderKL`` from a local diffusers SDXL folder (``vae/``), nothing fetched."""
    from diffusers import AutoencoderKL

    from nfstore.errors import MissingFileError

    folder = Path(weights)
    if not (folder / "vae" / "config.json").is_file():
        raise MissingFileError(f"--weights {folder}: expected a diffusers SDXL folder with "
                               f"vae/config.json and vae weights; not found")
    return AutoencoderKL.from_pretrained(str(folder), subfolder="vae",
                                         local_files_only=True).eval().to(device)


def embed_vae_latents(location: str | Path, weights: str | Path, latent_size: int = 28,
                      batch: int = 16, device: str = "cpu", progress: bool = False
                      ) -> dict[str, float]:
    """Cache the SDXL VAE's raw latents of every dataset stimulus that has an image."""
    from tqdm.auto import tqdm

    import nfstore
    from nfstore.encoders import checksum

    if not 4 <= latent_size <= 128:
        raise OptionError(f"--latent-size: expected 4..128; got {latent_size}")
    t0 = time.perf_counter()
    path = _layout.local_store_path(location)
    store = nfstore.open_store(path)
    vae = load_vae(weights, device)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)  # 8 for SDXL's VAE
    px = factor * latent_size
    ids: list[str] = []
    rows = []
    for part in tqdm(_stimuli_with_images(store, batch), desc="sdxl-vae latents",
                     unit="batch", disable=not progress):
        imgs = np.asarray(store.images(part, size=(px, px)).values)
        rows.append(vae_latents(vae, imgs).reshape(len(part), -1))
        ids += part.tolist()
    shape = [int(vae.config.latent_channels), latent_size, latent_size]
    X = np.concatenate(rows) if rows else np.zeros((0, int(np.prod(shape))), np.float32)
    files = sorted(f for f in (Path(weights) / "vae").iterdir() if f.is_file())
    _write_table(path, "sdxl-vae", ids, X, {
        "latent_shape": shape, "scaling_factor": float(vae.config.scaling_factor),
        "image_size": px, "vae_scale_factor": factor,
        "preprocessing": {"resize": f"{px} px (store.images)", "range": "[-1, 1]",
                          "latents": "latent_dist.mean, raw (not multiplied by scaling_factor)"},
        "weights": {"layout": "diffusers SDXL folder (vae/)", "path": str(Path(weights)),
                    "files": [f.name for f in files]},
        "weights_sha256": checksum(tuple(files))})
    dt = time.perf_counter() - t0
    return {"stimuli": len(ids), "seconds": dt}


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
