"""Decoding quality on synthetic data with planted signal (figures in docs/benchmarks.md).

One store with NSD, BOLD5000 and GOD subjects (tiny random image encoder, ridge-synthesized
trials for every subject), then: cross-dataset training vs. one dataset at a time, with vs.
without augmentation, and fine-tuning a new subject's adapter on 25% of its data vs. training
that subject from scratch on the same 25%. Test top-1 (brain -> image, among each subject's
unique test images) per dataset, as mean +- sd over seeds 0, 1, 2, beside chance and a
single-subject scikit-learn ``RidgeCV`` baseline (train trials -> embeddings; deterministic).
Run: ``python benchmarks/bench_train_quality.py``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK  # noqa: E402

import nfstore  # noqa: E402
from nftrain.config import build  # noqa: E402
from nftrain.evaluate import evaluate  # noqa: E402
from nftrain.train import train  # noqa: E402

NEW = "god/sub-03"
BASE = dict(adapter_dim=256, width=256, depth=2, batch_size=64, epochs=40, lr=1e-3,
            patience=10, val_fraction=0.15, input_noise=0.15, seed=0,
            ridge_init=False, regression=0.0, select="loss")  # docs/benchmarks.md figures: InfoNCE


def build_store() -> Path:
    from nfstore.augment import AugmentConfig, augment
    from nfstore.embeddings import embed_store, register_pool
    from nfstore.synth import _signal, synthesize
    from nfstore.synth.images import write_images
    from nfstore.tiny import write_tiny_encoder

    store = WORK / "quality.zarr"
    if (store / "done").exists():
        return store
    shutil.rmtree(store, ignore_errors=True)
    raw = WORK / "quality_raw"
    synthesize("nsd", raw / "nsd", overwrite=True, subjects=(1, 2), sessions=4,
               trials_per_session=100, images_per_subject=180, shared=25, image_size=48)
    synthesize("bold5000", raw / "bold5000", overwrite=True, subjects=(1, 2), sessions=4,
               runs_per_session=4, trials_per_run=20, images=(80, 60, 60), test_images=20)
    synthesize("god", raw / "god", overwrite=True, subjects=(1, 2, 3), train_categories=30,
               images_per_category=4, test_images=20, train_runs=4, test_runs=3)
    for ds in ("nsd", "bold5000", "god"):
        nfstore.ingest(ds, raw / ds, store, overwrite=True)
    rng = np.random.default_rng(9)
    write_images([raw / "pool" / f"{i:04d}.png" for i in range(600)],
                 _signal.render_images(_signal.latents(600, rng), 48, rng))
    register_pool(store, raw / "pool", "novel")
    embed_store(store, "ip-adapter-sdxl", write_tiny_encoder(WORK / "enc")["hf"])
    for key in nfstore.open_store(store).subjects():
        augment(store, key, AugmentConfig(pool="novel", fraction=1.0, noise="lowrank", rank=4),
                overwrite=True)
    (store / "done").touch()
    return store


SEEDS = (0, 1, 2)
DATASETS = ("nsd", "bold5000", "god")


def run(store: Path, name: str, subjects: list[str], **kw: object) -> dict:
    out = WORK / "quality_runs" / name
    shutil.rmtree(out, ignore_errors=True)
    cfg = build({**BASE, "subjects": subjects, "output_dir": str(out), **kw})
    train(store, cfg)
    return evaluate(store, out / "best")


def seeds(store: Path, name: str, subjects: list[str], **kw: object) -> list[dict]:
    return [run(store, f"{name}_s{seed}", subjects, seed=seed, **kw) for seed in SEEDS]


def ridge(store: Path, subjects: list[str]) -> dict[str, float]:
    """Mean test top-1 per dataset of a per-subject RidgeCV (train trials -> embeddings)."""
    from sklearn.linear_model import RidgeCV

    from nfstore.decoding import retrieval

    st = nfstore.open_store(store)
    out: dict[str, list[float]] = {}
    for key in subjects:
        tr = st.betas(key, split="train")
        te = st.betas(key, split="test", average_repeats=True)
        model = RidgeCV(alphas=np.logspace(0, 6, 13)).fit(
            tr.values, st.embeddings("ip-adapter-sdxl", tr.stimulus).values)
        m = retrieval(model.predict(te.values), st.embeddings("ip-adapter-sdxl",
                                                              te.stimulus).values)
        out.setdefault(key.split("/")[0], []).append(m["top1_brain_to_image"])
    return {d: float(np.mean(v)) for d, v in out.items()}


def cell(values: list[float]) -> str:
    return f"{np.mean(values):.3f} +- {np.std(values, ddof=1):.3f}"


def main() -> None:
    store = build_store()
    subjects = nfstore.open_store(store).subjects()
    known = [s for s in subjects if s != NEW]
    by_ds = {d: [s for s in known if s.startswith(d)] for d in ("nsd", "bold5000", "god")}
    results = {"cross-dataset + augmentation": seeds(store, "all_aug", known, synthetic=["*"]),
               "cross-dataset, no augmentation": seeds(store, "all_noaug", known)}
    single = {d: seeds(store, f"single_{d}", subs, synthetic=["*"]) for d, subs in by_ds.items()}
    results["one dataset at a time + augmentation"] = [
        {"datasets": {d: single[d][i]["datasets"][d] for d in DATASETS}}
        for i in range(len(SEEDS))]
    chance = {d: results["cross-dataset, no augmentation"][0]["datasets"][d]["chance_top1"]
              for d in DATASETS}
    print(f"test top-1 brain->image, mean +- sd over seeds {SEEDS}")
    print(f"  {'':38s}" + "".join(f"{d:18s}" for d in DATASETS))
    for label, runs in results.items():
        print(f"  {label:38s}" + "".join(
            f"{cell([r['datasets'][d]['top1_brain_to_image'] for r in runs]):18s}"
            for d in DATASETS))
    rid = ridge(store, known)
    print(f"  {'ridge (RidgeCV, one subject at a time)':38s}" + "".join(
        f"{rid[d]:.3f}{'':13s}" for d in DATASETS))
    print(f"  {'chance':38s}" + "".join(f"{chance[d]:.3f}{'':13s}" for d in DATASETS))

    from nftrain.finetune import finetune_config

    base_ckpt = WORK / "quality_runs" / "all_aug_s0" / "best"
    cfg = finetune_config(base_ckpt, [NEW], 0.25, overrides=[
        f"output_dir=\"{WORK / 'quality_runs' / 'finetune'}\"", "lr=0.003"])
    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    train(store, cfg, init=base_ckpt)
    tuned = evaluate(store, Path(cfg.output_dir) / "best", subjects=[NEW])
    scratch = run(store, "scratch25", [NEW], train_fraction=0.25)
    t, s = tuned["subjects"][NEW], scratch["subjects"][NEW]
    print(f"new subject {NEW} with 25% of its training stimuli "
          f"({t['n_candidates']} test candidates, chance {1 / t['n_candidates']:.3f}):")
    print(f"  fine-tuned adapter on the cross-dataset model: top-1 {t['top1_brain_to_image']:.3f}"
          f", top-5 {t['top5_brain_to_image']:.3f}")
    print(f"  trained from scratch                         : top-1 {s['top1_brain_to_image']:.3f}"
          f", top-5 {s['top5_brain_to_image']:.3f}")


if __name__ == "__main__":
    main()
