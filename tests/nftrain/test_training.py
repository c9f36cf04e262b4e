"""Training: test split never used, exact resume after kill -9, fine-tuning, evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file

import nfstore
from nfstore.decoding import retrieval
from nftrain import checkpoint
from nftrain.evaluate import evaluate
from nftrain.train import train

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("options", [dict(select="top1", patience=1, epochs=3),
                                     dict(select="loss", ridge_init=False, regression=0.0)])
def test_test_split_is_never_used(train_store: Path, small_cfg, options: dict) -> None:
    """Test and imagery rows are NaN: the ridge start, validation top-1, model selection and
    early stopping would all turn non-finite (or fail) if any of them read one."""
    store = nfstore.open_store(train_store)
    for key in store.subjects():
        ds = store.dataset(key)
        rows = np.flatnonzero(ds.split.values != "train")  # test and imagery
        arr = zarr.open_array(str(train_store / key / "betas"), mode="r+")
        arr[rows, :] = np.full((rows.size, arr.shape[1]), np.nan, np.float32)
    summary = train(train_store, small_cfg(**{"epochs": 2, "synthetic": ["*"], **options}))
    assert np.isfinite(summary.best_val_loss) and np.isfinite(summary.best_val_top1)
    assert all(np.isfinite(h["val_loss"]) for h in summary.history)
    model, meta, _ = checkpoint.load(summary.output_dir / "best")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert meta["train_config"]["subjects"] == ["nsd/subj01", "nsd/subj02", "god/sub-01"]
    assert meta["n_voxels"]["god/sub-01"] == store.dataset("god/sub-01").sizes["voxel"]
    assert set(meta["store_fingerprint"]) >= {"nsd/subj01", "embeddings"}


def test_the_checkpoint_records_the_validation_stimuli(train_store: Path, small_cfg) -> None:
    """``validation_stimuli``: sorted ids, the same as the loader's, none of them trained on."""
    from nftrain.data import load_dataset

    cfg = small_cfg(epochs=1)
    summary = train(train_store, cfg)
    data = load_dataset(nfstore.open_store(train_store), cfg)
    trained = {str(s) for sub in data.subjects for src in sub.train
               for s in data.stimuli[src.targets]}
    for name in ("best", "last"):
        val = checkpoint.load(summary.output_dir / name)[1]["validation_stimuli"]
        assert val and val == sorted(val) == data.validation_stimuli()
        assert not set(val) & trained


RUN = textwrap.dedent("""
    import os, signal, sys, json
    from nftrain.config import build
    from nftrain.train import train

    cfg = build(json.loads(sys.argv[2]))
    kill_at, resume = int(sys.argv[3]), sys.argv[4] == "resume"
    def on_step(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    summary = train(sys.argv[1], cfg, resume=resume, on_step=on_step if kill_at else None)
    print(json.dumps([h["val_loss"] for h in summary.history]))
""")


def _run(store: Path, cfg, kill_at: int = 0, resume: bool = False
         ) -> subprocess.CompletedProcess:
    """Each phase in a fresh process: float rounding of CPU kernels can depend on a process's
    history (allocations), and a real resume also starts a new process."""
    return subprocess.run([sys.executable, "-c", RUN, str(store), json.dumps(cfg.to_dict()),
                           str(kill_at), "resume" if resume else "fresh"], cwd=ROOT,
                          capture_output=True, text=True)


def test_kill_9_mid_epoch_then_resume_gives_the_same_model(train_store: Path, small_cfg,
                                                           tmp_path: Path) -> None:
    kw = dict(epochs=3, checkpoint_every=2, input_noise=0.1, mixup=0.3, dropout=0.2)
    ref_cfg = small_cfg(**kw, output_dir=str(tmp_path / "ref"))
    ref = _run(train_store, ref_cfg)
    assert ref.returncode == 0, ref.stderr[-2000:]
    ref_history = json.loads(ref.stdout.strip().splitlines()[-1])
    cfg = small_cfg(**kw, output_dir=str(tmp_path / "killed"))
    ref_state = json.loads((tmp_path / "ref/last/state.json").read_text())
    steps_per_epoch = ref_state["global_step"] // 3
    kill_at = steps_per_epoch + 3  # mid second epoch, one step after a saved checkpoint
    proc = _run(train_store, cfg, kill_at=kill_at)
    assert proc.returncode == -9, proc.stderr
    state = json.loads((tmp_path / "killed/last/state.json").read_text())
    assert state["epoch"] == 1 and state["step_in_epoch"] > 0
    with pytest.raises(nfstore.StoreError,
                       match="^output_dir: a run is already there .*; pass resume"):
        train(train_store, cfg)
    resumed = _run(train_store, cfg, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(tmp_path / "ref/last/model.safetensors"))
    b = load_file(str(tmp_path / "killed/last/model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == pytest.approx(
        ref_history, rel=1e-5)


def test_finetune_trains_only_new_adapters(train_store: Path, small_cfg, tmp_path: Path) -> None:
    from nftrain.finetune import finetune_config

    base = train(train_store, small_cfg(subjects=["nsd/subj01", "nsd/subj02"], epochs=2))
    ckpt = base.output_dir / "best"
    cfg = finetune_config(ckpt, ["god/sub-01"], 0.25, overrides=["epochs=3", "lr=0.01"])
    assert cfg.train_fraction == 0.25 and cfg.output_dir.endswith("finetune-god_sub-01")
    tuned = train(train_store, cfg, init=ckpt)
    assert tuned.samples > 0
    before = load_file(str(ckpt / "model.safetensors"))
    after = load_file(str(Path(cfg.output_dir) / "best/model.safetensors"))
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=0)  # frozen, bit for bit
    new = [k for k in after if k not in before]
    assert sorted(new) == ["model.adapters.2.bias", "model.adapters.2.weight"]
    model, meta, _ = checkpoint.load(Path(cfg.output_dir) / "best")
    assert model.spec.subjects == ("nsd/subj01", "nsd/subj02", "god/sub-01")
    m = evaluate(train_store, Path(cfg.output_dir) / "best", subjects=["god/sub-01"])
    assert list(m["subjects"]) == ["god/sub-01"]


def test_retrieval_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    t = rng.standard_normal((30, 8))
    p = t + rng.standard_normal((30, 8)) * 1.5
    m = retrieval(p, t)
    cos = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in t] for a in p])
    top1 = np.mean([np.argmax(cos[i]) == i for i in range(30)])
    top5 = np.mean([i in np.argsort(-cos[i])[:5] for i in range(30)])
    i2b = np.mean([np.argmax(cos[:, j]) == j for j in range(30)])
    assert m["top1_brain_to_image"] == pytest.approx(top1)
    assert m["top5_brain_to_image"] == pytest.approx(top5)
    assert m["top1_image_to_brain"] == pytest.approx(i2b)
    assert m["cosine"] == pytest.approx(np.diag(cos).mean())
    assert m["n_candidates"] == 30 and 0 < top1 < 1


def test_evaluate_layout_and_learning(train_store: Path, small_cfg) -> None:
    summary = train(train_store, small_cfg(epochs=8, subjects=["nsd/subj01", "god/sub-01"]))
    m = evaluate(train_store, summary.output_dir / "best", split="test")
    assert set(m) == {"split", "checkpoint", "subjects", "datasets", "overall"}
    sub = m["subjects"]["nsd/subj01"]
    assert set(sub) == {"top1_brain_to_image", "top5_brain_to_image", "top1_image_to_brain",
                        "top5_image_to_brain", "cosine", "n_candidates"}
    assert sub["n_candidates"] == 10  # the subject's unique test stimuli (repeat-averaged)
    assert m["datasets"]["nsd"]["n_subjects"] == 1


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One NSD subject, 240 trials, 20 test images, a clear planted signal (noise 0.5)."""
    from nfstore.embeddings import embed_store
    from nfstore.synth import synthesize
    from nfstore.tiny import write_tiny_encoder

    base = tmp_path_factory.mktemp("planted")
    synthesize("nsd", base / "nsd", subjects=(1,), sessions=4, trials_per_session=60,
               images_per_subject=100, shared=20, image_size=32, grid=(12, 14, 12), noise=0.5,
               seed=4)
    nfstore.ingest("nsd", base / "nsd", base / "nf.zarr")
    embed_store(base / "nf.zarr", "ip-adapter-sdxl", write_tiny_encoder(base / "enc")["hf"],
                workers=0, batch_size=128)
    return base / "nf.zarr"


def test_training_learns_clearly_above_chance(planted_store: Path, tmp_path: Path) -> None:
    """20 test candidates: chance is 0.05 (top-1) and 0.25 (top-5). Measured on this store:
    trained 0.25-0.35 / 0.60-0.65 over seeds 0-2; untrained 0.05-0.10 / 0.15-0.35."""
    from nftrain.config import build

    cfg = build(dict(subjects=["nsd/subj01"], adapter_dim=64, width=64, depth=1, batch_size=32,
                     epochs=30, lr=3e-3, input_noise=0.0, dropout=0.0, cache_mb=1, patience=0,
                     val_fraction=0.2, seed=0, output_dir=str(tmp_path / "run"),
                     ridge_init=False, regression=0.0, select="loss"))  # contrastive, from scratch
    m = evaluate(planted_store, train(planted_store, cfg).output_dir / "best")["overall"]
    assert m["chance_top1"] == pytest.approx(0.05)
    assert m["top1_brain_to_image"] >= 0.2  # 4x chance; untrained at most 0.10
    assert m["top5_brain_to_image"] >= 0.5  # 2x chance; untrained at most 0.35


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(nfstore.MissingFileError, match="expected model.safetensors, config.json"):
        checkpoint.load(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 64)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(nfstore.ReaderError, match="not a NeuroFusion checkpoint"):
        checkpoint.load(tmp_path)


DDP_RUN = textwrap.dedent("""
    import json, os, sys
    import nftrain.data as D
    from nftrain.config import build
    from nftrain.train import train

    reads, read = [], D.read_block

    def logged(sub, src, chunk):  # every train block this process reads from the store
        if any(src is s for s in sub.train):
            reads.append([sub.index, [i for i, s in enumerate(sub.train) if s is src][0],
                          int(chunk)])
        return read(sub, src, chunk)

    D.read_block = logged
    summary = train(sys.argv[1], build(json.loads(sys.argv[2])))
    rank = os.environ.get("RANK", "0")
    with open(os.path.join(sys.argv[3], f"digest-{rank}.txt"), "w") as f:
        f.write(summary.weights_sha256)
    with open(os.path.join(sys.argv[3], f"reads-{rank}.json"), "w") as f:
        json.dump(reads, f)
""")


def test_torchrun_two_ranks_equal_one_process_with_the_same_global_batches(
        train_store_ro: Path, small_cfg, tmp_path: Path) -> None:
    """DDP with 2 gloo ranks, each reading only its shard of every epoch's blocks (gradients
    averaged), against one process reading both shards in turn and stepping on the mean
    gradient of the same two batches (shards=2, accumulate=2). Without gradient
    synchronisation the ranks' weights differ and this fails; with every rank reading every
    block the read count check fails."""
    import shutil
    from collections import Counter

    from nftrain.data import load_dataset, shard_blocks
    from nftrain.train import _steps_per_epoch

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_RUN)
    common = dict(epochs=2, batch_size=16, input_noise=0.0, dropout=0.0, lr=3e-3,
                  ridge_init=False)
    ddp = small_cfg(output_dir=str(tmp_path / "ddp"), **common)
    proc = subprocess.run([torchrun, "--nproc_per_node=2", str(script), str(train_store_ro),
                           json.dumps(ddp.to_dict()), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "digest-0.txt").read_text() == (tmp_path / "digest-1.txt").read_text()
    one = small_cfg(output_dir=str(tmp_path / "one"), accumulate=2, shards=2, **common)
    proc = subprocess.run([sys.executable, str(script), str(train_store_ro),
                           json.dumps(one.to_dict()), str(tmp_path / "one")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = load_dataset(nfstore.open_store(train_store_ro), ddp)
    _, _, steps = _steps_per_epoch(data, ddp, 2)
    for run in ("ddp", "one"):
        assert json.loads((tmp_path / run / "last/state.json").read_text())["global_step"] == \
            sum(steps)
    # each rank read only blocks of its own shard, and no block twice in an epoch
    deal = [shard_blocks(data, ddp, e, 2) for e in range(2)]
    n_blocks = sum(len(b) for b in deal[0])
    reads = {r: [tuple(x) for x in json.loads((tmp_path / f"reads-{r}.json").read_text())]
             for r in (0, 1)}
    for r in (0, 1):
        allowed = Counter(tuple(b) for e in range(2) for b in deal[e][r])
        assert not Counter(reads[r]) - allowed, r  # nothing outside its shards
        assert len(reads[r]) >= 0.6 * sum(allowed.values())
    assert len(reads[0]) + len(reads[1]) <= 2 * n_blocks  # all ranks together: each block once
    a = load_file(str(tmp_path / "ddp/last/model.safetensors"))
    b = load_file(str(tmp_path / "one/last/model.safetensors"))
    assert a.keys() == b.keys()
    moved = 0.0
    for k in a:  # tolerance: all-reduce vs local summation order (float32), amplified by Adam
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)
        moved = max(moved, float((a[k] - b[k]).abs().max()))
    init = small_cfg(output_dir=str(tmp_path / "short"), **{**common, "epochs": 1})
    c = train(train_store_ro, init)
    c_w = load_file(str(c.output_dir / "last/model.safetensors"))
    far = max(float((a[k] - c_w[k]).abs().max()) for k in a)
    print(f"max |ddp - one| = {moved:.2e}; max |ddp - 1 epoch| = {far:.2e}")
    assert far > 100 * moved


def test_an_epoch_with_fewer_batches_than_ranks_is_an_error(train_store: Path,
                                                             small_cfg) -> None:
    from nfstore.errors import OptionError

    with pytest.raises(OptionError, match=r"batch_size: an epoch has \d+ batches, fewer than "
                                          r"1 rank\(s\) x accumulate 1000"):
        train(train_store, small_cfg(accumulate=1000))
    with pytest.raises(OptionError, match=r"batch_size: epoch 1 deals \d+ chunk-aligned blocks "
                                          r"to 64 ranks \(shards\); the smallest gets 0"):
        train(train_store, small_cfg(shards=64, accumulate=64))
    with pytest.raises(OptionError, match=r"accumulate: expected a multiple of shards \(2\)"):
        small_cfg(shards=2, accumulate=3)


def test_learnable_temperature_and_early_stopping(train_store: Path, small_cfg) -> None:
    s = train(train_store, small_cfg(epochs=2, learn_temperature=True, temperature=0.2,
                                     lr=0.01))
    _, _, extra = checkpoint.load(s.output_dir / "last")
    t = float(extra["log_temperature"].exp())
    assert t != pytest.approx(0.2, abs=1e-4)  # it was trained
    frozen = train(train_store, small_cfg(epochs=6, lr=1e-12, patience=2, input_noise=0.0,
                                          dropout=0.0, output_dir=str(s.output_dir) + "-es",
                                          ridge_init=False, select="loss"))
    assert frozen.epochs_run == 3 and frozen.best_epoch == 1  # no improvement after epoch 1
    start = train(train_store, small_cfg(epochs=6, lr=1e-12, patience=2, input_noise=0.0,
                                         dropout=0.0, output_dir=str(s.output_dir) + "-rs"))
    assert start.epochs_run == 2 and start.best_epoch == 0  # the ridge start stays the best
    assert "at the ridge start" in start.line()


def test_evaluate_with_the_ridge_baseline(planted_store: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner
    from nf.main import _register, cli

    from nfstore.decoding import fit_ridge
    from nftrain.config import build

    cfg = build(dict(subjects=["nsd/subj01"], adapter_dim=16, width=16, depth=1, batch_size=32,
                     epochs=1, cache_mb=1, output_dir=str(tmp_path / "run")))
    ckpt = train(planted_store, cfg).output_dir / "best"
    m = evaluate(planted_store, ckpt, baseline="ridge")
    st = nfstore.open_store(planted_store)
    tr = st.betas("nsd/subj01", split="train", average_repeats=True)
    te = st.betas("nsd/subj01", split="test", average_repeats=True)
    fit = fit_ridge(tr.values, st.embeddings("ip-adapter-sdxl", stimuli=tr.stimulus).values)
    want = retrieval(fit.predict(np.asarray(te.values, np.float32)),
                     st.embeddings("ip-adapter-sdxl", stimuli=te.stimulus).values)
    assert m["baseline"]["subjects"]["nsd/subj01"] == pytest.approx(want)
    _register()
    res = CliRunner().invoke(cli, ["evaluate", str(planted_store), "--checkpoint", str(ckpt),
                                   "--baseline", "ridge"])
    assert res.exit_code == 0 and "ridge baseline overall" in res.output, res.output


def test_recommended_default_is_not_below_ridge(planted_store: Path, tmp_path: Path) -> None:
    """The defaults (no --config) against `nf decode-ridge`'s ridge on the same 20 test
    candidates (chance 0.05). Measured on this store: top-1 0.45 / 0.30 / 0.40 over seeds 0-2
    against ridge 0.20; top-5 0.80-0.90 against 0.65."""
    from nftrain.config import build

    cfg = build(dict(subjects=["nsd/subj01"], seed=0, output_dir=str(tmp_path / "run")))
    m = evaluate(planted_store, train(planted_store, cfg).output_dir / "best", baseline="ridge")
    ours, ridge = m["overall"], m["baseline"]["overall"]
    assert ridge["top1_brain_to_image"] >= 0.15  # the baseline itself is well above chance
    assert ours["top1_brain_to_image"] >= ridge["top1_brain_to_image"] + 0.05  # one more hit
    assert ours["top5_brain_to_image"] >= ridge["top5_brain_to_image"]
