"""IP-Adapter image encoders loaded from local weights (never from a hub), and their preprocessing.

The IP-Adapter SDXL image encoder is OpenCLIP ViT-bigG-14; its global embedding is the
unnormalized projected CLS token (1280-d), the same in both layouts users have on disk:

- a Hugging Face ``CLIPVisionModelWithProjection`` folder (``config.json`` + ``model.safetensors``
  or ``pytorch_model.bin``; ``sdxl_models/image_encoder`` of the h94/IP-Adapter repository),
  whose ``image_embeds`` is ``visual_projection(post_layernorm(CLS))``;
- an open_clip checkpoint: a ``local-dir`` folder (``open_clip_config.json`` +
  ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``) or a weights file for the
  model's architecture, whose ``encode_image(x, normalize=False)`` is ``ln_post(CLS) @ proj``.

Images are preprocessed exactly as the IP-Adapter pipeline does: transformers' PIL-based
``CLIPImageProcessor`` (shortest edge 224, bicubic, center crop 224, CLIP mean/std).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nfstore import _io
from nfstore.errors import MissingFileError, OptionError, ReaderError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ModelSpec:
    """An embedding model: its open_clip architecture, output width and h94 folder."""

    name: str
    open_clip_arch: str
    dim: int
    ip_adapter_folder: str


MODELS: dict[str, ModelSpec] = {
    "ip-adapter-sdxl": ModelSpec("ip-adapter-sdxl", "ViT-bigG-14", 1280,
                                 "sdxl_models/image_encoder"),
    "ip-adapter-sdxl-vit-h": ModelSpec("ip-adapter-sdxl-vit-h", "ViT-H-14", 1024,
                                       "models/image_encoder"),
}
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSING = {"processor": "transformers CLIPImageProcessor (PIL)", "shortest_edge": 224,
                 "resample": "bicubic", "center_crop": 224, "mean": list(CLIP_MEAN),
                 "std": list(CLIP_STD)}


def get_model(name: str) -> ModelSpec:
    if name not in MODELS:
        raise OptionError(f"model: expected one of {sorted(MODELS)}; found {name!r}")
    return MODELS[name]


@dataclass(frozen=True)
class WeightsLocation:
    """Where the weights are: ``layout`` in {"hf", "open_clip_dir", "open_clip_file"}."""

    layout: str
    path: Path
    files: tuple[Path, ...]


def locate_weights(path: str | Path, spec: ModelSpec) -> WeightsLocation:
    """Find the encoder weights at ``path`` (a folder of either layout, an h94 IP-Adapter root,
    or an open_clip weights file); a one-line error lists what was expected."""
    p = Path(path)
    if p.is_file():
        if p.suffix not in WEIGHT_SUFFIXES:
            raise MissingFileError(f"weights: expected an open_clip {spec.open_clip_arch} "
                                   f"weights file ({', '.join(WEIGHT_SUFFIXES)}); found {p}")
        return WeightsLocation("open_clip_file", p, (p,))
    if p.is_dir() and not (p / "config.json").exists() and (p / spec.ip_adapter_folder).is_dir():
        p = p / spec.ip_adapter_folder  # the root of a local h94/IP-Adapter copy
    if p.is_dir():
        for layout, config, weights in (("hf", "config.json", HF_WEIGHTS),
                                        ("open_clip_dir", "open_clip_config.json",
                                         OPEN_CLIP_WEIGHTS)):
            if (p / config).is_file():
                found = [p / w for w in weights if (p / w).is_file()]
                if not found:
                    raise MissingFileError(f"weights: expected {' or '.join(weights)} beside "
                                           f"{config}; found an incomplete encoder at {p}")
                return WeightsLocation(layout, p, (p / config, found[0]))
    listing = sorted(x.name for x in p.iterdir())[:8] if p.is_dir() else "nothing"
    raise MissingFileError(
        f"weights: expected a Hugging Face image encoder folder (config.json + "
        f"{' or '.join(HF_WEIGHTS)}, as in {spec.ip_adapter_folder}), an open_clip folder "
        f"(open_clip_config.json + {' or '.join(OPEN_CLIP_WEIGHTS)}) or an open_clip "
        f"{spec.open_clip_arch} weights file at {p}; found {listing}")


def checksum(files: tuple[Path, ...]) -> str:
    """sha256 over the weight and config files (names and contents)."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(2**24), b""):
                h.update(block)
    return h.hexdigest()


class Encoder:
    """A loaded image encoder: ``encoder(pixels)`` -> embeddings (and optionally tokens).

    Parameters
    ----------
    model : torch.nn.Module
    layout : {"hf", "open_clip_dir", "open_clip_file"}
    dim : int
        Width of the global embedding.
    """

    def __init__(self, model: Any, layout: str, dim: int) -> None:
        self.model = model
        self.layout = layout
        self.dim = dim

    def __call__(self, pixels: torch.Tensor, tokens: bool = False) -> torch.Tensor:
        """Embed a batch.

        Parameters
        ----------
        pixels : float tensor of shape (batch, 3, 224, 224), preprocessed
        tokens : bool
            Return the penultimate hidden states (batch, n_tokens, hidden) instead of the
            global embedding (batch, dim); Hugging Face layout only (IP-Adapter plus).
        """
        import torch

        with torch.inference_mode():
            if self.layout == "hf":
                out = self.model(pixel_values=pixels, output_hidden_states=tokens)
                return out.hidden_states[-2] if tokens else out.image_embeds
            return self.model.encode_image(pixels, normalize=False)


def load_encoder(where: WeightsLocation, spec: ModelSpec, device: str = "cpu",
                 dtype: str = "float32", tokens: bool = False) -> Encoder:
    """Load the encoder from local files only; check its output width against the model."""
    import torch

    if tokens and where.layout != "hf":
        raise OptionError(f"tokens: expected weights in the Hugging Face layout "
                          f"(CLIPVisionModelWithProjection folder); found {where.layout} at "
                          f"{where.path}")
    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    with _io.reading(where.path, "image encoder weights"):
        if where.layout == "hf":
            from transformers import CLIPVisionModelWithProjection

            model = CLIPVisionModelWithProjection.from_pretrained(
                str(where.path), local_files_only=True, dtype=torch_dtype)
            dim = int(model.config.projection_dim)
        else:
            import open_clip

            if where.layout == "open_clip_dir":
                model = open_clip.create_model(f"local-dir:{where.path}")
            else:
                model = open_clip.create_model(spec.open_clip_arch, pretrained=str(where.path))
            dim = int(model.visual.output_dim)
            model = model.to(torch_dtype)
    if dim != spec.dim:
        raise ReaderError(f"weights: expected {spec.dim}-d embeddings ({spec.name}, "
                          f"{spec.open_clip_arch}); found {dim}-d embeddings from "
                          f"{where.path}")
    model.eval().to(device)
    return Encoder(model, where.layout, dim)


def processor() -> Any:
    """transformers' PIL-based CLIP image processor (the IP-Adapter pipeline's preprocessing)."""
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
               do_resize=True, do_center_crop=True, do_rescale=True, do_normalize=True,
               image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), resample=3)


def preprocess(image: Any, proc: Any) -> np.ndarray:
    """One PIL image (any mode; alpha composited by :func:`nfstore.imagefile.to_rgb`) ->
    float32 array (3, 224, 224)."""
    from nfstore.imagefile import to_rgb

    return np.asarray(proc(images=to_rgb(image), return_tensors="np")["pixel_values"][0],
                      dtype=np.float32)
