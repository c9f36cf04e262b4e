"""``nf synth pool``: a folder of novel ImageNet-named images for augmentation (``nf embed
--pool``), planting the overlap real pools have: some GOD test images under their ImageNet
names, and some as renamed, re-encoded copies that only a content fingerprint can find."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nfstore.synth import _signal
from nfstore.synth.images import write_images


@dataclass(frozen=True)
class PoolSynthConfig:
    """A synthetic image pool.

    Attributes
    ----------
    n : int               novel images (ImageNet-style names, one folder per synset)
    image_size : int
    god : str             a GOD tree (``nf synth god``) whose test images the pool repeats;
                          empty for none
    god_copies : int      GOD test images copied under their ImageNet names (resized)
    god_renamed : int     GOD test images copied under other names (PNG, same pixels)
    seed : int
    """

    n: int = 60
    image_size: int = 32
    god: str = ""
    god_copies: int = 3
    god_renamed: int = 2
    seed: int = 0


def synth_pool(out: Path, cfg: PoolSynthConfig = PoolSynthConfig()) -> dict[str, float]:
    """Write the pool under ``out``; returns a summary."""
    from PIL import Image

    from nfstore.imagefile import open_rgb

    t0 = time.perf_counter()
    rng = np.random.default_rng([cfg.seed, 11])
    synsets = rng.choice(np.arange(9000000, 9999999), max(1, cfg.n // 5), replace=False)
    names = [f"n{synsets[i % synsets.size]:08d}/n{synsets[i % synsets.size]:08d}_{i + 1}.JPEG"
             for i in range(cfg.n)]
    write_images([out / n for n in names],
                 _signal.render_images(_signal.latents(cfg.n, rng), cfg.image_size, rng))
    copies = 0
    if cfg.god:
        test = sorted((Path(cfg.god) / "images" / "test").glob("*.JPEG"))
        for k, src in enumerate(test[:cfg.god_copies + cfg.god_renamed]):
            im = open_rgb(src)
            if k < cfg.god_copies:  # the same picture under its ImageNet name, resized
                dst = out / src.stem.split("_")[0] / f"{src.stem}.png"
                im = im.resize((cfg.image_size, cfg.image_size), Image.Resampling.BICUBIC)
            else:  # renamed: nothing but the pixels says what it is
                dst = out / "misc" / f"copy_{k}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            im.save(dst, format="PNG")
            copies += 1
    return {"subjects": 0, "images": cfg.n + copies, "trials": 0,
            "seconds": time.perf_counter() - t0}
