"""The eight image metrics of brain-decoding papers, as the published code computes them.

Variants (``docs/user-guide/metrics.md``, conventions). The ground truth enters at its native
size (each image its own: BOLD5000 and GOD images differ), so the convention's own resizing is
the only one applied to it.

- ``mindeye2`` (default; MindEye1/2's notebooks): float images in [0, 1], NCHW, first resized to
  256 x 256 (both sides, whatever the aspect ratio); every later resize is torchvision's tensor
  ``Resize`` (bilinear, short side, no center crop) with ``antialias=False`` (their torchvision
  < 0.17 did not antialias). PixCorr and SSIM at 425 px; AlexNet at 256, Inception at 342, CLIP
  at 224, EffNet-B at 255, SwAV at 224. SSIM: ``skimage.color.rgb2gray`` then a plain 2-D
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1.0)``. EffNet-B: IMAGENET1K_V2 weights.
- ``brain-diffuser``: reconstructions as uint8 (PNG truncation) and the ground truth, resized to
  425 x 425 with PIL bicubic for PixCorr/SSIM (NSD's ground truth already is 425 px); every
  feature network gets PIL bilinear 224 x 224 (Inception too). SSIM under its scikit-image
  0.17.2: ``multichannel=True`` on a 2-D gray image took the 425 columns as channels, so it is
  the **mean of 1-D SSIMs down the columns** (``channel_axis=-1`` today). EffNet-B: the legacy
  IMAGENET1K_V1 weights.

2-way identification (AlexNet, Inception, CLIP): ``r = corrcoef(gt, rec)[:N, N:]``; image j
scores ``sum_i [r[i, j] < r[j, j]] / (N - 1)``; the metric is the mean (chance 0.5). EffNet-B and
SwAV: mean ``scipy.spatial.distance.correlation(gt_i, rec_i)`` (lower is better).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nfstore.decoding import two_way
from nfstore.errors import MissingFileError, OptionError, ReaderError

METRICS = ("pixcorr", "ssim", "alexnet2", "alexnet5", "inception", "clip", "effnet", "swav")
LOWER_IS_BETTER = ("effnet", "swav")
VARIANTS = ("mindeye2", "brain-diffuser")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
WEIGHT_FILES = {"alexnet": "alexnet-owt-7be5be79.pth",
                "inception": "inception_v3_google-0cc3c7bd.pth",
                "effnet-mindeye2": "efficientnet_b1-c27df63c.pth",
                "effnet-brain-diffuser": "efficientnet_b1_rwightman-bac287d4.pth",
                "swav": "swav_800ep_pretrain.pth.tar"}
RESIZE = {"mindeye2": {"pixcorr": 425, "ssim": 425, "alexnet": 256, "inception": 342,
                       "clip": 224, "effnet": 255, "swav": 224},
          "brain-diffuser": {"pixcorr": 425, "ssim": 425, "alexnet": 224, "inception": 224,
                             "clip": 224, "effnet": 224, "swav": 224}}


# --------------------------------------------------------------------------- formulas
def correlation_distance(gt: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Per-image ``scipy.spatial.distance.correlation`` of flattened features, (N,)."""
    from scipy.spatial.distance import correlation

    n = gt.shape[0]
    return np.array([correlation(gt[i].ravel(), rec[i].ravel()) for i in range(n)])


def pixcorr(gt: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Per-image Pearson r of flattened RGB pixels, (N,). Inputs (N, H, W, 3) float."""
    n = gt.shape[0]
    a = gt.reshape(n, -1) - gt.reshape(n, -1).mean(1, keepdims=True)
    b = rec.reshape(n, -1) - rec.reshape(n, -1).mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def ssim(gt: np.ndarray, rec: np.ndarray, columnwise: bool = False) -> np.ndarray:
    """Per-image SSIM of ``rgb2gray`` images (N, H, W, 3) float in [0, 1], (N,).

    ``columnwise``: Brain-Diffuser's value (scikit-image 0.17 ``multichannel=True`` on a 2-D
    image: the mean of 1-D SSIMs down the columns)."""
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    out = []
    for g, r in zip(gt, rec):
        g2, r2 = rgb2gray(g), rgb2gray(r)
        out.append(structural_similarity(r2, g2, channel_axis=-1 if columnwise else None, **kw))
    return np.array(out)


# --------------------------------------------------------------------------- resizing
def resize_tensor(x: Any, size: int) -> Any:
    """torchvision tensor ``Resize(size)`` on the short side, bilinear, no antialias."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    return TF.resize(x, [size, size] if x.shape[-1] == x.shape[-2] else size,
                     interpolation=InterpolationMode.BILINEAR, antialias=False)


def resize_pil(images: Any, size: int, method: str) -> np.ndarray:
    """PIL resize of uint8 images (N, H, W, 3), or N arrays (H_i, W_i, 3), to uint8 (N, size,
    size, 3) (``bilinear``/``bicubic``)."""
    from PIL import Image

    m = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[method]
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), m)) for im in images])


def resize_256(images: Any) -> Any:
    """MindEye2's first step: uint8 images -> float tensor (N, 3, 256, 256) in [0, 1], tensor
    bilinear resize of both sides without antialias.

    Parameters
    ----------
    images : uint8 array (N, H, W, 3), or a sequence of N arrays (H_i, W_i, 3) of any sizes
    """
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    groups = [images] if isinstance(images, np.ndarray) and images.ndim == 4 else [
        np.asarray(im)[None] for im in images]
    return torch.cat([TF.resize(torch.from_numpy(np.ascontiguousarray(g)).permute(0, 3, 1, 2)
                                .float() / 255, [256, 256],
                                interpolation=InterpolationMode.BILINEAR, antialias=False)
                      for g in groups])


def prepare(images: Any, variant: str, size: int, pil_method: str = "bilinear") -> Any:
    """uint8 images -> float tensor (N, 3, size, size) in [0, 1], as ``variant`` does.

    Parameters
    ----------
    images : uint8 array (N, H, W, 3), or a sequence of N arrays (H_i, W_i, 3) of any sizes
    """
    import torch

    if variant == "brain-diffuser":
        return torch.from_numpy(resize_pil(images, size, pil_method)).permute(0, 3, 1, 2
                                                                             ).float() / 255
    return resize_tensor(resize_256(images), size)


# --------------------------------------------------------------------------- networks
@dataclass
class Network:
    """A feature extractor: ``fn`` maps a normalized batch (N, 3, S, S) to named outputs."""

    name: str
    fn: Callable[[Any], dict[str, Any]]
    size_key: str
    norm: tuple[tuple[float, ...], tuple[float, ...]]


def _load_state(path: Path, param: str = "weights") -> dict[str, Any]:
    """The state dict of a torch weights file; errors name ``param`` (where it came from)."""
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file
        raise ReaderError(f"{param}: expected torch weights in {path}; found a file that "
                          f"cannot read as torch weights ({type(err).__name__}: "
                          f"{' '.join(str(err).split())[:160]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def weight_paths(weights: str | Path, variant: str) -> dict[str, Path]:
    """The torchvision/SwAV checkpoint files a variant needs in the folder ``weights``; one
    error lists every missing."""
    folder = Path(weights)
    names = {"alexnet": WEIGHT_FILES["alexnet"], "inception": WEIGHT_FILES["inception"],
             "effnet": WEIGHT_FILES[f"effnet-{variant}"], "swav": WEIGHT_FILES["swav"]}
    missing = [f for f in names.values() if not (folder / f).is_file()]
    if missing:
        raise MissingFileError(f"weights: expected {', '.join(names.values())} in {folder}; "
                               f"missing {', '.join(missing)} (nothing is downloaded)")
    return {k: folder / f for k, f in names.items()}


def load_networks(paths: dict[str, Path], clip: str | Path, device: str) -> list[Network]:
    """The five feature networks, each loaded once, eval mode, on ``device``."""
    import torch
    import torchvision.models as tvm
    from torchvision.models.feature_extraction import create_feature_extractor

    def strict(model: torch.nn.Module, path: Path, state: dict[str, Any]) -> torch.nn.Module:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ReaderError(f"weights: expected the network's weights in {path}; found "
                              f"other ones ({' '.join(str(err).split())[:160]})") from None
        return model.eval().to(device)

    alex = strict(tvm.alexnet(weights=None), paths["alexnet"], _load_state(paths["alexnet"]))
    alex_fx = create_feature_extractor(alex, return_nodes={"features.4": "alexnet2",
                                                           "features.11": "alexnet5"})
    inc = strict(tvm.inception_v3(weights=None, aux_logits=True, transform_input=True,
                                  init_weights=False), paths["inception"],
                 _load_state(paths["inception"]))
    inc_fx = create_feature_extractor(inc, return_nodes={"avgpool": "inception"})
    eff = strict(tvm.efficientnet_b1(weights=None), paths["effnet"], _load_state(paths["effnet"]))
    eff_fx = create_feature_extractor(eff, return_nodes={"avgpool": "effnet"})
    sw_state = {k.removeprefix("module."): v for k, v in _load_state(paths["swav"]).items()}
    sw = tvm.resnet50(weights=None)
    backbone = [k for k in sw.state_dict() if not k.startswith("fc.")]
    lacking = [k for k in backbone if k not in sw_state]
    if lacking:
        raise ReaderError(f"weights: expected a SwAV ResNet-50 checkpoint in {paths['swav']}; "
                          f"found one missing "
                          f"{len(lacking)} backbone weights (e.g. {lacking[0]})")
    sw.load_state_dict(sw_state, strict=False)
    sw_fx = create_feature_extractor(sw.eval().to(device), return_nodes={"avgpool": "swav"})
    clip_fn = load_clip(clip, device)
    return [Network("alexnet", alex_fx, "alexnet", IMAGENET),
            Network("inception", inc_fx, "inception", IMAGENET),
            Network("clip", lambda x: {"clip": clip_fn(x)}, "clip", CLIP_NORM),
            Network("effnet", eff_fx, "effnet", IMAGENET),
            Network("swav", sw_fx, "swav", IMAGENET)]


OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def load_clip(clip: str | Path, device: str) -> Callable[[Any], Any]:
    """CLIP ViT-L/14 image features (768-d ``image_embeds``/``encode_image``) from an open_clip
    folder as model hubs hold them (``open_clip_config.json``, whose ``model_cfg`` gives the
    architecture, + ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``), a
    Hugging Face ``CLIPVisionModelWithProjection`` folder, an OpenAI ``ViT-L-14.pt`` file (read
    by open_clip's ``load_openai_model``), or an open_clip ``ViT-L-14-quickgelu`` weights file
    (the OpenAI weights need QuickGELU)."""
    import torch

    p = Path(clip)
    if (p / OPEN_CLIP_CONFIG).is_file():
        model = _open_clip_folder(p)
    elif (p / "config.json").is_file():
        from transformers import CLIPVisionModelWithProjection

        hf_model = CLIPVisionModelWithProjection.from_pretrained(str(p), local_files_only=True)
        hf_model = hf_model.eval().to(device)

        def hf(x: Any) -> Any:
            with torch.no_grad():
                return hf_model(pixel_values=x).image_embeds
        return hf
    elif p.is_file():
        import open_clip

        try:
            if p.suffix == ".pt":  # OpenAI's clip.load file (TorchScript archive or state dict)
                model = open_clip.load_openai_model(str(p), precision="fp32", device="cpu")
            else:
                model = open_clip.create_model("ViT-L-14-quickgelu", pretrained=str(p))
        except Exception as err:  # noqa: BLE001
            raise ReaderError(f"clip: expected open_clip ViT-L-14-quickgelu weights; found "
                              f"{p} unreadable as such ({type(err).__name__})") from None
    else:
        raise MissingFileError(
            f"clip: expected a Hugging Face CLIPVisionModelWithProjection folder "
            f"(config.json + weights), an open_clip folder ({OPEN_CLIP_CONFIG} + "
            f"{' or '.join(OPEN_CLIP_WEIGHTS)}), an OpenAI ViT-L-14.pt file or an open_clip "
            f"ViT-L-14-quickgelu weights file; found nothing of these at {p}")
    model = model.eval().to(device)

    def oc(x: Any) -> Any:
        with torch.no_grad():
            return model.encode_image(x)
    return oc


def _open_clip_folder(p: Path) -> Any:
    """The open_clip model of a hub-layout folder, built from its config's ``model_cfg``
    (open_clip's ``local-dir:`` schema: nothing is fetched) and loaded strictly."""
    import json

    import open_clip

    found = [w for w in OPEN_CLIP_WEIGHTS if (p / w).is_file()]
    if not found:
        raise MissingFileError(f"clip: expected {' or '.join(OPEN_CLIP_WEIGHTS)} beside "
                               f"{OPEN_CLIP_CONFIG} in {p}; found neither")
    try:
        cfg = json.loads((p / OPEN_CLIP_CONFIG).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ReaderError(f"clip: expected JSON in {p / OPEN_CLIP_CONFIG}; found "
                          f"{type(err).__name__}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_cfg"), dict):
        found_here = sorted(cfg)[:6] if isinstance(cfg, dict) else type(cfg).__name__
        raise ReaderError(f"clip: expected an object with 'model_cfg' (the architecture) in "
                          f"{p / OPEN_CLIP_CONFIG}; found {found_here}")
    try:
        return open_clip.create_model(f"local-dir:{p}")
    except Exception as err:  # noqa: BLE001 - wrong weights for the config, unreadable file
        raise ReaderError(f"clip: expected {found[0]} to fit the model_cfg of "
                          f"{OPEN_CLIP_CONFIG} in {p}; found {type(err).__name__}: "
                          f"{' '.join(str(err).split())[:160]}") from None


def features(net: Network, images: Any, variant: str, device: str, batch: int = 32
             ) -> dict[str, np.ndarray]:
    """Outputs of one network for uint8 images (N, H, W, 3) or N arrays (H_i, W_i, 3), fed in
    batches."""
    import torch

    size = RESIZE[variant][net.size_key]
    mean = torch.tensor(net.norm[0]).view(1, 3, 1, 1)
    std = torch.tensor(net.norm[1]).view(1, 3, 1, 1)
    out: dict[str, list[np.ndarray]] = {}
    for a in range(0, len(images), batch):
        x = (prepare(images[a:a + batch], variant, size) - mean) / std
        with torch.no_grad():
            res = net.fn(x.to(device))
        for k, v in res.items():
            out.setdefault(k, []).append(v.float().flatten(1).cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def pixel_metrics(gt: Any, rec: np.ndarray, variant: str, batch: int = 64
                  ) -> dict[str, np.ndarray]:
    """PixCorr and SSIM per image (N,), ``batch`` images at a time (each is resized to 425 px
    in float64: 4 MB per image and copy).

    Parameters
    ----------
    gt : uint8 (N, H, W, 3), or N arrays (H_i, W_i, 3) at their native sizes
    rec : uint8 (N, h, w, 3)
    """
    if len(gt) > batch:
        parts = [pixel_metrics(gt[a:a + batch], rec[a:a + batch], variant, batch)
                 for a in range(0, len(gt), batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if variant == "brain-diffuser":
        g = resize_pil(gt, 425, "bicubic").astype(np.float64) / 255
        r = resize_pil(rec, 425, "bicubic").astype(np.float64) / 255
    else:
        g = prepare(gt, variant, 425).permute(0, 2, 3, 1).numpy().astype(np.float64)
        r = prepare(rec, variant, 425).permute(0, 2, 3, 1).clamp(0, 1).numpy().astype(
            np.float64)
    return {"pixcorr": pixcorr(g, r), "ssim": ssim(g, r, columnwise=variant == "brain-diffuser")}


def image_metrics(gt: Any, rec: np.ndarray, networks: list[Network], variant: str,
                  device: str = "cpu") -> dict[str, np.ndarray]:
    """All eight metrics per image (N,), for uint8 ground truth (N, H, W, 3) or N arrays
    (H_i, W_i, 3) at their native sizes, and reconstructions (N, h, w, 3)."""
    if variant not in VARIANTS:
        raise OptionError(f"variant: expected one of {list(VARIANTS)}; found {variant!r}")
    out = pixel_metrics(gt, rec, variant)
    for net in networks:
        fg = features(net, gt, variant, device)
        fr = features(net, rec, variant, device)
        for k in fg:
            out[k] = (correlation_distance if k in LOWER_IS_BETTER else two_way)(fg[k], fr[k])
    return out


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap CI of the mean over images."""
    rng = np.random.default_rng(seed)
    v = np.asarray(values, np.float64)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)
