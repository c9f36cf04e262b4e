"""A small store with decoded and reconstruction sets, and the tiny models, for nf serve."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def served(train_store_ro: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from nfrecon.decode import decode_ridge
    from nfrecon.reconstruct import ReconConfig, reconstruct
    from nfrecon.tiny import write_tiny_models
    from nfstore.lowlevel import embed_pixels
    from nftrain.config import build
    from nftrain.train import train

    base = tmp_path_factory.mktemp("served")
    store = Path(shutil.copytree(train_store_ro, base / "nf.zarr"))
    models = write_tiny_models(base / "models")
    decode_ridge(store, "nsd/subj01", "ridge")
    embed_pixels(store, size=16)
    decode_ridge(store, "nsd/subj01", "blurry", embedding="pixels", rescale=True, image_size=32)
    cfg = ReconConfig(steps=2, size=32, batch=4)
    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "recon", cfg)
    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "recon-i2i", cfg,
                init="blurry")
    ckpt = train(store, build(dict(subjects=["nsd/subj01"], adapter_dim=32, width=32, depth=1,
                                   batch_size=16, epochs=1, output_dir=str(base / "run"))))
    return {"store": store, "checkpoint": ckpt.output_dir / "best", **models}
