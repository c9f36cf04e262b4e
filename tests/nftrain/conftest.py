"""A small store for trainer tests: 2 NSD + 1 GOD subjects, embeddings, one synthetic set."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nftrain.config import build

SUBJECTS = ["nsd/subj01", "nsd/subj02", "god/sub-01"]


@pytest.fixture
def train_store(train_store_ro: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(train_store_ro, tmp_path / "nf.zarr"))


@pytest.fixture
def small_cfg(tmp_path: Path):
    def make(**kw: object):
        values = dict(subjects=SUBJECTS, adapter_dim=32, width=32, depth=1, batch_size=16,
                      epochs=2, lr=1e-3, output_dir=str(tmp_path / "run"), cache_mb=1,
                      patience=0, val_fraction=0.2)
        values.update(kw)
        return build(values)
    return make
