"""Low-level targets in the store: ``nf embed --model pixels [--size 32]`` and
``nf embed --model sdxl-vae --weights SDXL_DIR [--latent-size 28]``.

- ``pixels``: downsampled RGB pixels of every stimulus with an image at ``/embeddings/pixels``
  (``embedding (row, size*size*3)`` float32 in [0, 1], row-major (y, x, rgb)); no weights
  needed. Resampling: PIL ``BOX`` (area averaging) from the stimulus image.
- ``sdxl-vae``: the SDXL VAE's **raw** latents (``latent_dist.mean``, not multiplied by the
  scaling factor) of each stimulus resized to ``f * latent_size`` px (``f`` the VAE's
  downsampling, 8 for SDXL: 224 px gives 4x28x28 = 3136 values), flattened (channel, y, x);
  attributes hold ``scaling_factor``, ``latent_shape`` and ``vae_scale_factor``.

Both tables are built under ``_staging`` batch by batch (a killed run resumes after its last
finished batch) and swapped in when complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

from nfstore import _layout
from nfstore.names import DATASETS
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


def embed_pixels(location: str | Path, size: int = 32, batch: int = 256,
                 progress: bool = False) -> dict[str, float]:
    """Cache the downsampled pixels of every dataset stimulus that has an image."""
    import hashlib

    import nfstore

    if not 4 <= size <= 256:
        raise OptionError(f"--size: expected 4..256 pixels; got {size}")
    t0 = time.perf_counter()
    path = _layout.local_store_path(location)
    store = nfstore.open_store(path)
    prep = {"size": size, "resample": "PIL BOX (area) from the stimulus image (one-file "
            "datasets first resized to 4x the size, PIL bicubic)",
            "layout": "row-major (y, x, rgb), values in [0, 1]"}
    n, done = _build_table(path, PIXELS, _stimuli_with_images(store, batch), size * size * 3,
                           lambda part: downsample(np.asarray(store.images(
                               part, size=(4 * size, 4 * size)).values), size), {
        "size": size, "preprocessing": prep,
        "weights": {"layout": "none (no network)", "path": "", "files": []},
        "weights_sha256": hashlib.sha256(repr(sorted(prep.items())).encode()).hexdigest()},
        progress)
    return {"stimuli": n, "resumed": done, "seconds": time.perf_counter() - t0}


def _stimuli_with_images(store, batch: int) -> list[np.ndarray]:  # noqa: ANN001
    """Batches of stimulus ids with pixels, each of one dataset (as ``store.images`` wants)."""
    out = []
    for ds in [t for t in store.stimulus_tables() if t in DATASETS]:
        tab = store.stimuli(ds)
        have = [s for s, f in zip(tab["stimulus"].values, tab["file"].values) if f]
        out += [np.array(have[a:a + batch], dtype=object) for a in range(0, len(have), batch)]
    return out


def _build_table(path: Path, model: str, parts: list[np.ndarray], n_features: int,
                 featurize: Callable[[np.ndarray], np.ndarray], attrs: dict,
                 progress: bool = False) -> tuple[int, int]:
    """``/embeddings/<model>`` (``stimulus``, ``embedding`` (row, feature) float32), built
    under ``_staging`` batch by batch and committed when complete. A run that was killed
    resumes after its last finished batch if the stimuli and ``attrs["weights_sha256"]`` are
    the same; otherwise it starts again. Returns (rows, rows resumed).
    """
    import hashlib

    from tqdm.auto import tqdm

    ids = [s for part in parts for s in part.tolist()]
    key = hashlib.sha256(repr((ids, attrs["weights_sha256"], n_features)).encode()).hexdigest()
    with _layout.writing(path, f"nf embed --model {model}"):
        staged = _layout.staging_path(path, f"embeddings.{model}")
        g = zarr.open_group(str(staged), mode="r+") if staged.is_dir() else None
        if g is None or g.attrs.get("build_key") != key:
            _layout.discard(staged)
            staged.parent.mkdir(parents=True, exist_ok=True)
            g = zarr.open_group(str(staged), mode="w", zarr_format=3)
            g.create_array("stimulus", shape=(len(ids),), dtype=str,
                           dimension_names=("stimulus",))
            g["stimulus"][:] = np.array(ids, dtype=object)
            g.create_array("embedding", shape=(len(ids), n_features), dtype="float32",
                           chunks=(256, n_features), dimension_names=("stimulus", "feature"))
            g.attrs.update({"model": model, "dtype": "float32", "feature_shape": [n_features],
                            "count": len(ids), "nf_version": __version__, **attrs,
                            "build_key": key, "rows_done": 0})
        done = pos = int(g.attrs["rows_done"])
        start = 0
        for part in tqdm(parts, desc=model, unit="batch", disable=not progress):
            end = start + len(part)
            if end > pos:
                g["embedding"][start:end] = featurize(part)
                g.attrs["rows_done"] = pos = end  # commit point: a kill resumes after it
            start = end
        for k in ("build_key", "rows_done"):
            del g.attrs[k]
        _layout.ensure_group(path, "embeddings")
        _layout.commit(path, staged, f"embeddings/{model}")
    return len(ids), done


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
    shape = [int(vae.config.latent_channels), latent_size, latent_size]
    files = sorted(f for f in (Path(weights) / "vae").iterdir() if f.is_file())
    n, done = _build_table(
        path, "sdxl-vae", _stimuli_with_images(store, batch), int(np.prod(shape)),
        lambda part: vae_latents(vae, np.asarray(store.images(part, size=(px, px)).values)
                                 ).reshape(len(part), -1), {
            "latent_shape": shape, "scaling_factor": float(vae.config.scaling_factor),
            "image_size": px, "vae_scale_factor": factor,
            "preprocessing": {"resize": f"{px} px (store.images)", "range": "[-1, 1]",
                              "latents": "latent_dist.mean, raw (not multiplied by "
                                         "scaling_factor)"},
            "weights": {"layout": "diffusers SDXL folder (vae/)", "path": str(Path(weights)),
                        "files": [f.name for f in files]},
            "weights_sha256": checksum(tuple(files))}, progress)
    return {"stimuli": n, "resumed": done, "seconds": time.perf_counter() - t0}


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
