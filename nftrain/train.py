"""``nf train`` / ``nf finetune``: the training loop, top to bottom.

:func:`train` reads as the loop it runs: :func:`_setup` (config -> store data -> model ->
AdamW + schedule, or the state of ``last/`` when resuming), then epochs of
(:func:`_train_epoch`, :func:`_validate_and_keep`) with early stopping: ``best/`` on validation
loss or top-1 (``select``), ``last/`` for resuming. With ``ridge_init`` the model starts as the
closed-form ridge decoder and that start is validated as epoch 0 (:mod:`nftrain.ridge_init`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import nfstore
from nfstore import __version__
from nfstore.errors import OptionError, StoreError
from nftrain import checkpoint
from nftrain import fingerprint as fp
from nftrain.config import TrainConfig
from nftrain.data import Batch, Dataset, batches, load_dataset, prefetch, with_adapters
from nftrain.errors import TrainingError
from nftrain.losses import cosine_loss, info_nce
from nftrain.model import Decoder, ModelSpec
from nftrain.ridge_init import ridge_initialise
from nftrain.steps import (
    _device,
    _distributed,
    _round_robin,
    _steps_per_epoch,
    augment_batch,
    check_finite,
    schedule,
    to_device,
)
from nftrain.validation import is_better, validate


@dataclass
class TrainSummary:
    output_dir: Path
    epochs_run: int = 0
    best_epoch: int = -1  # 1-based; 0: the ridge start (ridge_init); -1: none
    best_val_loss: float = float("inf")
    best_val_top1: float = float("nan")
    ridge: dict[str, Any] | None = None  # ridge_init: axes and alpha per subject
    samples: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    excluded: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""  # of the final weights (the same on every rank under torchrun)

    def line(self) -> str:
        rate = self.samples / self.seconds if self.seconds else 0.0
        head = (f"trained {self.epochs_run} epochs ({self.samples} samples, {rate:.0f} "
                f"samples/s, {self.seconds:.1f} s); ")
        if not checkpoint.is_complete(self.output_dir / "best"):
            return head + (f"no checkpoint written: the validation loss was never finite "
                           f"(last {self.output_dir / 'last'})")
        at = "the ridge start" if self.best_epoch == 0 else f"epoch {self.best_epoch}"
        return head + (f"best validation loss {self.best_val_loss:.4f}, top-1 "
                       f"{self.best_val_top1:.3f} at {at}; checkpoint {self.output_dir / 'best'}")

    def exclusion_line(self) -> str:
        e = self.excluded
        if e.get("keep_test_duplicates"):
            return "kept copies of held-out pictures in training (keep_test_duplicates = true)"
        return (f"left out {e.get('measured_trials', 0)} measured and "
                f"{e.get('synthetic_trials', 0)} synthetic train trials showing copies of "
                f"held-out pictures ({e.get('held_out_copies', 0)} stimuli; `nf leakage` lists "
                f"them), and {e.get('validation_synthetic_trials', 0)} synthetic trials of "
                f"validation pictures")


@dataclass
class _Run:
    """One training run: what every part of :func:`train` reads, and the progress it updates.

    ``state`` is what ``last/`` saves for resuming: epoch, step_in_epoch, global_step,
    best_val_loss, best_val_top1, best_epoch, bad_epochs and samples.
    """

    cfg: TrainConfig
    store: Any
    data: Dataset
    model: Decoder
    E: torch.Tensor  # (n_stimuli, D) target embeddings, on ``device``
    log_temperature: torch.nn.Parameter
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    shards: tuple[int, int, list[int]]  # (shards, batches per shard and step, steps per epoch)
    summary: TrainSummary
    base_meta: dict[str, Any]  # the fine-tuned checkpoint's metadata ({} for a new model)
    init: str | Path | None
    rank: int  # under torchrun; 0 of 1 otherwise
    world: int
    device: torch.device
    progress: bool  # a progress bar and a line per validation
    watch: fp.Watch | None = None
    net: torch.nn.Module | None = None  # the model, or its DDP wrapper under torchrun
    state: dict[str, Any] = field(default_factory=lambda: {
        "epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_val_loss": float("inf"),
        "best_val_top1": -1.0, "best_epoch": -1, "bad_epochs": 0, "samples": 0})

    @property
    def out(self) -> Path:
        return self.summary.output_dir

    def meta(self, **extra: Any) -> dict[str, Any]:
        """The checkpoint metadata: config, store and its fingerprint, history, and
        ``validation_stimuli`` (the sorted ids of the stimuli validated on)."""
        cfg, base = self.cfg, self.base_meta
        spec = self.model.spec
        return {"train_config": cfg.to_dict(), "store": str(self.store.location),
                "store_version": self.store.version,
                "store_fingerprint": {**base.get("store_fingerprint", {}),
                                      **self.data.fingerprint}, "nf_version": __version__,
                "n_voxels": dict(zip(spec.subjects, spec.n_voxels)),
                "rois": {k: cfg.roi_for(k) for k in cfg.subjects} | base.get("rois", {}),
                "embedding": cfg.embedding, "history": self.summary.history,
                "excluded_held_out_copies": self.data.excluded,
                "validation_stimuli": self.data.validation_stimuli(),
                "finetuned_from": str(self.init) if self.init else None, **extra}

    def unchanged(self, when: str) -> None:
        """Stop (every rank) if the data the run reads changed since it started."""
        box = [self.watch.changed() if self.watch is not None else ""]
        if self.world > 1:
            torch.distributed.broadcast_object_list(box, src=0)
        if box[0]:
            raise StoreError(f"{self.store.location}: changed while training ({box[0]}); "
                             f"stopped {when}; checkpoints in {self.out} hold only what was "
                             f"trained before; start a new run with another output_dir")

    def save(self, name: str, with_state: bool) -> None:
        """Write ``output_dir/name`` (rank 0), with the optimizer state if ``with_state``."""
        self.unchanged(f"before saving {self.out / name}")
        if self.rank == 0:
            checkpoint.save(self.out / name, self.model, self.meta(progress=dict(self.state)),
                            {"log_temperature": self.log_temperature},
                            self.opt if with_state else None)
        if self.world > 1:
            torch.distributed.barrier()


def _finetune_start(store: Any, data: Dataset, cfg: TrainConfig, init: str | Path,
                    embed_dim: int) -> tuple[Decoder, dict[str, Any], Any, Dataset]:
    """The checkpoint ``init`` frozen, with new trainable adapters for ``cfg.subjects``:
    (model, its metadata, its log temperature or None, ``data`` keyed by the new adapters)."""
    model, base_meta, extra = checkpoint.load(init)
    if model.spec.embed_dim != embed_dim:
        raise OptionError(f"init: {init}'s head gives {model.spec.embed_dim}-d outputs; "
                          f"{cfg.embedding} embeddings are {embed_dim}-d")
    old = [k for k in cfg.subjects if k in model.spec.subjects]
    if old:
        raise OptionError(f"subjects: {old} already have adapters in {init}")
    for p in model.parameters():
        p.requires_grad_(False)
    new = model.add_subjects(list(cfg.subjects), [s.n_voxels for s in data.subjects])
    for i in new:
        model.adapters[i].requires_grad_(True)
    fp.check_checkpoint(store, base_meta, [], init, fix="embed the store with the weights "
                        "the checkpoint was trained on", param="init")
    return model, base_meta, extra.get("log_temperature"), with_adapters(data, new)


def _ridge_start(model: Decoder, data: Dataset, cfg: TrainConfig, init: str | Path | None,
                 rank: int) -> dict[str, Any] | None:
    """Set the model to the ridge decoder (``ridge_init``); its axes and alpha per subject.

    Under torchrun rank 0 alone reads the train betas for it: DDP hands its weights to the
    other ranks when it wraps the model.
    """
    if model.skip is None:
        raise OptionError(f"ridge_init: the checkpoint {init} has no linear skip path (it was "
                          f"trained without ridge_init); set ridge_init=false")
    return ridge_initialise(model, data, cfg, fresh=init is None) if rank == 0 else None


def _setup(location: str | Path, cfg: TrainConfig, resume: bool, init: str | Path | None,
           progress: bool) -> _Run:
    """Store data, model (new, or ``init`` with new adapters), optimizer and schedule; the
    state of ``last/`` when resuming."""
    rank, world, device = _distributed(_device(cfg))
    torch.manual_seed(cfg.seed)
    store = nfstore.open_store(location)
    data = load_dataset(store, cfg)
    E = torch.from_numpy(data.embeddings).to(device)
    base_meta: dict[str, Any] = {}
    log_t = None
    if init is not None:
        model, base_meta, log_t, data = _finetune_start(store, data, cfg, init, int(E.shape[1]))
    else:
        model = Decoder(ModelSpec(tuple(cfg.subjects), tuple(s.n_voxels for s in data.subjects),
                                  cfg.adapter_dim, cfg.width, cfg.depth, cfg.dropout,
                                  int(E.shape[1]), skip=cfg.ridge_init))
    ridge = _ridge_start(model, data, cfg, init, rank) if cfg.ridge_init and not resume else None
    model.to(device)
    log_temperature = torch.nn.Parameter(
        (log_t.reshape(()) if log_t is not None else torch.tensor(math.log(cfg.temperature))
         ).to(device), requires_grad=cfg.learn_temperature and init is None)
    params = [p for p in model.parameters() if p.requires_grad]
    params += [log_temperature] if log_temperature.requires_grad else []
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    shards = _steps_per_epoch(data, cfg, world)  # optimizer steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(cfg, sum(shards[2])))
    run = _Run(cfg, store, data, model, E, log_temperature, opt, sched, shards,
               TrainSummary(Path(cfg.output_dir), excluded=dict(data.excluded), ridge=ridge),
               base_meta, init, rank, world, device, progress)
    _recover_or_resume(run, resume)
    run.watch = fp.Watch(store, data.fingerprint, data.synthetic, cfg.embedding) if rank == 0 \
        else None
    run.net = model
    if world > 1:  # gradients averaged across ranks; a batch need not touch every adapter
        run.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
    return run


def _recover_or_resume(run: _Run, resume: bool) -> None:
    """Finish interrupted checkpoint swaps; with ``resume`` load ``last/`` (same config, same
    data), else refuse an ``output_dir`` that holds a run."""
    if run.rank == 0:
        checkpoint.recover(run.out / "last")
        checkpoint.recover(run.out / "best")
    if run.world > 1:
        torch.distributed.barrier()
    last = run.out / "last"
    if not resume:
        if last.exists():
            raise StoreError(f"output_dir: a run is already there ({run.out}); pass resume "
                             f"(`--resume`) to continue it, or choose another output_dir")
        return
    if not (last / "state.json").is_file():
        raise StoreError(f"resume: no resumable checkpoint in {last}")
    saved = json.loads((last / "config.json").read_text())
    if saved["train_config"] != run.cfg.to_dict():
        raise OptionError(f"resume: the config differs from the one in {last}")
    changed = fp.changes(saved.get("store_fingerprint") or {}, run.data.fingerprint)
    if changed:
        raise StoreError(f"resume: {last} was trained on other data than {run.store.location} "
                         f"holds now ({fp.describe(changed, run.cfg.embedding)}); start a new "
                         f"run with another output_dir")
    m, _, extra = checkpoint.load(last, str(run.device))
    run.model.load_state_dict(m.state_dict())
    if "log_temperature" in extra:
        run.log_temperature.data.copy_(extra["log_temperature"].reshape(()))
    run.state.update(checkpoint.restore_optimizer(last, run.opt))
    run.sched.last_epoch = run.state["global_step"]
    run.summary.history = saved.get("history", [])


def _validate_and_keep(run: _Run, epoch: int) -> None:
    """Validate (rank 0 decides), record, keep the best; ``epoch`` 0 is the ridge start."""
    val = validate(run.model, run.data, run.cfg, run.E, run.log_temperature.exp(),
                   run.device) if run.rank == 0 else {}
    if run.world > 1:  # rank 0 decides; everyone follows
        box = [val]
        torch.distributed.broadcast_object_list(box, src=0)
        val = box[0]
    run.summary.history.append({"epoch": epoch, **val})
    if is_better(val, run.state, run.cfg.select):
        run.state.update(best_val_loss=val["val_loss"], best_val_top1=val["val_top1"],
                         best_epoch=epoch, bad_epochs=0)
        run.save("best", False)
    elif epoch > 0:
        run.state["bad_epochs"] += 1
    if run.progress and run.rank == 0:
        print(f"epoch {epoch}{' (start)' if epoch == 0 else ''}: val_loss "
              f"{val['val_loss']:.4f}, val_top1 {val['val_top1']:.3f}", flush=True)


def _loss(run: _Run, batch: Batch) -> torch.Tensor:
    """The batch's loss (InfoNCE, plus cosine regression with ``regression``), checked finite."""
    cfg, device = run.cfg, run.device
    groups = to_device(batch, device)
    rows = torch.from_numpy(batch.targets).to(device)
    stim = torch.from_numpy(run.data.groups[batch.targets]).to(device)  # picture identity
    groups, targets, stim = augment_batch(groups, run.E[rows], stim, cfg)
    amp = cfg.amp and device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        pred = run.net(groups, batch.size)
    loss = info_nce(pred, targets, stim, run.log_temperature.exp())
    if cfg.regression:  # cosine regression to the target beside the contrastive loss
        loss = loss + cfg.regression * cosine_loss(pred, targets)
    step = run.state["global_step"] + 1
    try:
        check_finite(step, loss, pred, groups, run.model.spec.subjects)
    except TrainingError:  # a store rewritten underneath reads as missing chunks
        if run.world == 1:  # under torchrun the other ranks are not here to agree
            run.unchanged(f"at step {step}")
        raise
    return loss


def _train_epoch(run: _Run, epoch: int, on_step: Callable[[int], None] | None) -> None:
    """One epoch's optimizer steps (from ``step_in_epoch`` when resuming mid-epoch), with
    ``accumulate`` batches per step and ``last/`` every ``checkpoint_every`` steps."""
    from tqdm.auto import tqdm

    cfg, state = run.cfg, run.state
    n_shards, per_shard, steps = run.shards
    bar = tqdm(total=steps[epoch], initial=state["step_in_epoch"], unit="batch",
               desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not run.progress)
    skip = state["step_in_epoch"] * per_shard
    mine = [run.rank] if run.world > 1 else list(range(n_shards))  # shards this process reads
    streams = [batches(run.data, cfg, epoch, skip=skip, shard=(r, n_shards)) for r in mine]
    micro = 0  # batches of this rank since the last optimizer step
    for batch in prefetch(_round_robin(streams)):
        if state["step_in_epoch"] >= steps[epoch]:
            break  # every rank takes the same number of steps
        loss = _loss(run, batch)
        if micro == 0:
            run.opt.zero_grad(set_to_none=True)
        (loss / cfg.accumulate).backward()
        micro += 1
        state["samples"] += batch.size
        if micro < cfg.accumulate:
            continue
        micro = 0
        run.opt.step()
        run.sched.step()
        state["step_in_epoch"] += 1
        state["global_step"] += 1
        bar.update(1)
        bar.set_postfix_str(f"loss {float(loss.detach()):.3f}")
        if cfg.checkpoint_every and state["global_step"] % cfg.checkpoint_every == 0:
            run.save("last", True)
        if on_step is not None:
            on_step(state["global_step"])
    bar.close()


def train(location: str | Path, cfg: TrainConfig, *, resume: bool = False,
          init: str | Path | None = None, progress: bool = False,
          on_step: Callable[[int], None] | None = None) -> TrainSummary:
    """Train a decoder (or, with ``init``, fine-tune new subjects' adapters of a checkpoint).

    Parameters
    ----------
    location : store
    cfg : TrainConfig
    resume : continue from ``output_dir/last`` (same config), to the same result as an
        uninterrupted run with the same seed
    init : checkpoint folder to fine-tune: its backbone and head stay frozen, adapters are
        added for ``cfg.subjects`` it does not have, and only those train
    progress : show a progress bar and a line per validation
    on_step : called with the global step after each optimizer step
    """
    t0 = time.perf_counter()
    run = _setup(location, cfg, resume, init, progress)
    if cfg.ridge_init and not resume:  # the ridge start is a candidate for the best epoch
        _validate_and_keep(run, 0)
    run.model.train()
    for epoch in range(run.state["epoch"], cfg.epochs):
        run.unchanged(f"before epoch {epoch + 1}")
        _train_epoch(run, epoch, on_step)
        run.state.update(epoch=epoch + 1, step_in_epoch=0)
        _validate_and_keep(run, epoch + 1)
        run.save("last", True)
        if cfg.patience and run.state["bad_epochs"] >= cfg.patience:
            break
    s, state = run.summary, run.state
    s.weights_sha256 = checkpoint.digest(run.model)
    s.epochs_run, s.best_epoch, s.samples = state["epoch"], state["best_epoch"], state["samples"]
    s.best_val_loss, s.best_val_top1 = state["best_val_loss"], state["best_val_top1"]
    s.seconds = time.perf_counter() - t0
    return s


__all__ = ["train", "TrainSummary", "TrainingError", "validate"]
