"""Decoding held-out trials into embeddings: ``nf predict`` (a trained checkpoint),
``nf decode-ridge`` (the closed-form single-subject baseline) and refinement (the paper's
§2.3: a subject-agnostic ridge from decoded to true embeddings).

The solvers are :mod:`nfstore.decoding`'s, a checkpoint decodes through
:func:`nftrain.checkpoint.decode_betas`, and every set is written in one store transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import nfstore
from nfrecon.decoded import check_name, write_decoded
from nfstore import Transaction, transaction
from nfstore.decoding import DEFAULT_ALPHAS, RidgeFit, fit_ridge, fit_ridge_loo
from nfstore.encoders import checksum
from nfstore.errors import OptionError, StoreError
from nfstore.names import RECON_GROUP, SPLITS

__all__ = ["predict", "decode_ridge", "refine", "fit_refinement", "DecodeSummary"]


@dataclass
class DecodeSummary:
    """What one decode command wrote (:meth:`line` is what it prints)."""

    name: str
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""

    def line(self) -> str:
        n = sum(self.rows.values())
        return (f"decoded {n} rows into /decoded/{self.name} ("
                + ", ".join(f"{k}: {v}" for k, v in self.rows.items())
                + f") in {self.seconds:.1f} s ({n / max(self.seconds, 1e-9):.0f} rows/s)"
                + (f"; {self.note}" if self.note else ""))


def _fingerprint(store: nfstore.Store, subjects: list[str]) -> dict[str, str]:
    return {k: str(store.attrs(k).get("ingest_fingerprint")) for k in subjects}


def _rows(store: nfstore.Store, key: str, split: str, roi: str | None, single: bool
          ) -> Any:
    if split not in SPLITS:
        raise OptionError(f"split: expected one of {list(SPLITS)}; found {split!r}")
    x = store.betas(key, roi=roi, split=split, average_repeats=not single)
    if x.sizes["trial"] == 0:
        raise StoreError(f"split: expected {split} trials of {key} to decode; found none")
    return x


def predict(location: str | Path, ckpt: str | Path, name: str, *,
            subjects: list[str] | None = None, split: str = "test", single_trials: bool = False,
            include_train: bool = False, device: str = "cpu",
            allow_store_change: bool = False) -> DecodeSummary:
    """Decode ``split`` rows of each subject with a checkpoint into ``/decoded/<name>``.

    A checkpoint trained on other data than the store holds now (a subject ingested again,
    the embedding cache made with other weights: its ``store_fingerprint``) is refused unless
    ``allow_store_change``; the set's attributes then list what changed.

    ``include_train`` also writes the train rows (repeat-averaged), flagged ``out_of_sample``
    where the checkpoint never trained on them (its ``validation_stimuli``; derived again from
    its train config for older checkpoints): the rows a refinement may be fitted on.
    """
    from nftrain import checkpoint
    from nftrain import fingerprint as fp

    t0 = time.perf_counter()
    check_name(name)
    model, meta, _ = checkpoint.load(ckpt, device)
    summary = DecodeSummary(name)
    with transaction(location, f"nf predict --name {name}") as tx:
        store = nfstore.open_store(tx.root)
        keys = checkpoint.subjects_to_use(model, store, subjects, ckpt)
        changed = fp.check_checkpoint(store, meta, keys, ckpt, allow_store_change)
        held_out = checkpoint.validation_stimuli(meta, store) if include_train else set()
        attrs = {"decoder": "checkpoint", "checkpoint": str(ckpt),
                 "checkpoint_sha256": checksum((Path(ckpt) / "model.safetensors",
                                                Path(ckpt) / "config.json")),
                 "embedding": meta["embedding"],
                 "split": split, "single_trials": single_trials,
                 "store_fingerprint": _fingerprint(store, keys),
                 "trained_store_fingerprint": meta.get("store_fingerprint"),
                 "store_changed_since_training": {k: list(v) for k, v in changed.items()}}
        for key in keys:
            parts = [(split, _rows(store, key, split, meta["rois"].get(key), single_trials))]
            if include_train and split != "train":
                parts.append(("train", _rows(store, key, "train", meta["rois"].get(key),
                                             False)))
            cols = _checkpoint_rows(model, key, parts, held_out)
            write_decoded(tx, name, key, *cols, attrs=attrs)
            summary.rows[key] = len(cols[1])
    summary.seconds = time.perf_counter() - t0
    return summary


def _checkpoint_rows(model: Any, key: str, parts: list[tuple[str, Any]], held_out: set[str]
                     ) -> tuple[np.ndarray, ...]:
    """The columns of a decoded set (embedding, stimulus, split, out_of_sample, n_repeats) of
    one subject's ``(split, betas)`` parts, decoded with the checkpoint's ``model``."""
    from nftrain.checkpoint import decode_betas

    cols: dict[str, list[np.ndarray]] = {c: [] for c in "espon"}
    for sp, x in parts:
        betas = np.asarray(x.values, np.float32)
        if not np.isfinite(betas).all():
            raise StoreError(f"{key}: {sp} rows hold non-finite betas; run `nf validate`")
        stim = x.stimulus.values.astype(object)
        cols["e"].append(decode_betas(model, key, betas))
        cols["s"].append(stim)
        cols["p"].append(np.full(stim.size, sp, dtype=object))
        cols["o"].append(np.array([sp != "train" or s in held_out for s in stim], dtype=bool))
        cols["n"].append(x["n_repeats"].values if "n_repeats" in x.coords
                         else np.ones(stim.size, np.int64))
    return tuple(np.concatenate(cols[c]) for c in "espon")


def decode_ridge(location: str | Path, subject: str, name: str, *,
                 alphas: tuple[float, ...] = DEFAULT_ALPHAS, cv: int = 5, split: str = "test",
                 embedding: str = "ip-adapter-sdxl", roi: str | None = None,
                 target_chunk: int = 256, rescale: bool = False, image_size: int = 128,
                 vae: str | Path | None = None) -> DecodeSummary:
    """Ridge from the subject's repeat-averaged **train** betas to the cached embeddings, with
    per-target CV alphas; writes ``split`` predictions and the out-of-fold train predictions
    (``out_of_sample``) to ``/decoded/<name>/<subject>``. Test rows are never read for fitting.

    ``embedding="pixels"`` (``nf embed --model pixels``) decodes a low-level image: the
    ``split`` predictions are also upsampled to ``image_size`` and stored as the reconstruction
    set ``name`` (the blurry stage). ``embedding="sdxl-vae"`` (raw SDXL-VAE latents) does the
    same through the VAE's decoder (``vae``: an SDXL folder; default: the folder the latents
    were cached with). ``rescale`` maps each target's predictions to the mean and std of the
    train targets (Brain-Diffuser's re-standardisation).
    """
    t0 = time.perf_counter()
    check_name(name)
    with transaction(location, f"nf decode-ridge --name {name}") as tx:
        store = nfstore.open_store(tx.root)
        train = _rows(store, subject, "train", roi, False)
        if train.sizes["trial"] <= cv:
            raise StoreError(f"cv: expected fewer folds than the {train.sizes['trial']} train "
                             f"stimuli of {subject}; found {cv}")
        X = np.asarray(train.values, np.float32)
        Y = np.asarray(store.embeddings(embedding, stimuli=train.stimulus).values, np.float32)
        fit = fit_ridge(X, Y, alphas, cv, target_chunk)
        held = _rows(store, subject, split, roi, False) if split != "train" else None
        emb = [fit.oof] + ([fit.predict(np.asarray(held.values, np.float32))]
                           if held is not None else [])
        if rescale:  # each target's predictions to the train targets' mean and std
            mu, sd = emb[0].mean(0), emb[0].std(0)
            emb = [(e - mu) / np.where(sd > 0, sd, 1) * Y.std(0) + Y.mean(0) for e in emb]
        parts = [train] + ([held] if held is not None else [])
        values, counts = np.unique(fit.alpha, return_counts=True)
        attrs = {"decoder": "ridge", "embedding": embedding, "split": split, "roi": roi,
                 "alphas": list(map(float, alphas)), "cv": cv,
                 "alpha_counts": {f"{v:g}": int(c) for v, c in zip(values, counts)},
                 "fitted_on": "repeat-averaged train betas (one row per train stimulus)",
                 "train_rows": "out-of-fold predictions", "rescaled": rescale,
                 "store_fingerprint": _fingerprint(store, [subject])}
        write_decoded(tx, name, subject, np.concatenate(emb),
                      np.concatenate([p.stimulus.values.astype(object) for p in parts]),
                      np.concatenate([np.full(p.sizes["trial"], s, dtype=object)
                                      for p, s in zip(parts, ["train", split])]),
                      np.ones(sum(p.sizes["trial"] for p in parts), bool),
                      np.concatenate([p["n_repeats"].values for p in parts]), attrs)
        if embedding in ("pixels", "sdxl-vae") and held is not None:
            _blurry(tx, store, name, subject, emb[-1], held.stimulus.values, split,
                    image_size, vae, attrs)
    return DecodeSummary(name, {subject: sum(p.sizes["trial"] for p in parts)},
                         time.perf_counter() - t0,
                         "alphas (targets): " + ", ".join(f"{v:g} ({c})" for v, c in
                                                         zip(values, counts)))


def _blurry(tx: Transaction, store: nfstore.Store, name: str, subject: str, pred: np.ndarray,
            stimuli: np.ndarray, split: str, image_size: int, vae: str | Path | None,
            attrs: dict[str, Any]) -> None:
    """Ridge-decoded pixels or SDXL-VAE latents (n, D) as images uint8 (n, image_size,
    image_size, 3), written as the reconstruction set ``name`` (one sample per row)."""
    from nfrecon.recon_sets import create_group

    embedding = attrs["embedding"]
    cache = store.embeddings(embedding).attrs
    if embedding == "pixels":
        from nfstore.lowlevel import upsample

        imgs = upsample(pred, int(cache["size"]), image_size)
        how = "blurry: ridge-decoded pixels, upsampled (bicubic)"
    else:
        from nfrecon.init_images import resize
        from nfstore.lowlevel import load_vae, vae_decode

        raw = pred.reshape(-1, *[int(v) for v in cache["latent_shape"]])
        imgs = resize(vae_decode(load_vae(vae or cache["weights"]["path"]), raw), image_size)
        how = "blurry: ridge-decoded SDXL-VAE latents (raw), VAE-decoded, resized"
    key = f"{RECON_GROUP}/{name}/{subject}"
    tx.discard(key)  # never resumed: written at once
    staged, _, _ = tx.stage(key, create=False)
    g = create_group(staged, stimuli, 1, image_size)
    g["images"][:] = imgs[:, None]
    g["chosen"][:] = 0
    g["scores"][:] = np.nan
    g["seeds"][:] = 0
    g.attrs.update({**attrs, "source": how, "decoded": name, "subject": subject,
                    "split": split, "image_size": image_size})
    tx.commit(key)


def fit_refinement(store: nfstore.Store, decoded: str,
                   alphas: tuple[float, ...] = DEFAULT_ALPHAS, cv: int = 5
                   ) -> tuple[RidgeFit, int]:
    """The subject-agnostic ridge decoded -> true embedding, on the **out-of-sample train**
    rows of every subject of the decoded set ``decoded`` (never in-sample rows, never test);
    one alpha for all targets by exact leave-one-out CV
    (:func:`nfstore.decoding.fit_ridge_loo`; ``cv`` only sets the minimum rows).

    Returns the fit and the number of rows it was fitted on.
    """
    X, Y = [], []
    for key in store.decoded_subjects(decoded):
        d = store.decoded(decoded, key)
        model = d.attrs.get("embedding", "ip-adapter-sdxl")
        rows = np.flatnonzero((d["split"].values == "train") & d["out_of_sample"].values)
        if rows.size:
            X.append(np.asarray(d.values[rows], np.float32))
            Y.append(np.asarray(store.embeddings(model, stimuli=d.stimulus.values[rows]).values,
                                np.float32))
    n = sum(len(x) for x in X)
    if n <= cv:
        raise StoreError(f"decoded: expected more than cv={cv} out-of-sample train rows in "
                         f"decoded set {decoded!r}; found {n} (write them with `nf predict "
                         f"--refine` or `nf decode-ridge`)")
    return fit_ridge_loo(np.concatenate(X), np.concatenate(Y), alphas), n


def refine(location: str | Path, decoded: str, name: str, *,
           alphas: tuple[float, ...] = DEFAULT_ALPHAS, cv: int = 5, rescale: bool = True
           ) -> DecodeSummary:
    """Apply the refinement fitted by :func:`fit_refinement` to every row of the decoded set
    ``decoded`` and write the result as decoded set ``name``; ``rescale`` sets each output's
    norm to the mean norm of the train embeddings the refinement was fitted on."""
    t0 = time.perf_counter()
    check_name(name)
    with transaction(location, f"nf refine --name {name}") as tx:
        store = nfstore.open_store(tx.root)
        fit, n = fit_refinement(store, decoded, alphas, cv)
        target_norm = fit.target_norm  # of the train embeddings the refinement was fitted on
        summary = DecodeSummary(name, note=f"refinement alpha {fit.alpha[0]:g}, fitted on {n} "
                                           f"out-of-sample train rows")
        for key in store.decoded_subjects(decoded):
            d = store.decoded(decoded, key)
            out = fit.predict(np.asarray(d.values, np.float32))
            if rescale:
                out *= target_norm / np.maximum(np.linalg.norm(out, axis=1, keepdims=True),
                                                1e-12)
            split = d["split"].values
            write_decoded(tx, name, key, out, d.stimulus.values, split,
                          d["out_of_sample"].values & (split != "train"), d["n_repeats"].values,
                          {**d.attrs, "refined_from": decoded, "refinement_alpha":
                           float(fit.alpha[0]), "refinement_rows": n, "rescaled_to_norm":
                           target_norm if rescale else None,
                           "refinement": "ridge decoded -> true embedding on out-of-sample "
                                         "train rows of every subject (never test)"})
            summary.rows[key] = int(d.sizes["stimulus"])
    summary.seconds = time.perf_counter() - t0
    return summary
