"""Image featurizers: what ``nf embed --model NAME`` computes and caches at ``/embeddings/<name>``.

A featurizer turns a batch of uint8 images (n, H, W, 3) into features (n, *feature_shape).
Built in: ``ip-adapter-sdxl`` and ``ip-adapter-sdxl-vit-h`` (IP-Adapter image encoders,
:mod:`nfstore.encoders`), ``pixels`` (downsampled RGB) and ``sdxl-vae`` (raw SDXL VAE latents,
:mod:`nfstore.lowlevel`). Other packages add featurizers without touching this project: a
subclass of :class:`Featurizer` registered under the entry-point group
``nfstore.featurizers``::

    # pyproject.toml of the plugin package
    [project.entry-points."nfstore.featurizers"]
    my-model = "my_package.module:MyFeaturizer"

The one cache writer (:func:`nfstore.embeddings.embed_store`) reads the images, calls the
featurizer batch by batch and commits rows resumably; a featurizer only computes.
"""

from __future__ import annotations

import hashlib
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nfstore.errors import OptionError

ENTRY_POINT_GROUP = "nfstore.featurizers"


class Featurizer:
    """Base class of image featurizers (subclass it, set :attr:`name`, implement
    :meth:`encode` and :attr:`feature_shape`).

    Parameters
    ----------
    weights : path, optional
        Model weights; required where :attr:`needs_weights`.
    device : str
        ``cpu`` or ``cuda[:N]``.
    **options
        Values for the keys of :attr:`options` (others are an :class:`OptionError`).

    Attributes
    ----------
    name : str
        Registry name, the ``--model`` choice and the cache name ``/embeddings/<name>``.
    options : dict
        Option names and defaults the featurizer accepts (``nf embed`` passes ``size``,
        ``latent_size`` and ``tokens`` to the featurizers that declare them).
    needs_weights : bool
        ``weights`` must be given.
    include_pools : bool
        ``stimuli="all"`` includes the pools of novel images (False: datasets only).
    input_size : (height, width) or None
        Images are read with ``Store.images(ids, size=input_size)`` in batches of one stimulus
        table; None: each image at its own size, decoded in worker processes and passed
        through :meth:`preprocess` (then :meth:`encode` gets the stacked results).
    """

    name: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    needs_weights: ClassVar[bool] = False
    include_pools: ClassVar[bool] = True
    input_size: tuple[int, int] | None = None

    def __init__(self, weights: str | Path | None = None, *, device: str = "cpu",
                 **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise OptionError(f"options: expected keys of {sorted(self.options)} for model "
                              f"{self.name}; found {unknown}")
        if self.needs_weights and weights is None:
            raise OptionError(f"weights: expected the weights of model {self.name}; found none")
        self.weights = weights
        self.device = device
        self.config = {**self.options, **options}

    @property
    def cache_name(self) -> str:
        """The cache ``/embeddings/<cache_name>`` (the name, unless an option changes it)."""
        return self.name

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one image's features."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """Cache attributes identifying the weights and options: ``weights`` (layout, path,
        files), ``weights_sha256`` (64 hex digits; a cache with another one needs
        ``overwrite``) and ``preprocessing``, plus any others to store. The default hashes
        the name and options (for featurizers without weights)."""
        prep = {"options": self.config}
        return {"weights": {"layout": "none (no network)", "path": "", "files": []},
                "weights_sha256": _sha256(repr((self.name, sorted(prep.items())))),
                "preprocessing": prep}

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """One uint8 image (H, W, 3) -> the model input of one image (default: unchanged)."""
        return image

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """Stacked :meth:`preprocess` outputs (n, ...) -> features (n, *feature_shape)."""
        raise NotImplementedError

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (n, H, W, 3) -> float features (n, *feature_shape)."""
        return self.encode(np.stack([self.preprocess(im) for im in images]))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class IPAdapterSDXL(Featurizer):
    """IP-Adapter SDXL image encoder (OpenCLIP ViT-bigG-14): the unnormalized projected CLS
    token (1280,), or with ``tokens`` the penultimate hidden states (tokens, hidden) cached as
    ``<name>-tokens`` (Hugging Face layout only). Preprocessing: transformers' CLIP processor
    (:func:`nfstore.encoders.preprocess`); float16 on CUDA."""

    name = "ip-adapter-sdxl"
    options: ClassVar[dict[str, Any]] = {"tokens": False}
    needs_weights = True
    spec: ClassVar[str] = "ip-adapter-sdxl"  # the architecture (:data:`nfstore.encoders.MODELS`)

    def __init__(self, weights: str | Path | None = None, *, device: str = "cpu",
                 **options: Any) -> None:
        import torch

        from nfstore import encoders

        super().__init__(weights, device=device, **options)
        spec = encoders.get_model(self.spec)
        self.tokens = bool(self.config["tokens"])
        self.where = encoders.locate_weights(weights, spec)  # type: ignore[arg-type]
        self.encoder = encoders.load_encoder(self.where, spec, device=device, dtype=(
            "float16" if device.startswith("cuda") else "float32"), tokens=self.tokens)
        self._param = next(self.encoder.model.parameters())
        probe = self.encoder(torch.zeros(1, 3, 224, 224, device=device, dtype=self._param.dtype),
                             tokens=self.tokens)
        self._shape = tuple(int(s) for s in probe.shape[1:])
        self._proc: Any = None

    @property
    def cache_name(self) -> str:
        return f"{self.name}-tokens" if self.tokens else self.name

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self._shape

    def fingerprint(self) -> dict[str, Any]:
        from nfstore import encoders

        w = self.where
        return {"weights": {"layout": w.layout, "path": str(w.path.resolve()),
                            "files": [f.name for f in w.files]},
                "weights_sha256": encoders.checksum(w.files),
                "preprocessing": encoders.PREPROCESSING,
                "output": "hidden_states[-2]" if self.tokens else "image_embeds (unnormalized)"}

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> float32 (3, 224, 224), CLIP-normalized."""
        from PIL import Image

        from nfstore import encoders

        if self._proc is None:
            self._proc = encoders.processor()
        return encoders.preprocess(Image.fromarray(np.asarray(image, np.uint8)), self._proc)

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """float32 (n, 3, 224, 224) -> float32 (n, dim), or (n, tokens, hidden)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(
            self._param.device, self._param.dtype)
        return self.encoder(x, tokens=self.tokens).float().cpu().numpy()


class IPAdapterSDXLViTH(IPAdapterSDXL):
    """IP-Adapter SDXL's ViT-H-14 image encoder (1024,) (``models/image_encoder``)."""

    name = "ip-adapter-sdxl-vit-h"
    spec = "ip-adapter-sdxl-vit-h"


class Pixels(Featurizer):
    """Downsampled RGB pixels (size * size * 3,) in [0, 1], row-major (y, x, rgb): PIL BOX
    (area averaging) of the image read at 4x the size. Datasets only under ``stimuli="all"``
    (the low-level target of ``nf decode-ridge --target pixels``)."""

    name = "pixels"
    options: ClassVar[dict[str, Any]] = {"size": 32}
    include_pools = False

    def __init__(self, weights: str | Path | None = None, *, device: str = "cpu",
                 **options: Any) -> None:
        super().__init__(weights, device=device, **options)
        self.size = int(self.config["size"])
        if not 4 <= self.size <= 256:
            raise OptionError(f"size: expected 4..256 pixels; found {self.size}")
        self.input_size = (4 * self.size, 4 * self.size)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return (self.size * self.size * 3,)

    def fingerprint(self) -> dict[str, Any]:
        prep = {"size": self.size, "resample": "PIL BOX (area) from the stimulus image (one-file "
                "datasets first resized to 4x the size, PIL bicubic)",
                "layout": "row-major (y, x, rgb), values in [0, 1]"}
        return {"size": self.size, "preprocessing": prep,
                "weights": {"layout": "none (no network)", "path": "", "files": []},
                "weights_sha256": _sha256(repr(sorted(prep.items())))}

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (n, 4*size, 4*size, 3) -> float32 (n, size*size*3)."""
        from nfstore.lowlevel import downsample

        return downsample(batch, self.size)


class SDXLVAE(Featurizer):
    """The SDXL VAE's raw latents (``latent_dist.mean``, not scaled) of the image resized to
    ``f * latent_size`` px, flattened (channel, y, x): (C * latent_size**2,). ``weights``: a
    diffusers SDXL folder (``vae/``). Datasets only under ``stimuli="all"``."""

    name = "sdxl-vae"
    options: ClassVar[dict[str, Any]] = {"latent_size": 28}
    needs_weights = True
    include_pools = False

    def __init__(self, weights: str | Path | None = None, *, device: str = "cpu",
                 **options: Any) -> None:
        from nfstore.lowlevel import load_vae

        super().__init__(weights, device=device, **options)
        self.latent_size = int(self.config["latent_size"])
        if not 4 <= self.latent_size <= 128:
            raise OptionError(f"latent_size: expected 4..128; found {self.latent_size}")
        self.vae = load_vae(weights, device)  # type: ignore[arg-type]
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)  # 8 for SDXL's VAE
        px = self.factor * self.latent_size
        self.input_size = (px, px)
        self.latent_shape = [int(self.vae.config.latent_channels), self.latent_size,
                             self.latent_size]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return (int(np.prod(self.latent_shape)),)

    def fingerprint(self) -> dict[str, Any]:
        from nfstore.encoders import checksum

        files = sorted(f for f in (Path(self.weights) / "vae").iterdir()  # type: ignore[arg-type]
                       if f.is_file())
        px = self.input_size[0]  # type: ignore[index]
        return {"latent_shape": self.latent_shape,
                "scaling_factor": float(self.vae.config.scaling_factor),
                "image_size": px, "vae_scale_factor": self.factor,
                "preprocessing": {"resize": f"{px} px (store.images)", "range": "[-1, 1]",
                                  "latents": "latent_dist.mean, raw (not multiplied by "
                                             "scaling_factor)"},
                "weights": {"layout": "diffusers SDXL folder (vae/)",
                            "path": str(Path(self.weights)),  # type: ignore[arg-type]
                            "files": [f.name for f in files]},
                "weights_sha256": checksum(tuple(files))}

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (n, px, px, 3) -> float32 (n, C * latent_size**2)."""
        from nfstore import lowlevel

        return lowlevel.vae_latents(self.vae, batch).reshape(len(batch), -1)


BUILTIN: tuple[type[Featurizer], ...] = (IPAdapterSDXL, IPAdapterSDXLViTH, Pixels, SDXLVAE)


def featurizers() -> dict[str, type[Featurizer]]:
    """Every featurizer by name: the built-ins, then those of installed packages (entry-point
    group ``nfstore.featurizers``; a built-in name is not replaced). A plugin that fails to
    load, or is not a :class:`Featurizer` subclass with a name, is left out with a one-line
    warning."""
    out: dict[str, type[Featurizer]] = {cls.name: cls for cls in BUILTIN}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as err:  # a broken plugin must not break the others
            warnings.warn(f"{ENTRY_POINT_GROUP}: expected a loadable featurizer at {ep.value}; "
                          f"found {type(err).__name__}: {' '.join(str(err).split())[:160]}",
                          stacklevel=2)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Featurizer) and cls.name):
            warnings.warn(f"{ENTRY_POINT_GROUP}: expected a Featurizer subclass with a name at "
                          f"{ep.value}; found {cls!r}", stacklevel=2)
            continue
        out.setdefault(cls.name, cls)
    return out


def featurizer_names() -> list[str]:
    """Sorted names of every featurizer (``nf embed --model`` choices)."""
    return sorted(featurizers())


def get_featurizer(name: str) -> type[Featurizer]:
    """The featurizer class called ``name``.

    Raises
    ------
    OptionError
        ``model: expected one of [...]; found 'x'``.
    """
    found = featurizers()
    if name not in found:
        raise OptionError(f"model: expected one of {sorted(found)}; found {name!r}")
    return found[name]


def make_featurizer(name: str, weights: str | Path | None = None, *, device: str = "cpu",
                    options: dict[str, Any] | None = None, strict: bool = True) -> Featurizer:
    """Construct the featurizer ``name`` (weights loaded).

    Parameters
    ----------
    options : option values; with ``strict=False`` keys the featurizer does not declare are
        dropped (the CLI passes all of its featurizer options to every model)
    """
    cls = get_featurizer(name)
    opts = dict(options or {})
    if not strict:
        opts = {k: v for k, v in opts.items() if k in cls.options}
    return cls(weights, device=device, **opts)


__all__ = ["ENTRY_POINT_GROUP", "Featurizer", "IPAdapterSDXL", "IPAdapterSDXLViTH", "Pixels",
           "SDXLVAE", "featurizers", "featurizer_names", "get_featurizer", "make_featurizer"]
