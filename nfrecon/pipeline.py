"""The SDXL + IP-Adapter pipeline of ``nf reconstruct``: locating local weights, loading,
generating (text-to-image or img2img from a low-level start) and choosing the best of N.

The decoded embedding enters as ``ip_adapter_image_embeds`` with a zero negative for CFG and an
empty prompt. diffusers repeats user embeddings by the prompt batch (bug #9813: trials of a
batch get mixed), so the pipeline's ``prepare_ip_adapter_image_embeds`` is replaced on the
instance by a pass-through that receives the tensor already in ``[zeros(B*N); emb(B*N)]``
order; every image has its own seeded generator, so a batch gives the same images as one trial
per call.
"""

from __future__ import annotations

import math
import numbers
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nfstore.errors import MissingFileError, OptionError

SCHEDULERS = {"euler": "EulerDiscreteScheduler", "ddpm": "DDPMScheduler",
              "ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler"}
SDXL_FILES = ("model_index.json", "unet/config.json", "vae/config.json",
              "scheduler/scheduler_config.json", "text_encoder/config.json",
              "text_encoder_2/config.json", "tokenizer", "tokenizer_2")
IP_FILES = ("sdxl_models/ip-adapter_sdxl.safetensors", "sdxl_models/ip-adapter_sdxl.bin")
SIZE_MAX = 4096  # px: 4x SDXL's native 1024 (larger images exhaust memory, not SDXL's range)
STEPS_MAX = 1000  # the schedulers' training timesteps: diffusers refuses more inference steps
GUIDANCE_MAX = 100.0
IP_SCALE_MAX = 10.0
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class ReconConfig:
    """Generation settings (``nf reconstruct --help``)."""

    steps: int = 30
    guidance: float = 5.0
    ip_scale: float = 1.0
    size: int = 1024
    samples: int = 1
    scheduler: str = "euler"
    seed: int = 0
    batch: int = 4
    device: str = "cpu"
    dtype: str = "auto"
    strength: float = 0.75
    blend: float = 0.0

    def check(self) -> None:
        """One-line :class:`OptionError` naming the first setting out of range (NaN and
        infinities included), before anything is loaded or written."""
        if self.scheduler not in SCHEDULERS:
            raise OptionError(f"scheduler: expected one of {list(SCHEDULERS)}; found "
                              f"{self.scheduler!r}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise OptionError(f"dtype: expected auto, float32, float16 or bfloat16; found "
                              f"{self.dtype!r}")
        size_ok = _integer(self.size, 8, SIZE_MAX) and self.size % 8 == 0
        for name, ok, want in (
                ("steps", _integer(self.steps, 1, STEPS_MAX), f"an integer in [1, {STEPS_MAX}]"),
                ("guidance", _real(self.guidance, 0, GUIDANCE_MAX),
                 f"a finite number in [0, {GUIDANCE_MAX:g}]"),
                ("ip_scale", _real(self.ip_scale, 0, IP_SCALE_MAX),
                 f"a finite number in [0, {IP_SCALE_MAX:g}]"),
                ("size", size_ok, f"a multiple of 8 in [8, {SIZE_MAX}] (pixels)"),
                ("samples", _integer(self.samples, 1, None), "an integer >= 1"),
                ("batch", _integer(self.batch, 1, None), "an integer >= 1"),
                ("seed", _integer(self.seed, 0, SEED_MAX), f"an integer in [0, {SEED_MAX}]"),
                ("strength", _real(self.strength, 0, 1) and self.strength > 0,
                 "a number in (0, 1]"),
                ("blend", _real(self.blend, 0, 1) and self.blend < 1, "a weight in [0, 1)")):
            if not ok:
                raise OptionError(f"{name}: expected {want}; found {getattr(self, name)!r}")


def _integer(value: Any, lo: int, hi: int | None) -> bool:
    """``value`` is an integer (not a bool) in [lo, hi] (no upper bound when ``hi`` is None)."""
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and lo <= value and (hi is None or value <= hi))


def _real(value: Any, lo: float, hi: float) -> bool:
    """``value`` is a finite real number (not a bool) in [lo, hi]."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value) and lo <= value <= hi)


def locate_sdxl(path: str | Path) -> Path:
    """A local diffusers SDXL folder, or a single ``.safetensors`` checkpoint file."""
    p = Path(path)
    if p.is_file() and p.suffix == ".safetensors":
        return p
    missing = [f for f in SDXL_FILES if not (p / f).exists()]
    if missing:
        raise MissingFileError(f"sdxl: expected a diffusers SDXL folder with "
                               f"{', '.join(SDXL_FILES)} (or a single .safetensors file); "
                               f"found {p}, missing {', '.join(missing)}")
    return p


def locate_sdxl_config(sdxl: Path, config: str | Path | None) -> Path | None:
    """The config folder for a single-file ``sdxl`` (None for a diffusers folder).

    diffusers builds the components of a single checkpoint from a diffusers folder's configs
    and tokenizers; without one it downloads them, so a local folder is required here (the
    configs of ``stabilityai/stable-diffusion-xl-base-1.0`` suit the SDXL base checkpoint).
    """
    if sdxl.is_dir():
        return None
    if config is None:
        raise OptionError(f"sdxl_config: expected a local diffusers SDXL folder for the configs "
                          f"and tokenizers ({', '.join(SDXL_FILES)}; weights not needed) of the "
                          f"single checkpoint file {sdxl}; found none")
    c = Path(config)
    missing = [f for f in SDXL_FILES if not (c / f).exists()]
    if missing:
        raise MissingFileError(f"sdxl_config: expected a diffusers SDXL folder with "
                               f"{', '.join(SDXL_FILES)}; found {c}, missing "
                               f"{', '.join(missing)}")
    return c


def locate_ip_adapter(path: str | Path) -> Path:
    """The IP-Adapter weights file in a local h94/IP-Adapter layout."""
    p = Path(path)
    for f in IP_FILES:
        if (p / f).is_file():
            return p / f
    raise MissingFileError(f"ip_adapter: expected {' or '.join(IP_FILES)} (the h94/"
                           f"IP-Adapter layout); found neither in {p}")


def load_pipeline(sdxl: str | Path, ip_adapter: str | Path, cfg: ReconConfig,
                  sdxl_config: str | Path | None = None) -> Any:
    """SDXL pipeline with the IP-Adapter loaded, from local files only (nothing fetched).

    ``sdxl`` is a diffusers folder or one original-layout ``.safetensors`` checkpoint; the
    latter takes its configs and tokenizers from the diffusers folder ``sdxl_config``.
    """
    import diffusers
    import torch
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    where, ip_file = locate_sdxl(sdxl), locate_ip_adapter(ip_adapter)
    config = locate_sdxl_config(where, sdxl_config)
    dtype = {"auto": torch.float16 if cfg.device.startswith("cuda") else torch.float32,
             "float32": torch.float32, "float16": torch.float16,
             "bfloat16": torch.bfloat16}[cfg.dtype]
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"device: expected cpu or an available CUDA device; found "
                          f"{cfg.device} (CUDA is not available)")
    try:
        if where.is_file():
            pipe = diffusers.StableDiffusionXLPipeline.from_single_file(
                str(where), config=str(config), dtype=dtype, local_files_only=True)
        else:
            pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
                str(where), dtype=dtype, local_files_only=True)
        pipe.load_ip_adapter(str(ip_file.parents[1]), subfolder=ip_file.parent.name,
                             weight_name=ip_file.name, image_encoder_folder=None,
                             local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError,
            SingleFileComponentError) as err:
        raise MissingFileError(f"sdxl: expected an SDXL pipeline loadable with the IP-Adapter "
                               f"{ip_file}; found {where}: cannot load "
                               f"({type(err).__name__}: {' '.join(str(err).split())[:200]})"
                               ) from None
    pipe.scheduler = getattr(diffusers, SCHEDULERS[cfg.scheduler]).from_config(
        pipe.scheduler.config)
    pipe.set_ip_adapter_scale(cfg.ip_scale)
    pipe.to(cfg.device)
    pipe.set_progress_bar_config(disable=True)
    # bug #9813: hand the embeddings through unchanged (already [negative; positive])
    pipe.prepare_ip_adapter_image_embeds = types.MethodType(
        lambda self, ip_adapter_image, ip_adapter_image_embeds, *a, **k: ip_adapter_image_embeds,
        pipe)
    return pipe


def weights_checksums(sdxl: str | Path, ip_adapter: str | Path,
                      sdxl_config: str | Path | None = None) -> dict[str, str]:
    """sha256 of every file the images depend on: the SDXL folder (or single file, and the
    configs and tokenizers of its ``sdxl_config``) and the IP-Adapter file. Streamed (real SDXL
    weights are several GB); nothing is loaded."""
    from nfstore.encoders import checksum

    where, ip_file = locate_sdxl(sdxl), locate_ip_adapter(ip_adapter)
    files = sorted(f for f in where.rglob("*") if f.is_file()) if where.is_dir() else [where]
    out = {"sdxl": checksum(tuple(files)), "ip_adapter": checksum((ip_file,))}
    config = locate_sdxl_config(where, sdxl_config)
    if config is not None:
        out["sdxl_config"] = checksum(tuple(sorted(
            f for f in config.rglob("*") if f.is_file() and f.suffix in (".json", ".txt"))))
    return out


def encoder_checksum(path: str | Path, model: str) -> str:
    """sha256 of the weights of the ``nf embed`` featurizer ``model`` (best of N chooses with
    it): the IP-Adapter encoders' files without loading them, any other featurizer's
    ``fingerprint()``."""
    from nfstore.encoders import checksum, get_model, locate_weights
    from nfstore.featurizers import get_featurizer, make_featurizer

    spec = getattr(get_featurizer(model), "spec", None)
    if spec is not None:
        return checksum(locate_weights(path, get_model(spec)).files)
    return str(make_featurizer(model, path).fingerprint()["weights_sha256"])


def image_seed(seed: int, row: int, sample: int, samples: int) -> int:
    """The generator seed of one image: fixed by (seed, row, sample), whatever the batch."""
    return int(seed * 1_000_003 + row * samples + sample)


def img2img(pipe: Any) -> Any:
    """The ``StableDiffusionXLImg2ImgPipeline`` sharing ``pipe``'s components (made once)."""
    if getattr(pipe, "_nf_img2img", None) is None:
        import diffusers

        i2i = diffusers.StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
        i2i.set_progress_bar_config(disable=True)
        i2i.prepare_ip_adapter_image_embeds = types.MethodType(
            lambda self, ip_adapter_image, ip_adapter_image_embeds, *a, **k:
            ip_adapter_image_embeds, i2i)  # bug #9813, as for the text-to-image pipeline
        pipe._nf_img2img = i2i
    return pipe._nf_img2img


def generate(pipe: Any, embeds: np.ndarray, cfg: ReconConfig, seeds: list[list[int]],
             init: tuple[str, np.ndarray] | None = None, on_step: Any = None) -> np.ndarray:
    """Images for a batch of embeddings, ``samples`` each.

    Parameters
    ----------
    embeds : float array (B, D)
    seeds : B lists of ``cfg.samples`` generator seeds
    init : img2img start (:func:`nfrecon.init_images.init_source`): ``("images", uint8 (B,
        size, size, 3))`` or ``("latents", float (B, 4, h, w), already scaled)``;
        ``int(steps * cfg.strength)`` denoising steps run (diffusers' convention)

    Returns
    -------
    uint8 array (B, samples, size, size, 3)
    """
    import torch

    B, N = embeds.shape[0], cfg.samples
    e = torch.from_numpy(np.asarray(embeds, np.float32)).repeat_interleave(N, 0)[:, None, :]
    if cfg.guidance > 1:
        e = torch.cat([torch.zeros_like(e), e])
    gens = [torch.Generator(device="cpu").manual_seed(s) for row in seeds for s in row]
    common = dict(prompt=[""] * B, num_images_per_prompt=N, ip_adapter_image_embeds=[e],
                  num_inference_steps=cfg.steps, guidance_scale=cfg.guidance, generator=gens,
                  output_type="np")
    if on_step is not None:
        def step_end(pipe: Any, i: int, t: Any, kw: dict) -> dict:
            on_step(i + 1, cfg.steps)
            return kw

        common["callback_on_step_end"] = step_end
    if init is None:
        out = pipe(height=cfg.size, width=cfg.size, **common).images
    else:
        kind, start = init
        x = torch.from_numpy(np.ascontiguousarray(start)).float()
        if kind == "images":  # (B, H, W, 3) uint8 -> (B, 3, H, W) in [0, 1]
            x = x.permute(0, 3, 1, 2) / 255.0
        out = img2img(pipe)(image=x.repeat_interleave(N, 0), strength=cfg.strength,
                            **common).images
    img = np.clip(np.rint(np.asarray(out) * 255), 0, 255).astype(np.uint8)
    return img.reshape(B, N, cfg.size, cfg.size, 3)


def choose(images: np.ndarray, decoded: np.ndarray, encoder: Any | None) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
    """Best of N by cosine between the image encoder's embedding of each sample and the
    **decoded** embedding (never the ground truth).

    Parameters
    ----------
    images : uint8 (B, N, H, W, 3)     decoded : (B, D)

    Returns
    -------
    chosen : int (B,)     scores : float32 (B, N)
    """
    B, N = images.shape[:2]
    if N == 1 or encoder is None:
        return np.zeros(B, np.int64), np.full((B, N), np.nan, np.float32)
    emb = embed_images(encoder, images.reshape(B * N, *images.shape[2:])).reshape(B, N, -1)
    d = decoded / np.linalg.norm(decoded, axis=1, keepdims=True)
    e = emb / np.linalg.norm(emb, axis=2, keepdims=True)
    scores = np.einsum("bnd,bd->bn", e, d).astype(np.float32)
    return scores.argmax(1), scores


def embed_images(encoder: Any, images: np.ndarray) -> np.ndarray:
    """The ``nf embed`` featurizer's embedding of uint8 images (n, H, W, 3) -> (n, D).

    Parameters
    ----------
    encoder : :class:`nfstore.featurizers.Featurizer` (:func:`load_image_encoder`)
    """
    return np.asarray(encoder(images), dtype=np.float32)


def load_image_encoder(path: str | Path, model: str, device: str) -> Any:
    """The featurizer ``model`` of ``nf embed`` (:func:`nfstore.featurizers.make_featurizer`)
    with the weights at ``path``."""
    from nfstore.featurizers import make_featurizer

    return make_featurizer(model, path, device=device)
