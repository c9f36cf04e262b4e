"""The ridge start (``ridge_init``): the untrained decoder is the closed-form ridge decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

import nfstore
from nftrain.data import load_dataset, with_adapters
from nftrain.model import Decoder, ModelSpec
from nftrain.ridge_init import averaged_train, ridge_initialise


def _model(data, cfg) -> Decoder:  # noqa: ANN001
    return Decoder(ModelSpec(tuple(cfg.subjects), tuple(s.n_voxels for s in data.subjects),
                             cfg.adapter_dim, cfg.width, cfg.depth, cfg.dropout,
                             data.embeddings.shape[1], skip=True)).eval()


def test_untrained_model_equals_scikit_learn_ridge(train_store: Path, small_cfg) -> None:
    cfg = small_cfg(adapter_dim=256)  # >= the rank of the train targets: no truncation
    data = load_dataset(nfstore.open_store(train_store), cfg)
    model = _model(data, cfg)
    info = ridge_initialise(model, data, cfg)
    rows = np.unique(np.concatenate([s.train[0].targets for s in data.subjects]))
    Y = data.embeddings[rows].astype(np.float64)
    sv = np.linalg.svd(Y - Y.mean(0), compute_uv=False)  # float32 targets: rank at 1e-6
    assert info["axes"] == (sv > 1e-6 * sv[0]).sum() < cfg.adapter_dim
    for sub in data.subjects:
        X, t = averaged_train(sub, len(data.embeddings))
        want = Ridge(alpha=info["alpha"][sub.key]).fit(X, data.embeddings[t]).predict(X)
        with torch.no_grad():
            got = model.embed_subject(sub.index, torch.from_numpy(X).float()).double().numpy()
        scale = np.abs(want - want.mean(0)).max()
        np.testing.assert_allclose(got, want, atol=2e-3 * scale, rtol=0)
        assert info["alpha"][sub.key] in np.logspace(0, 6, 13)


def test_new_subject_starts_at_its_ridge_projected_into_the_model_space(
        train_store: Path, small_cfg) -> None:
    cfg = small_cfg(subjects=["nsd/subj01", "nsd/subj02"])  # adapter_dim 32: a truncated space
    data = load_dataset(nfstore.open_store(train_store), cfg)
    model = _model(data, cfg)
    ridge_initialise(model, data, cfg)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    new_cfg = small_cfg(subjects=["god/sub-01"])
    new = load_dataset(nfstore.open_store(train_store), new_cfg)
    (index,) = model.add_subjects(["god/sub-01"], [new.subjects[0].n_voxels])
    new = with_adapters(new, [index])
    info = ridge_initialise(model, new, new_cfg, fresh=False)
    assert all(torch.equal(base[k], v) for k, v in model.state_dict().items() if k in base)
    X, t = averaged_train(new.subjects[0], len(new.embeddings))
    W = model.skip.weight.detach().double().numpy()
    b = model.skip.bias.detach().double().numpy()
    full = Ridge(alpha=info["alpha"]["god/sub-01"]).fit(X, new.embeddings[t]).predict(X)
    want = b + (full - b) @ (W @ np.linalg.pinv(W)).T  # the ridge, seen through the skip
    with torch.no_grad():
        got = model.embed_subject(index, torch.from_numpy(X).float()).double().numpy()
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want - want.mean(0)).max(), rtol=0)


def test_a_checkpoint_without_the_skip_path_is_refused(train_store: Path, small_cfg) -> None:
    from nfstore.errors import OptionError
    from nftrain.train import train

    old = train(train_store, small_cfg(subjects=["nsd/subj01"], epochs=1, ridge_init=False))
    with pytest.raises(OptionError, match="^ridge_init: the checkpoint .* has no linear skip"):
        train(train_store, small_cfg(subjects=["god/sub-01"], output_dir=str(
            old.output_dir.parent / "ft")), init=old.output_dir / "best")


def test_nf_train_prints_validation_top1_per_epoch_from_the_start(train_store: Path,
                                                                   tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner
    from nf.main import _register, cli

    _register()
    res = CliRunner().invoke(cli, [
        "train", str(train_store), "--set", 'subjects=["nsd/subj01"]', "epochs=2",
        "adapter_dim=32", "width=32", "batch_size=16", f"output_dir={json.dumps(str(tmp_path))}"])
    assert res.exit_code == 0, res.output
    import re

    lines = re.findall(r"epoch \d+(?: \(start\))?: val_loss [0-9.]+, val_top1 [0-9.]+",
                       res.output)
    assert [ln.split(":")[0] for ln in lines] == ["epoch 0 (start)", "epoch 1", "epoch 2"]
    hist = json.loads((tmp_path / "last" / "config.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert f"val_top1 {hist[1]['val_top1']:.3f}" in lines[1]
