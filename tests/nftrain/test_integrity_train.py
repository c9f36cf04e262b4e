"""Training integrity: no non-finite value becomes a result, held-out copies stay out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

import nfstore
from nfstore.decoding import retrieval
from nftrain import checkpoint
from nftrain.config import build
from nftrain.data import load_dataset
from nftrain.evaluate import evaluate
from nftrain.train import TrainingError, train


def test_retrieval_refuses_nonfinite_and_counts_ties_against() -> None:
    rng = np.random.default_rng(0)
    target = rng.standard_normal((8, 5))
    pred = target + 0.01 * rng.standard_normal((8, 5))
    assert retrieval(pred, target)["top1_brain_to_image"] == 1.0
    bad = pred.copy()
    bad[3, 2] = np.nan
    with pytest.raises(nfstore.StoreError, match=r"1 of 8 predictions are non-finite.*\[3\]"):
        retrieval(bad, target)
    with pytest.raises(nfstore.StoreError, match="targets are non-finite or zero"):
        retrieval(pred, np.where(np.arange(8)[:, None] == 0, np.inf, target))
    same = np.ones((8, 5))  # every candidate ties: no right answer is ranked first
    m = retrieval(same, same)
    assert m["top1_brain_to_image"] == 0.0 and m["top1_image_to_brain"] == 0.0


def test_nonfinite_inputs_stop_training_with_step_and_subject(train_store: Path,
                                                              small_cfg) -> None:
    st = nfstore.open_store(train_store)
    rows = np.flatnonzero(st.dataset("nsd/subj02").split.values == "train")
    arr = zarr.open_array(str(train_store / "nsd/subj02/betas"), mode="r+")
    arr[rows, :] = np.nan
    with pytest.raises(TrainingError, match=r"^step \d+: non-finite inputs for subject "
                                            r"nsd/subj02 \(\d+ values"):
        train(train_store, small_cfg(epochs=1, ridge_init=False))
    with pytest.raises(TrainingError, match=r"^ridge_init: non-finite train betas for subject "
                                            r"nsd/subj02 \(\d+ values"):
        train(train_store, small_cfg(epochs=1))  # the ridge start reads them first


def test_summary_never_names_an_unwritten_checkpoint(train_store: Path, small_cfg) -> None:
    cfg = small_cfg(epochs=2)
    data = load_dataset(nfstore.open_store(train_store), cfg)
    for sub in data.subjects:  # validation rows unreadable: the validation loss is NaN
        arr = zarr.open_array(str(train_store / sub.key / "betas"), mode="r+")
        for r in sub.val[0].rows:
            arr[int(r), :] = np.nan
    summary = train(train_store, cfg)
    line = summary.line()
    assert "no checkpoint written" in line and "best" not in line.replace("best validation", "")
    assert not (summary.output_dir / "best").exists()
    assert checkpoint.is_complete(summary.output_dir / "last")


def test_evaluate_refuses_nonfinite_test_rows(train_store: Path, small_cfg) -> None:
    summary = train(train_store, small_cfg(epochs=1))
    st = nfstore.open_store(train_store)
    row = int(np.flatnonzero(st.dataset("god/sub-01").split.values == "test")[0])
    zarr.open_array(str(train_store / "god/sub-01/betas"), mode="r+")[row, 5] = np.nan
    with pytest.raises(nfstore.StoreError, match=r"god/sub-01: 1 test rows hold non-finite"):
        evaluate(train_store, summary.output_dir / "best")


def test_resume_recovers_an_interrupted_checkpoint_swap(train_store: Path, small_cfg) -> None:
    cfg = small_cfg(epochs=1)
    out = Path(cfg.output_dir)
    train(train_store, cfg)
    os.rename(out / "last", out / f".last.old-{os.getpid()}")  # killed between the renames
    (out / f".last.tmp-{os.getpid()}").mkdir()  # a half-written new one
    summary = train(train_store, build({**cfg.to_dict()}), resume=True)
    assert summary.epochs_run == 1  # the restored 'last' already finished epoch 1 of 1
    assert checkpoint.is_complete(out / "last")
    assert not list(out.glob(".last.*"))


def _world_cfg(tmp_path: Path, **kw: object):
    values = dict(subjects=["bold5000/CSI1"], adapter_dim=16, width=16, depth=1, batch_size=16,
                  epochs=1, output_dir=str(tmp_path / "run"), cache_mb=1, patience=0)
    values.update(kw)
    return build(values)


def test_training_leaves_out_copies_of_held_out_pictures(world_ro: dict[str, Path],
                                                         tmp_path: Path) -> None:
    from nfstore.leakage import find_leakage

    st = nfstore.open_store(world_ro["store"])
    copies = find_leakage(st).excluded()
    ds = st.dataset("bold5000/CSI1")
    train_rows = ds.split.values == "train"
    leaking = int(np.isin(ds.stimulus.values[train_rows], list(copies)).sum())
    assert leaking > 0  # NSD test pictures that BOLD5000 trains on (planted)
    # the run trains on BOLD5000 only; the NSD test split still counts, store-wide
    data = load_dataset(st, _world_cfg(tmp_path))
    used = {s for sub in data.subjects for src in sub.train + sub.val
            for s in data.stimuli[src.targets]}
    assert not used & copies
    assert data.excluded["measured_trials"] == leaking
    kept = load_dataset(st, _world_cfg(tmp_path, keep_test_duplicates=True))
    assert kept.excluded["measured_trials"] == 0
    n = sum(src.rows.size for sub in kept.subjects for src in sub.train + sub.val)
    assert n == int(train_rows.sum())
    summary = train(world_ro["store"], _world_cfg(tmp_path))
    assert f"left out {leaking} measured" in summary.exclusion_line()
    _, meta, _ = checkpoint.load(summary.output_dir / "last")
    assert meta["excluded_held_out_copies"]["measured_trials"] == leaking


def test_copies_of_one_picture_share_a_loss_identity(world_ro: dict[str, Path],
                                                     tmp_path: Path) -> None:
    import pandas as pd

    st = nfstore.open_store(world_ro["store"])
    cfg = _world_cfg(tmp_path, subjects=["nsd/subj01", "bold5000/CSI1"])
    data = load_dataset(st, cfg)
    row = {s: i for i, s in enumerate(data.stimuli)}
    info = pd.read_csv(world_ro["base"] / "nsd/nsddata/experiments/nsd/"
                       "nsd_stim_info_merged.csv")
    pairs = [(f"nsd/{i:05d}", f"bold5000/COCO_train2014_{c:012d}")
             for i, c in zip(info.nsdId[info.BOLD5000], info.cocoId[info.BOLD5000])]
    both = [(a, b) for a, b in pairs if a in row and b in row]
    assert both  # train pictures both datasets showed
    for a, b in both:
        assert data.groups[row[a]] == data.groups[row[b]]
    assert np.unique(data.groups).size == data.stimuli.size - len(both)
    # validation is chosen by picture: no group is both trained and validated on
    train_g = {int(data.groups[t]) for sub in data.subjects for t in sub.train[0].targets}
    val_g = {int(data.groups[t]) for sub in data.subjects for t in sub.val[0].targets}
    assert val_g and not train_g & val_g
