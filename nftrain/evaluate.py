"""``nf evaluate``: retrieval between decoded fMRI and image embeddings, per subject/dataset.

For each subject, the candidates are that subject's unique stimuli of the split, with betas
averaged over repeats. brain -> image: is the right image among the k most similar embeddings of
a decoded vector; image -> brain: is the right decoded vector among the k most similar to an
image embedding. Cosine: mean similarity of each decoded vector with its own image embedding.
The metrics are :func:`nfstore.decoding.retrieval`'s; decoding is
:func:`nftrain.checkpoint.decode_betas`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import nfstore
from nfstore.decoding import RETRIEVAL as METRICS
from nfstore.decoding import fit_ridge, retrieval
from nfstore.errors import OptionError, StoreError
from nftrain import checkpoint
from nftrain import fingerprint as fp

__all__ = ["METRICS", "evaluate", "retrieval", "table", "write"]


def evaluate(location: str | Path, ckpt: str | Path, split: str = "test",
             subjects: list[str] | None = None, device: str = "cpu",
             baseline: str | None = None, allow_store_change: bool = False
             ) -> dict[str, Any]:
    """Metrics per subject, per dataset (mean over its subjects) and overall.

    A checkpoint trained on other data than the store holds now (a subject ingested again,
    the embedding cache made with other weights: its ``store_fingerprint``) is refused unless
    ``allow_store_change``; the metrics then list what changed (``store_changed``).

    ``baseline="ridge"`` adds ``out["baseline"]``: the same metrics for a closed-form ridge per
    subject (``nf decode-ridge``'s: repeat-averaged train betas of the checkpoint's ROI ->
    embeddings, per-target CV alphas), on the same candidates.
    """
    if baseline not in (None, "ridge"):
        raise OptionError(f"baseline: expected 'ridge' or None; found {baseline!r}")
    if split not in ("train", "test", "imagery"):
        raise OptionError(f"split: expected train, test or imagery; found {split!r}")
    model, meta, _ = checkpoint.load(ckpt, device)
    store = nfstore.open_store(location)
    keys = checkpoint.subjects_to_use(model, store, subjects, ckpt)
    changed = fp.check_checkpoint(store, meta, keys, ckpt, allow_store_change)
    out: dict[str, Any] = {"split": split, "checkpoint": str(ckpt), "subjects": {},
                           "datasets": {}, "overall": {}}
    if changed:
        out["store_changed"] = {k: list(v) for k, v in changed.items()}
    for key in keys:
        i = model.spec.subjects.index(key)
        x = store.betas(key, roi=meta.get("rois", {}).get(key), split=split,
                        average_repeats=True)
        if x.sizes["trial"] < 2:
            continue
        if x.sizes["voxel"] != model.spec.n_voxels[i]:
            raise StoreError(f"{key}: the store has {x.sizes['voxel']} voxels for the "
                             f"checkpoint's ROI; the checkpoint was trained on "
                             f"{model.spec.n_voxels[i]}")
        target = store.embeddings(meta["embedding"], stimuli=x.stimulus).values
        betas = np.asarray(x.values, np.float32)
        bad = ~np.isfinite(betas).all(axis=1)
        if bad.any():
            raise StoreError(f"{store.location}/{key}: {int(bad.sum())} {split} rows hold "
                             f"non-finite betas (e.g. stimuli {x.stimulus.values[bad][:3].tolist()}"
                             f"); run `nf validate` and re-ingest {key}")
        pred = checkpoint.decode_betas(model, key, betas)
        out["subjects"][key] = retrieval(pred, np.asarray(target, np.float32))
        if baseline == "ridge":
            tr = store.betas(key, roi=meta.get("rois", {}).get(key), split="train",
                             average_repeats=True)
            fit = fit_ridge(tr.values, store.embeddings(meta["embedding"],
                                                        stimuli=tr.stimulus).values)
            out.setdefault("baseline", {"name": "ridge", "subjects": {}})["subjects"][key] = \
                retrieval(fit.predict(betas), np.asarray(target, np.float32))
    for name, group in _groups(out["subjects"]).items():
        out["datasets"][name] = _mean(group)
    out["overall"] = _mean(list(out["subjects"].values()))
    if "baseline" in out:
        b = out["baseline"]
        b["datasets"] = {n: _mean(g) for n, g in _groups(b["subjects"]).items()}
        b["overall"] = _mean(list(b["subjects"].values()))
    return out


def _groups(subjects: dict[str, dict[str, float]]) -> dict[str, list[dict[str, float]]]:
    groups: dict[str, list[dict[str, float]]] = {}
    for key, m in subjects.items():
        groups.setdefault(key.split("/")[0], []).append(m)
    return groups


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    out = {m: float(np.mean([r[m] for r in rows])) for m in METRICS}
    out["n_candidates"] = float(np.mean([r["n_candidates"] for r in rows]))
    out["n_subjects"] = len(rows)
    out["chance_top1"] = float(np.mean([1 / r["n_candidates"] for r in rows]))
    return out


def table(metrics: dict[str, Any]) -> str:
    """The metrics as a fixed-width text table."""
    head = ("", "top1 b->i", "top5 b->i", "top1 i->b", "top5 i->b", "cosine", "n", "chance")
    rows = [head]
    for section in ("subjects", "datasets"):
        for key, m in metrics[section].items():
            rows.append((key, *(f"{m[k]:.3f}" for k in METRICS),
                         f"{m['n_candidates']:.0f}", f"{1 / m['n_candidates']:.3f}"
                         if section == "subjects" else f"{m['chance_top1']:.3f}"))
    m = metrics["overall"]
    if m:
        rows.append(("overall", *(f"{m[k]:.3f}" for k in METRICS), f"{m['n_candidates']:.0f}",
                     f"{m['chance_top1']:.3f}"))
    b = metrics.get("baseline")
    if b:
        for key, m in list(b["datasets"].items()) + [("overall", b["overall"])]:
            rows.append((f"ridge baseline {key}", *(f"{m[k]:.3f}" for k in METRICS),
                         f"{m['n_candidates']:.0f}", f"{m['chance_top1']:.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(r, widths))) for r in rows)


def write(metrics: dict[str, Any], out: str | Path) -> Path:
    """Write ``metrics`` as JSON to ``out``, aside first and then renamed into place (a full
    disk leaves the previous file, if any, as it was)."""
    import os

    path = Path(out)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(metrics, indent=2))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
