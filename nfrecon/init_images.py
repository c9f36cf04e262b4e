"""The low-level stage inside ``nf reconstruct``: img2img starts (``--init``) and MindEye2's
pixel blend (``--blend``).

``init`` (``--init NAME``) is either a reconstruction set (a blurry stage: ``nf
decode-ridge --target pixels|sdxl-vae``; its chosen image per stimulus, resized to ``size``), or
a decoded set of SDXL-VAE latents (``--target sdxl-vae``: the predicted raw latents, multiplied
by the VAE's ``scaling_factor`` here, exactly once, because diffusers' img2img takes 4-channel
inputs as already-scaled latents). The blend is ``(1 - w) * reconstruction + w * init
image`` in uint8 pixel space, stored as its own set ``<name>-blend<w>``. Errors name the
parameters of :func:`nfrecon.reconstruct.reconstruct` (``init``, ``init_kind``, ``blend``,
``size``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import nfstore
from nfstore import Transaction
from nfstore.errors import OptionError, StoreError
from nfstore.names import RECON_GROUP

LATENT_MODEL = "sdxl-vae"


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, H, W, 3) -> uint8 (n, size, size, 3), PIL bicubic (unchanged if equal)."""
    from PIL import Image

    if images.shape[1:3] == (size, size):
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size),
                                                           Image.Resampling.BICUBIC))
                     for im in images])


def resolve(location: str | Path, name: str, subject: str, kind: str = "auto") -> str:
    """Which start set ``name`` gives ``subject``: ``"images"`` or ``"latents"``.

    ``nf decode-ridge --target sdxl-vae --name N`` writes both a decoded set of latents and a
    reconstruction set of their decoded images under ``N``; ``kind`` picks: ``latents``,
    ``images``, or ``auto`` (latents where there are some, else images). One-line errors
    name the parameter (``init``, ``init_kind``) and what was found.
    """
    if kind not in ("auto", "images", "latents"):
        raise OptionError(f"init_kind: expected auto, images or latents; found {kind!r}")
    store = nfstore.open_store(location)
    has_images = store.has(f"{RECON_GROUP}/{name}/{subject}")
    has_decoded = name in store.decoded_sets() and subject in store.decoded_subjects(name)
    what = store.decoded(name, subject).attrs.get("embedding") if has_decoded else None
    if kind != "images" and what == LATENT_MODEL:
        return "latents"
    if kind != "latents" and has_images:
        return "images"
    if has_decoded and kind != "images":
        raise OptionError(f"init: expected {LATENT_MODEL!r} latents or a reconstruction set; "
                          f"found decoded set {name!r} holds {what!r} predictions")
    want = {"auto": "a reconstruction set or a decoded set of sdxl-vae latents",
            "images": "a reconstruction set", "latents": "a decoded set of sdxl-vae latents"}
    raise StoreError(f"init: expected {want[kind]} with rows of {subject} in {location}; "
                     f"found none named {name!r}")


def init_source(location: str | Path, name: str, subject: str, stimuli: np.ndarray,
                size: int, kind: str = "auto") -> tuple[str, np.ndarray, dict[str, Any]]:
    """The img2img start of each stimulus from set ``name`` (see :func:`resolve`).

    Returns
    -------
    kind : "images" or "latents"
    values : uint8 (n, size, size, 3), or float32 (n, 4, h, w) scaled latents (h = size / f)
    info : provenance for the output's attributes
    """
    from nfrecon.recon_sets import read_reconstructions

    store = nfstore.open_store(location)
    if resolve(location, name, subject, kind) == "images":
        r = read_reconstructions(location, name, subject)
        index = {s: i for i, s in enumerate(r["stimulus"])}
        missing = [s for s in stimuli if s not in index]
        if missing:
            raise StoreError(f"init: expected an image of every stimulus of {subject}; found "
                             f"reconstruction set {name!r} has no image of {len(missing)} "
                             f"(e.g. {missing[:3]})")
        rows = np.array([index[s] for s in stimuli])
        imgs = np.asarray(r["images"].vindex[rows, r["chosen"][rows]].compute())
        return "images", resize(imgs, size), {"init": name, "init_kind": "images"}
    d = store.decoded(name, subject)
    lat = store.embeddings(LATENT_MODEL)
    shape = tuple(int(v) for v in lat.attrs["latent_shape"])
    px = int(lat.attrs["image_size"])
    if px != size:
        raise OptionError(f"size: expected {px} (latents of {shape[1]}x{shape[2]} decode to "
                          f"{px} px); found {size}")
    index = {s: i for i, s in enumerate(d.stimulus.values)}
    missing = [s for s in stimuli if s not in index]
    if missing:
        raise StoreError(f"init: expected a row of every stimulus of {subject}; found decoded "
                         f"set {name!r} has no row of {len(missing)} (e.g. {missing[:3]})")
    raw = np.asarray(d.values[[index[s] for s in stimuli]], np.float32)
    scale = float(lat.attrs["scaling_factor"])
    return ("latents", raw.reshape(-1, *shape) * scale,
            {"init": name, "init_kind": "latents", "scaling_factor": scale})


def blend(recon: np.ndarray, init: np.ndarray, weight: float) -> np.ndarray:
    """MindEye2's pixel blend ``(1 - w) * recon + w * init`` of uint8 images (same shape)."""
    mix = (1 - weight) * recon.astype(np.float64) + weight * init.astype(np.float64)
    return np.clip(np.rint(mix), 0, 255).astype(np.uint8)


def blend_name(name: str, weight: float) -> str:
    return f"{name}-blend{weight:g}"


def check_blend(weight: float, init: str | None, kind: str | None = None) -> None:
    if weight and not 0 < weight < 1:
        raise OptionError(f"blend: expected a weight in (0, 1); found {weight}")
    if weight and init is None:
        raise OptionError("blend: blends with the images of the init set; expected an init "
                          "set; found none")
    if weight and kind == "latents":
        raise OptionError("blend: expected an init set of images; found a set of latents "
                          "(blend with the blurry reconstruction set decoded from them instead)")


def write_blend_set(tx: Transaction, name: str, subject: str, weight: float, out: str,
                    init: np.ndarray | None) -> None:
    """Blend every sample of set ``name`` with its init image into the set ``out`` (same rows,
    choices and seeds; attributes say what was blended), in the open transaction ``tx``.

    Parameters
    ----------
    init : uint8 (n_rows, size, size, 3), the init image of each row
    """
    from nfrecon.recon_sets import create_group, read_reconstructions

    if init is None:
        raise OptionError("blend: expected the init set's images; found none")
    r = read_reconstructions(tx.root, name, subject)
    imgs = np.asarray(r["images"].compute())
    mixed = blend(imgs, init[:, None], weight)
    key = f"{RECON_GROUP}/{out}/{subject}"
    tx.discard(key)  # written at once: never resumed
    staged, _, _ = tx.stage(key, create=False)
    g = create_group(staged, r["stimulus"], imgs.shape[1], imgs.shape[2])
    g["images"][:] = mixed
    g["chosen"][:] = r["chosen"]
    g["scores"][:] = r["scores"]
    g["seeds"][:] = nfstore.open_store(tx.root).group(
        f"{RECON_GROUP}/{name}/{subject}")["seeds"][:]
    g.attrs.update({**r["attrs"], "blend": weight, "blended_from": name,
                    "source": f"pixel blend (MindEye2): {1 - weight:g} x {name} + {weight:g} x "
                              f"{r['attrs'].get('init')}"})
    tx.commit(key)
