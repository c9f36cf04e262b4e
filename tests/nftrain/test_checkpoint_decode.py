"""The one decode path (checkpoint.decode_betas) and the validation stimuli a checkpoint keeps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import nfstore
from nftrain import checkpoint
from nftrain.model import Decoder, ModelSpec


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Decoder, Path]:
    torch.manual_seed(0)
    model = Decoder(ModelSpec(("a/1", "b/2"), (30, 17), 16, 24, 2, 0.1, 8)).eval()
    folder = checkpoint.save(tmp_path / "best", model,
                             {"embedding": "e", checkpoint.VALIDATION_STIMULI: ["s2", "s1"]})
    return model, folder


def test_decode_betas_equals_the_adapter_and_decoder(saved: tuple[Decoder, Path]) -> None:
    model, folder = saved
    x = np.random.default_rng(0).standard_normal((5, 17)).astype(np.float32)
    with torch.no_grad():
        want = model.embed_subject(1, torch.from_numpy(x)).numpy()
    got = checkpoint.decode_betas(model, "b/2", x)
    assert got.dtype == np.float32 and got.shape == (5, 8)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(checkpoint.decode_betas(folder, "b/2", x), want, rtol=1e-6)


def test_decode_betas_errors_name_the_parameter(saved: tuple[Decoder, Path]) -> None:
    model, _ = saved
    with pytest.raises(nfstore.OptionError, match=r"^subject: expected one of"):
        checkpoint.decode_betas(model, "c/3", np.zeros((2, 17)))
    with pytest.raises(nfstore.OptionError, match=r"^betas: expected shape \(n_rows, 17\)"):
        checkpoint.decode_betas(model, "b/2", np.zeros((2, 30)))
    bad = np.zeros((3, 17))
    bad[1, 4] = np.nan
    with pytest.raises(nfstore.StoreError, match=r"^betas: expected finite values; found 1 "):
        checkpoint.decode_betas(model, "b/2", bad)


def test_checkpoints_carry_their_validation_stimuli(saved: tuple[Decoder, Path],
                                                    tmp_path: Path) -> None:
    _, folder = saved
    _, meta, _ = checkpoint.load(folder)
    assert meta[checkpoint.VALIDATION_STIMULI] == ["s2", "s1"]
    assert checkpoint.validation_stimuli(meta) == {"s1", "s2"}
    with pytest.raises(nfstore.ReaderError, match=r"^meta: expected 'validation_stimuli'"):
        checkpoint.validation_stimuli({"embedding": "e"})


def test_load_errors_name_the_parameter(saved: tuple[Decoder, Path], tmp_path: Path) -> None:
    with pytest.raises(nfstore.MissingFileError,
                       match=r"^checkpoint: expected model.safetensors, config.json in "):
        checkpoint.load(tmp_path / "none")
    _, folder = saved
    (folder / "config.json").write_text(json.dumps({"model": {}}))
    with pytest.raises(nfstore.ReaderError, match=r"^checkpoint: expected a NeuroFusion "):
        checkpoint.load(folder)
