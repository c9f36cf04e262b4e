"""``nf train`` / ``nf finetune``: the training loop, top to bottom.

config -> store data -> model -> AdamW + schedule -> epochs of (train batches, validation) ->
best checkpoint on validation loss or top-1 (``select``), early stopping, ``last/`` for
resuming. With ``ridge_init`` the model starts as the closed-form ridge decoder and that start
is validated as epoch 0 (:mod:`nftrain.ridge_init`).
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
from nftrain.data import (
    Batch,
    Dataset,
    batches,
    load_dataset,
    prefetch,
    with_adapters,
)
from nftrain.errors import TrainingError
from nftrain.losses import cosine_loss, info_nce
from nftrain.model import Decoder, ModelSpec
from nftrain.ridge_init import ridge_initialise
from nftrain.steps import _distributed, _round_robin, _steps_per_epoch, schedule


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


def _device(cfg: TrainConfig) -> torch.device:
    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        raise OptionError(f"device: expected a torch device (cpu, cuda, cuda:N, mps, ...); "
                          f"found {cfg.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device: {cfg.device} asked for but CUDA is not available")
    return device


def to_device(batch: Batch, device: torch.device) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    return {s: (torch.from_numpy(p).to(device), torch.from_numpy(x).to(device))
            for s, (p, x) in batch.groups.items()}


def _augment(groups: dict[int, tuple[torch.Tensor, torch.Tensor]], targets: torch.Tensor,
             stim: torch.Tensor, cfg: TrainConfig) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Input noise, and mixup within a subject (mixed samples get mixed targets and a stimulus
    identity of their own, so they have no positives but themselves)."""
    out = {}
    for s, (pos, x) in groups.items():
        if cfg.input_noise:
            x = x + cfg.input_noise * torch.randn_like(x)
        if cfg.mixup and len(pos) > 1:
            mix = torch.rand(len(pos), device=x.device) < cfg.mixup
            if mix.any():
                perm = torch.randperm(len(pos), device=x.device)
                lam = torch.distributions.Beta(1.0, 1.0).sample((len(pos),)).to(x.device)
                lam = torch.where(mix, lam, torch.ones_like(lam))
                x = lam[:, None] * x + (1 - lam[:, None]) * x[perm]
                targets = targets.clone()
                targets[pos] = lam[:, None] * targets[pos] + (1 - lam[:, None]) * targets[
                    pos[perm]]
                stim = stim.clone()
                stim[pos[mix]] = -1 - pos[mix]
        out[s] = (pos, x)
    return out, targets, stim


def _check_finite(step: int, loss: torch.Tensor, pred: torch.Tensor,
                  groups: dict[int, tuple[torch.Tensor, torch.Tensor]], names: tuple[str, ...]
                  ) -> None:
    """Raise a one-line :class:`TrainingError` naming the step, the subject and what was
    non-finite (inputs, outputs or the loss) when the loss is not finite."""
    if bool(torch.isfinite(loss)):
        return
    for s, (pos, x) in groups.items():
        if not bool(torch.isfinite(x).all()):
            n = int((~torch.isfinite(x)).sum())
            raise TrainingError(f"step {step}: non-finite inputs for subject {names[s]} ({n} "
                                f"values in the batch's betas); run `nf validate`")
    for s, (pos, _) in groups.items():
        if not bool(torch.isfinite(pred[pos]).all()):
            raise TrainingError(f"step {step}: non-finite outputs of the model for subject "
                                f"{names[s]} (inputs were finite; lower lr or check amp)")
    raise TrainingError(f"step {step}: non-finite loss ({float(loss)}) with finite inputs and "
                        f"outputs (subjects {sorted(names[s] for s in groups)}); check "
                        f"temperature and the embeddings")


def _better(val: dict[str, float], state: dict[str, Any], select: str) -> bool:
    """Is this validation better than the best so far (``select``: loss, or top1 then loss)?"""
    if not math.isfinite(val["val_loss"]):
        return False
    if select == "top1":
        return (val["val_top1"], -val["val_loss"]) > (state["best_val_top1"],
                                                      -state["best_val_loss"])
    return val["val_loss"] < state["best_val_loss"]


@torch.no_grad()
def validate(model: Decoder, data: Dataset, cfg: TrainConfig, E: torch.Tensor,
             temperature: torch.Tensor | float, device: torch.device) -> dict[str, float]:
    """Mean InfoNCE over validation batches (fixed order) and batch-wise top-1 accuracy."""
    model.eval()
    losses, hits, n = [], 0, 0
    for batch in batches(data, cfg, 0, split="val"):
        groups = to_device(batch, device)
        rows = torch.from_numpy(batch.targets).to(device)
        stim = torch.from_numpy(data.groups[batch.targets]).to(device)  # picture identity
        pred = model(groups, batch.size)
        losses.append(float(info_nce(pred, E[rows], stim, temperature)) * batch.size)
        sim = torch.nn.functional.normalize(pred.float(), dim=-1) @ torch.nn.functional.normalize(
            E[rows], dim=-1).T
        hits += int((stim[sim.argmax(1)] == stim).sum())
        n += batch.size
    model.train()
    if n == 0:
        return {"val_loss": float("nan"), "val_top1": float("nan")}
    return {"val_loss": sum(losses) / n, "val_top1": hits / n}


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
    on_step : called with the global step after each optimizer step
    """
    t0 = time.perf_counter()
    rank, world, device = _distributed(_device(cfg))
    out = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed)
    store = nfstore.open_store(location)
    data = load_dataset(store, cfg)
    E = torch.from_numpy(data.embeddings).to(device)
    n_voxels = [s.n_voxels for s in data.subjects]
    base_meta: dict[str, Any] = {}
    if init is not None:
        model, base_meta, extra = checkpoint.load(init)
        if model.spec.embed_dim != E.shape[1]:
            raise OptionError(f"--checkpoint {init}: its head gives {model.spec.embed_dim}-d "
                              f"outputs; {cfg.embedding} embeddings are {E.shape[1]}-d")
        old = [k for k in cfg.subjects if k in model.spec.subjects]
        if old:
            raise OptionError(f"--subjects: {old} already have adapters in {init}")
        for p in model.parameters():
            p.requires_grad_(False)
        new = model.add_subjects(list(cfg.subjects), n_voxels)
        for i in new:
            model.adapters[i].requires_grad_(True)
        data = with_adapters(data, new)
        log_t = extra.get("log_temperature")
        fp.check_checkpoint(store, base_meta, [], init, fix="embed the store with the weights "
                            "the checkpoint was trained on")
    else:
        model = Decoder(ModelSpec(tuple(cfg.subjects), tuple(n_voxels), cfg.adapter_dim,
                                  cfg.width, cfg.depth, cfg.dropout, int(E.shape[1]),
                                  skip=cfg.ridge_init))
        log_t = None
    if cfg.ridge_init and not resume:
        if model.skip is None:
            raise OptionError(f"ridge_init: the checkpoint {init} has no linear skip path "
                              f"(it was trained without ridge_init); set ridge_init=false")
        # under torchrun rank 0 alone reads the train betas for it: DDP hands its weights to
        # the other ranks when it wraps the model
        summary_ridge = ridge_initialise(model, data, cfg, fresh=init is None) if rank == 0 \
            else None
    else:
        summary_ridge = None
    model.to(device)
    log_temperature = torch.nn.Parameter(
        (log_t.reshape(()) if log_t is not None else torch.tensor(math.log(cfg.temperature))
         ).to(device), requires_grad=cfg.learn_temperature and init is None)
    params = [p for p in model.parameters() if p.requires_grad]
    params += [log_temperature] if log_temperature.requires_grad else []
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_shards, per_shard, steps = _steps_per_epoch(data, cfg, world)  # optimizer steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(cfg, sum(steps)))
    progress_state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0,
                      "best_val_loss": float("inf"), "best_val_top1": -1.0, "best_epoch": -1,
                      "bad_epochs": 0,
                      "samples": 0}
    summary = TrainSummary(out, excluded=dict(data.excluded), ridge=summary_ridge)
    if rank == 0:
        checkpoint.recover(out / "last")
        checkpoint.recover(out / "best")
    if world > 1:
        torch.distributed.barrier()
    if resume:
        last = out / "last"
        if not (last / "state.json").is_file():
            raise StoreError(f"--resume: no resumable checkpoint in {last}")
        saved = json.loads((last / "config.json").read_text())
        if saved["train_config"] != cfg.to_dict():
            raise OptionError(f"--resume: the config differs from the one in {last}")
        changed = fp.changes(saved.get("store_fingerprint") or {}, data.fingerprint)
        if changed:
            raise StoreError(f"--resume: {last} was trained on other data than {store.location} "
                             f"holds now ({fp.describe(changed, cfg.embedding)}); start a new "
                             f"run with another output_dir")
        m, _, extra = checkpoint.load(last, str(device))
        model.load_state_dict(m.state_dict())
        if "log_temperature" in extra:
            log_temperature.data.copy_(extra["log_temperature"].reshape(()))
        progress_state.update(checkpoint.restore_optimizer(last, opt))
        sched.last_epoch = progress_state["global_step"]
        summary.history = saved.get("history", [])
    elif (out / "last").exists():
        raise StoreError(f"{out}: a run is already there; pass --resume to continue it or "
                         f"choose another output_dir")

    def meta(**extra: Any) -> dict[str, Any]:
        return {"train_config": cfg.to_dict(), "store": str(store.location),
                "store_version": store.version,
                "store_fingerprint": {**base_meta.get("store_fingerprint", {}),
                                      **data.fingerprint}, "nf_version": __version__,
                "n_voxels": dict(zip(model.spec.subjects, model.spec.n_voxels)),
                "rois": {k: cfg.roi_for(k) for k in cfg.subjects} | base_meta.get("rois", {}),
                "embedding": cfg.embedding, "history": summary.history,
                "excluded_held_out_copies": data.excluded,
                "finetuned_from": str(init) if init else None, **extra}

    watch = fp.Watch(store, data.fingerprint, data.synthetic, cfg.embedding) if rank == 0 \
        else None

    def unchanged(when: str) -> None:
        """Stop (every rank) if the data the run reads changed since it started."""
        box = [watch.changed() if watch is not None else ""]
        if world > 1:
            torch.distributed.broadcast_object_list(box, src=0)
        if box[0]:
            raise StoreError(f"{store.location}: changed while training ({box[0]}); stopped "
                             f"{when}; checkpoints in {out} hold only what was trained before; "
                             f"start a new run with another output_dir")

    def save(name: str, with_state: bool) -> None:
        unchanged(f"before saving {out / name}")
        if rank == 0:
            checkpoint.save(out / name, model, meta(progress=dict(progress_state)),
                            {"log_temperature": log_temperature}, opt if with_state else None)
        if world > 1:
            torch.distributed.barrier()

    net: torch.nn.Module = model
    if world > 1:  # gradients averaged across ranks; a batch need not touch every adapter
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)

    def after_validation(epoch: int) -> None:
        """Validate (rank 0 decides), record, keep the best; ``epoch`` 0 is the start."""
        val = validate(model, data, cfg, E, log_temperature.exp(), device) if rank == 0 else {}
        if world > 1:  # rank 0 decides; everyone follows
            box = [val]
            torch.distributed.broadcast_object_list(box, src=0)
            val = box[0]
        summary.history.append({"epoch": epoch, **val})
        if _better(val, progress_state, cfg.select):
            progress_state.update(best_val_loss=val["val_loss"], best_val_top1=val["val_top1"],
                                  best_epoch=epoch, bad_epochs=0)
            save("best", False)
        elif epoch > 0:
            progress_state["bad_epochs"] += 1
        if progress and rank == 0:
            print(f"epoch {epoch}{' (start)' if epoch == 0 else ''}: val_loss "
                  f"{val['val_loss']:.4f}, val_top1 {val['val_top1']:.3f}", flush=True)

    amp = cfg.amp and device.type == "cuda"
    from tqdm.auto import tqdm

    if cfg.ridge_init and not resume:  # the ridge start is a candidate for the best epoch
        after_validation(0)
    model.train()
    for epoch in range(progress_state["epoch"], cfg.epochs):
        unchanged(f"before epoch {epoch + 1}")
        bar = tqdm(total=steps[epoch], initial=progress_state["step_in_epoch"], unit="batch",
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress)
        done = progress_state["step_in_epoch"]
        micro = 0  # batches of this rank since the last optimizer step
        mine = [rank] if world > 1 else list(range(n_shards))  # shards this process reads
        streams = [batches(data, cfg, epoch, skip=done * per_shard, shard=(r, n_shards))
                   for r in mine]
        for batch in prefetch(_round_robin(streams)):
            if progress_state["step_in_epoch"] >= steps[epoch]:
                break  # every rank takes the same number of steps
            groups = to_device(batch, device)
            rows = torch.from_numpy(batch.targets).to(device)
            stim = torch.from_numpy(data.groups[batch.targets]).to(device)  # picture identity
            groups, targets, stim = _augment(groups, E[rows], stim, cfg)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                pred = net(groups, batch.size)
            loss = info_nce(pred, targets, stim, log_temperature.exp())
            if cfg.regression:  # cosine regression to the target beside the contrastive loss
                loss = loss + cfg.regression * cosine_loss(pred, targets)
            try:
                _check_finite(progress_state["global_step"] + 1, loss, pred, groups,
                              model.spec.subjects)
            except TrainingError:  # a store rewritten underneath reads as missing chunks
                if world == 1:  # under torchrun the other ranks are not here to agree
                    unchanged(f"at step {progress_state['global_step'] + 1}")
                raise
            if micro == 0:
                opt.zero_grad(set_to_none=True)
            (loss / cfg.accumulate).backward()
            micro += 1
            progress_state["samples"] += batch.size
            if micro < cfg.accumulate:
                continue
            micro = 0
            opt.step()
            sched.step()
            progress_state["step_in_epoch"] += 1
            progress_state["global_step"] += 1
            bar.update(1)
            bar.set_postfix_str(f"loss {float(loss.detach()):.3f}")
            if cfg.checkpoint_every and progress_state["global_step"] % cfg.checkpoint_every == 0:
                save("last", True)
            if on_step is not None:
                on_step(progress_state["global_step"])
        bar.close()
        progress_state.update(epoch=epoch + 1, step_in_epoch=0)
        after_validation(epoch + 1)
        save("last", True)
        if cfg.patience and progress_state["bad_epochs"] >= cfg.patience:
            break
    summary.weights_sha256 = checkpoint.digest(model)
    summary.epochs_run = progress_state["epoch"]
    summary.best_epoch = progress_state["best_epoch"]
    summary.best_val_loss = progress_state["best_val_loss"]
    summary.best_val_top1 = progress_state["best_val_top1"]
    summary.samples = progress_state["samples"]
    summary.seconds = time.perf_counter() - t0
    return summary


__all__ = ["train", "TrainSummary", "TrainingError", "validate"]
