"""Checkpoints: ``model.safetensors`` + ``config.json`` (and, for resuming, the optimizer and RNG
state as ``state.safetensors`` + ``state.json``). Loading never unpickles anything.

``config.json`` holds the metadata dict the trainer passes to :func:`save`, among them
``"validation_stimuli"`` (sorted stimulus ids the checkpoint validated on, never trained on;
:func:`validation_stimuli` reads them). :func:`decode_betas` is the one way betas become
embeddings through a checkpoint (``nf predict``, ``nf evaluate``, the server's upload jobs).

A checkpoint folder is written aside and renamed into place, so a kill, a full disk or a
read-only folder never leaves half of one as ``best/`` or ``last/``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from nfstore.errors import MissingFileError, OptionError, ReaderError, StoreError
from nfstore.transaction import replace_path
from nftrain.errors import os_errno
from nftrain.model import Decoder, ModelSpec

FILES = ("model.safetensors", "config.json")
VALIDATION_STIMULI = "validation_stimuli"


def save(folder: Path, model: Decoder, meta: dict[str, Any], extra: dict[str, Any] | None = None,
         optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write a checkpoint folder atomically; ``extra`` tensors/params (e.g. log temperature).

    A failed write (a full disk, ...) removes what it wrote aside and leaves the previous
    ``folder`` as it was; an OS error is raised as an :class:`OSError` naming ``folder``.
    """
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _write(tmp, model, meta, extra, optimizer)
        replace_path(tmp, folder)  # the previous folder is set aside as .<name>.old-<pid>
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        try:  # failed between the swap's two renames: the previous version goes back
            recover(folder)
        except OSError:
            pass
        code = os_errno(err)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(folder)) from err
    return folder


def _write(tmp: Path, model: Decoder, meta: dict[str, Any], extra: dict[str, Any] | None,
           optimizer: torch.optim.Optimizer | None) -> None:
    """The checkpoint's files, written into the folder ``tmp``."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for k, v in (extra or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().reshape(-1).contiguous()
    save_file(tensors, str(tmp / "model.safetensors"))
    spec = model.spec
    meta = {**meta, "model": {"subjects": list(spec.subjects), "n_voxels": list(spec.n_voxels),
                              "adapter_dim": spec.adapter_dim, "width": spec.width,
                              "depth": spec.depth, "dropout": spec.dropout,
                              "embed_dim": spec.embed_dim, "skip": spec.skip}}
    (tmp / "config.json").write_text(json.dumps(meta, indent=2, default=str))
    if optimizer is not None:
        state, scalars = _optimizer_state(optimizer)
        state["rng.torch"] = torch.get_rng_state()
        save_file(state, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**meta.get("progress", {}),
                                                    "optimizer": scalars}, indent=2))


def digest(model: torch.nn.Module) -> str:
    """sha256 of the model's parameters and buffers (names, shapes and bytes)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def subjects_to_use(model: Decoder, store: Any, subjects: list[str] | None,
                    ckpt: str | Path) -> list[str]:
    """``subjects`` (default: the checkpoint's subjects the store has); each needs an adapter."""
    keys = list(subjects) if subjects else [k for k in model.spec.subjects
                                            if k in store.subjects()]
    unknown = [k for k in keys if k not in model.spec.subjects]
    if unknown:
        raise OptionError(f"subjects: expected subjects with an adapter in {ckpt} "
                          f"({list(model.spec.subjects)}); found {unknown}, which have none")
    return keys


def is_complete(folder: Path) -> bool:
    """True if ``folder`` holds a whole checkpoint."""
    return all((Path(folder) / f).is_file() for f in FILES)


def recover(folder: Path) -> None:
    """Finish or undo a checkpoint swap that a kill interrupted.

    :func:`save` renames the previous folder to ``.<name>.old-<pid>`` and then the new one
    (``.<name>.tmp-<pid>``) into place; killed in between, ``folder`` is missing. The previous
    version is put back, and leftovers are removed. A folder written aside is never put in
    place: its files may be partly written (killed mid-write), and the previous version is
    always there to go back to.
    """
    folder = Path(folder)
    if not folder.parent.is_dir():
        return
    olds = sorted(folder.parent.glob(f".{folder.name}.old-*"))
    tmps = sorted(folder.parent.glob(f".{folder.name}.tmp-*"))
    if not is_complete(folder):
        for cand in olds:
            if is_complete(cand):
                if folder.exists():
                    shutil.rmtree(folder)
                os.rename(cand, folder)
                break
    for left in olds + tmps:
        if left.exists():
            shutil.rmtree(left, ignore_errors=True)


def _optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"opt.{pid}.{name}"] = value.detach().cpu().contiguous().reshape(
                    value.shape)
            else:
                scalars["state"].setdefault(str(pid), {})[name] = value
    return tensors, scalars


def restore_optimizer(folder: Path, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Load optimizer and RNG state saved by :func:`save`; returns ``state.json``."""
    meta = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "state.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, st in meta["optimizer"]["state"].items():
        state.setdefault(int(pid), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return meta


def load(checkpoint: str | Path, device: str = "cpu") -> tuple[Decoder, dict[str, Any],
                                                               dict[str, torch.Tensor]]:
    """Model, ``config.json`` and extra tensors of the checkpoint folder ``checkpoint``."""
    folder = Path(checkpoint)
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise MissingFileError(f"checkpoint: expected {', '.join(FILES)} in {folder}; missing "
                               f"{', '.join(missing)}")
    try:
        meta = json.loads((folder / "config.json").read_text())
        m = meta["model"]
        spec = ModelSpec(tuple(m["subjects"]), tuple(m["n_voxels"]), m["adapter_dim"],
                         m["width"], m["depth"], m["dropout"], m["embed_dim"],
                         bool(m.get("skip", False)))
        tensors = load_file(str(folder / "model.safetensors"))
        model = Decoder(spec)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except (KeyError, ValueError, RuntimeError, OSError) as err:
        raise ReaderError(f"checkpoint: expected a NeuroFusion checkpoint; found {folder}, "
                          f"not a NeuroFusion checkpoint ({type(err).__name__}: "
                          f"{' '.join(str(err).split())[:200]})") from None
    extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return model.to(device), meta, extra


def decode_betas(checkpoint: Decoder | str | Path, subject: str, betas: np.ndarray,
                 device: str = "cpu") -> np.ndarray:
    """Betas of ``subject`` through a checkpoint's adapter and decoder: the one decode path.

    Parameters
    ----------
    checkpoint : a model from :func:`load` (decoded on the device it is on), or a checkpoint
        folder (loaded on ``device``)
    subject : a subject key the checkpoint has an adapter for (``nsd/subj01``)
    betas : array of shape (n_rows, n_voxels), the checkpoint's voxels of ``subject``

    Returns
    -------
    embeddings : float32 array of shape (n_rows, embed_dim)
    """
    model = checkpoint if isinstance(checkpoint, Decoder) else load(checkpoint, device)[0]
    if subject not in model.spec.subjects:
        raise OptionError(f"subject: expected one of the checkpoint's subjects "
                          f"{list(model.spec.subjects)}; found {subject!r}")
    i = model.spec.subjects.index(subject)
    x = np.asarray(betas, np.float32)
    n_voxels = model.spec.n_voxels[i]
    if x.ndim != 2 or x.shape[1] != n_voxels:
        raise OptionError(f"betas: expected shape (n_rows, {n_voxels}) for {subject}; found "
                          f"{x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise StoreError(f"betas: expected finite values; found {int(bad.sum())} non-finite rows "
                         f"of {subject} (rows {np.flatnonzero(bad)[:5].tolist()})")
    model.eval()
    on = next(model.parameters()).device
    with torch.no_grad():
        return model.embed_subject(i, torch.from_numpy(x).to(on)).float().cpu().numpy()


def held_out_stimuli(data: Any) -> list[str]:
    """The validation stimulus ids (sorted) of a training :class:`nftrain.data.Dataset`: the
    pictures validated on and never trained on, saved as ``meta["validation_stimuli"]``."""
    return data.validation_stimuli()


def validation_stimuli(meta: dict[str, Any], store: Any = None) -> set[str]:
    """The stimuli a checkpoint validated on (never trained on), from its ``config.json``.

    Parameters
    ----------
    meta : the checkpoint's metadata (:func:`load`)
    store : the store it was trained on; needed only for checkpoints older than the
        ``validation_stimuli`` key, whose set is derived again from their train config
    """
    if VALIDATION_STIMULI in meta:
        return {str(s) for s in meta[VALIDATION_STIMULI]}
    if store is None or "train_config" not in meta:
        raise ReaderError(f"meta: expected {VALIDATION_STIMULI!r} or a train_config; found "
                          f"neither")
    from nftrain.config import build
    from nftrain.data import load_dataset

    return set(held_out_stimuli(load_dataset(store, build(dict(meta["train_config"])))))
