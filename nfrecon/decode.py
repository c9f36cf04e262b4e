"""Decoding held-out trials into embeddings: ``nf predict`` (a trained checkpoint),
``nf decode-ridge`` (the closed-form single-subject baseline) and refinement (the paper's
§2.3: a subject-agnostic ridge from decoded to true embeddings)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import nfstore
from nfrecon.decoded import check_name, write_decoded
from nfrecon.ridge import DEFAULT_ALPHAS, RidgeFit, fit_ridge
from nfstore import _layout
from nfstore.names import SPLITS
from nfstore.encoders import checksum
from nfstore.errors import OptionError, StoreError


@dataclass
class DecodeSummary:
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
        raise OptionError(f"--split: expected one of {list(SPLITS)}; got {split!r}")
    x = store.betas(key, roi=roi, split=split, average_repeats=not single)
    if x.sizes["trial"] == 0:
        raise StoreError(f"{key}: no {split} trials to decode")
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
    where the checkpoint never trained on them (its validation pictures): the rows a
    refinement may be fitted on.
    """
    import torch

    from nftrain import checkpoint
    from nftrain import fingerprint as fp
    from nftrain.config import build
    from nftrain.data import load_dataset

    t0 = time.perf_counter()
    check_name(name)
    model, meta, _ = checkpoint.load(ckpt, device)
    model.eval()
    path = _layout.local_store_path(location)
    store = nfstore.open_store(path)
    keys = checkpoint.subjects_to_use(model, store, subjects, ckpt)
    changed = fp.check_checkpoint(store, meta, keys, ckpt, allow_store_change)
    held_out: set[str] = set()
    if include_train:  # the checkpoint's validation pictures: never trained on
        cfg = build({**meta["train_config"], "subjects": meta["train_config"]["subjects"]})
        data = load_dataset(store, cfg)
        held_out = {str(s) for sub in data.subjects for s in data.stimuli[sub.val[0].targets]}
    attrs = {"decoder": "checkpoint", "checkpoint": str(ckpt),
             "checkpoint_sha256": checksum((Path(ckpt) / "model.safetensors",
                                            Path(ckpt) / "config.json")),
             "embedding": meta["embedding"],
             "split": split, "single_trials": single_trials,
             "store_fingerprint": _fingerprint(store, keys),
             "trained_store_fingerprint": meta.get("store_fingerprint"),
             "store_changed_since_training": {k: list(v) for k, v in changed.items()}}
    summary = DecodeSummary(name)
    with _layout.writing(path, f"nf predict --name {name}"):
        for key in keys:
            i = model.spec.subjects.index(key)
            parts = [(split, _rows(store, key, split, meta["rois"].get(key), single_trials))]
            if include_train and split != "train":
                parts.append(("train", _rows(store, key, "train", meta["rois"].get(key), False)))
            cols: dict[str, list[np.ndarray]] = {c: [] for c in ("e", "s", "p", "o", "n")}
            for sp, x in parts:
                betas = np.asarray(x.values, np.float32)
                if not np.isfinite(betas).all():
                    raise StoreError(f"{key}: {sp} rows hold non-finite betas; run `nf validate`")
                with torch.no_grad():
                    e = model.embed_subject(i, torch.from_numpy(betas).to(device)).float()
                stim = x.stimulus.values.astype(object)
                cols["e"].append(e.cpu().numpy())
                cols["s"].append(stim)
                cols["p"].append(np.full(stim.size, sp, dtype=object))
                cols["o"].append(np.array([sp != "train" or s in held_out for s in stim]))
                cols["n"].append(x["n_repeats"].values if "n_repeats" in x.coords
                                 else np.ones(stim.size, np.int64))
            write_decoded(path, name, key, *(np.concatenate(cols[c]) for c in "espon"),
                          attrs=attrs)
            summary.rows[key] = int(sum(len(s) for s in cols["s"]))
    summary.seconds = time.perf_counter() - t0
    return summary


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
    path = _layout.local_store_path(location)
    store = nfstore.open_store(path)
    train = _rows(store, subject, "train", roi, False)
    if train.sizes["trial"] <= cv:
        raise StoreError(f"{subject}: {train.sizes['trial']} train stimuli; need more than "
                         f"--cv {cv}")
    X = np.asarray(train.values, np.float32)
    Y = np.asarray(store.embeddings(embedding, stimuli=train.stimulus).values, np.float32)
    fit = fit_ridge(X, Y, alphas, cv, target_chunk)
    held = _rows(store, subject, split, roi, False) if split != "train" else None
    emb = [fit.oof] + ([fit.predict(np.asarray(held.values, np.float32))] if held is not None
                       else [])
    if rescale:  # each target's predictions to the train targets' mean and std
        ref = emb[0]
        mu, sd = ref.mean(0), ref.std(0)
        emb = [(e - mu) / np.where(sd > 0, sd, 1) * Y.std(0) + Y.mean(0) for e in emb]
    parts = [train] + ([held] if held is not None else [])
    values, counts = np.unique(fit.alpha, return_counts=True)
    attrs = {"decoder": "ridge", "embedding": embedding, "split": split, "roi": roi,
             "alphas": list(map(float, alphas)), "cv": cv,
             "alpha_counts": {f"{v:g}": int(c) for v, c in zip(values, counts)},
             "fitted_on": "repeat-averaged train betas (one row per train stimulus)",
             "train_rows": "out-of-fold predictions", "rescaled": rescale,
             "store_fingerprint": _fingerprint(store, [subject])}
    with _layout.writing(path, f"nf decode-ridge --name {name}"):
        write_decoded(path, name, subject, np.concatenate(emb),
                      np.concatenate([p.stimulus.values.astype(object) for p in parts]),
                      np.concatenate([np.full(p.sizes["trial"], s, dtype=object)
                                      for p, s in zip(parts, ["train", split])]),
                      np.ones(sum(p.sizes["trial"] for p in parts), bool),
                      np.concatenate([p["n_repeats"].values for p in parts]), attrs)
        if embedding in ("pixels", "sdxl-vae") and held is not None:
            cache = store.embeddings(embedding).attrs
            if embedding == "pixels":
                from nfstore.lowlevel import upsample

                imgs = upsample(emb[-1], int(cache["size"]), image_size)
                how = "blurry: ridge-decoded pixels, upsampled (bicubic)"
            else:
                from nfrecon.init_images import resize
                from nfstore.lowlevel import load_vae, vae_decode

                raw = emb[-1].reshape(-1, *[int(v) for v in cache["latent_shape"]])
                imgs = resize(vae_decode(load_vae(vae or cache["weights"]["path"]), raw),
                              image_size)
                how = "blurry: ridge-decoded SDXL-VAE latents (raw), VAE-decoded, resized"
            _write_blurry(path, name, subject, imgs, held.stimulus.values, split, image_size,
                          {**attrs, "source": how})
    summary = DecodeSummary(name, {subject: sum(p.sizes["trial"] for p in parts)},
                            time.perf_counter() - t0,
                            "alphas (targets): " + ", ".join(f"{v:g} ({c})" for v, c in
                                                            zip(values, counts)))
    return summary


def fit_refinement(store: nfstore.Store, source: str, alphas: tuple[float, ...] = DEFAULT_ALPHAS,
                   cv: int = 5) -> tuple[RidgeFit, int]:
    """The subject-agnostic ridge decoded -> true embedding, on the **out-of-sample train**
    rows of every subject of ``source`` (never in-sample rows, never test); one alpha for all
    targets by scikit-learn's leave-one-out ``RidgeCV`` (``cv`` only sets the minimum rows).

    Returns the fit and the number of rows it was fitted on.
    """
    X, Y = [], []
    model = None
    for key in store.decoded_subjects(source):
        d = store.decoded(source, key)
        model = d.attrs.get("embedding", "ip-adapter-sdxl")
        rows = np.flatnonzero((d["split"].values == "train") & d["out_of_sample"].values)
        if rows.size:
            X.append(np.asarray(d.values[rows], np.float32))
            Y.append(np.asarray(store.embeddings(model, stimuli=d.stimulus.values[rows]).values,
                                np.float32))
    n = sum(len(x) for x in X)
    if n <= cv:
        raise StoreError(f"--decoded {source}: {n} out-of-sample train rows; refinement needs "
                         f"more than --cv {cv} (write them with `nf predict --refine` or "
                         f"`nf decode-ridge`)")
    from sklearn.linear_model import RidgeCV

    X_all, Y_all = np.concatenate(X), np.concatenate(Y)
    # one alpha for all targets by efficient leave-one-out CV (fast when rows < features)
    r = RidgeCV(alphas=np.asarray(alphas, np.float64)).fit(X_all, Y_all)
    W = np.asarray(r.coef_.T, np.float32)
    return RidgeFit(W, np.asarray(r.intercept_, np.float32),
                    np.full(W.shape[1], float(r.alpha_)), np.empty((0, W.shape[1])),
                    float(np.linalg.norm(Y_all, axis=1).mean())), n


def refine(location: str | Path, source: str, name: str, *,
           alphas: tuple[float, ...] = DEFAULT_ALPHAS, cv: int = 5, rescale: bool = True
           ) -> DecodeSummary:
    """Apply the refinement fitted by :func:`fit_refinement` to every row of ``source`` and
    write the result as decoded set ``name``; ``rescale`` sets each output's norm to the mean
    norm of the train embeddings the refinement was fitted on."""
    t0 = time.perf_counter()
    check_name(name)
    path = _layout.local_store_path(location)
    store = nfstore.open_store(path)
    fit, n = fit_refinement(store, source, alphas, cv)
    target_norm = fit.target_norm  # of the train embeddings the refinement was fitted on
    summary = DecodeSummary(name, note=f"refinement alpha {fit.alpha[0]:g}, fitted on {n} "
                                       f"out-of-sample train rows")
    with _layout.writing(path, f"nf refine --name {name}"):
        for key in store.decoded_subjects(source):
            d = store.decoded(source, key)
            out = fit.predict(np.asarray(d.values, np.float32))
            if rescale:
                out *= target_norm / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
            split = d["split"].values
            write_decoded(path, name, key, out, d.stimulus.values, split,
                          d["out_of_sample"].values & (split != "train"), d["n_repeats"].values,
                          {**d.attrs, "refined_from": source, "refinement_alpha":
                           float(fit.alpha[0]), "refinement_rows": n, "rescaled_to_norm":
                           target_norm if rescale else None,
                           "refinement": "ridge decoded -> true embedding on out-of-sample "
                                         "train rows of every subject (never test)"})
            summary.rows[key] = int(d.sizes["stimulus"])
    summary.seconds = time.perf_counter() - t0
    return summary


__all__ = ["predict", "decode_ridge", "refine", "fit_refinement", "DecodeSummary"]


def _write_blurry(path: Path, name: str, subject: str, imgs: np.ndarray, stimuli: np.ndarray,
                  split: str, image_size: int, attrs: dict[str, Any]) -> None:
    """Blurry images uint8 (n, image_size, image_size, 3) as a reconstruction set (one sample
    per row)."""
    from nfrecon.reconstruct import RECON_GROUP, create_group

    imgs = imgs[:, None]
    key = f"{RECON_GROUP}/{name}/{subject}"
    staged = _layout.staging_path(path, key.replace("/", "."))
    _layout.discard(staged)
    g = create_group(staged, stimuli, 1, image_size)
    g["images"][:] = imgs
    g["chosen"][:] = 0
    g["scores"][:] = np.nan
    g["seeds"][:] = 0
    g.attrs.update({**attrs, "decoded": name, "subject": subject, "split": split,
                    "image_size": image_size})
    _layout.ensure_group(path, f"{RECON_GROUP}/{name}/{subject.split('/')[0]}")
    _layout.commit(path, staged, key)
