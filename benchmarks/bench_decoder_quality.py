"""Does the trainer beat the closed-form ridge baseline? (figures in docs/benchmarks.md)

Planted synthetic stores at three sizes (about 500, 3000 and 10000 train trials per NSD subject,
two NSD subjects, one BOLD5000 and one GOD subject scaled alongside; tiny random image
encoder), 50 NSD, 20 BOLD5000 and 50 GOD test images. For each size: test top-1 and top-5 in
both directions, per dataset (mean over its subjects), for

- ``ridge``: ``nf decode-ridge``'s closed form (repeat-averaged train betas -> embeddings,
  per-target CV alphas; deterministic), scored by ``nf evaluate --baseline ridge`` on the same
  candidates;
- ``demo``, ``paper``: ``nf train`` with the shipped configs (``paper`` on the CPU);
- ``default``: ``nf train STORE --set subjects=...`` with no ``--config``, the recommended
  setting;

each trained over seeds 0, 1, 2 (mean +- sd). ``--studies`` adds, at the smallest size, the
default trained one subject at a time and one dataset at a time, and with vs. without
ridge-synthesized trials (``nf augment``). Settings were chosen on validation top-1
(printed as ``val``), never on these test figures.

Run: ``python benchmarks/bench_decoder_quality.py [--sizes 500,3000,10000] [--seeds 0,1,2]
[--methods ridge,demo,paper,default] [--studies] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK  # noqa: E402

import nfstore  # noqa: E402
from nftrain import config as C  # noqa: E402
from nftrain.evaluate import evaluate  # noqa: E402
from nftrain.train import train  # noqa: E402

DATASETS = ("nsd", "bold5000", "god")
COLUMNS = ("top1_brain_to_image", "top5_brain_to_image", "top1_image_to_brain",
           "top5_image_to_brain")


def build_store(size: int, augmented: bool = False) -> Path:
    """The planted store of one size (built once under benchmarks/_work, reused)."""
    from nfstore.embeddings import embed_store
    from nfstore.synth import synthesize
    from nfstore.tiny import write_tiny_encoder

    store = WORK / f"decoder_quality_{size}.zarr"
    if not (store / "done").exists():
        shutil.rmtree(store, ignore_errors=True)
        raw = WORK / f"decoder_quality_{size}_raw"
        tps = 100 if size <= 3000 else 250
        synthesize("nsd", raw / "nsd", overwrite=True, subjects=(1, 2), shared=50,
                   images_per_subject=50 + size // 3, trials_per_session=tps,
                   sessions=max(1, (size + 150) // tps), runs_per_session=5, image_size=32,
                   grid=(12, 14, 12), seed=size)
        sessions = max(3, size // 200)
        train_trials = sessions * 3 * 20 - 80
        synthesize("bold5000", raw / "bold5000", overwrite=True, subjects=(1,),
                   sessions=sessions, runs_per_session=3, trials_per_run=20, test_images=20,
                   images=(train_trials // 2, train_trials // 4, train_trials // 4), seed=size)
        synthesize("god", raw / "god", overwrite=True, subjects=(1,),
                   train_categories=max(12, size // 40), images_per_category=4, test_images=50,
                   train_runs=4, test_runs=3, seed=size)
        for ds in DATASETS:
            nfstore.ingest(ds, raw / ds, store)
        embed_store(store, "ip-adapter-sdxl", write_tiny_encoder(WORK / "enc")["hf"])
        (store / "done").touch()
    if augmented and not (store / "augmented").exists():
        augment_store(store)
    return store


def augment_store(store: Path) -> None:
    """Ridge-synthesized trials for every subject from a pool of novel pictures."""
    from nfstore.augment import AugmentConfig, augment
    from nfstore.embeddings import embed_store, register_pool
    from nfstore.synth import _signal
    from nfstore.synth.images import write_images
    from nfstore.tiny import write_tiny_encoder

    pool = store.parent / f"{store.stem}_pool"
    rng = np.random.default_rng(9)
    write_images([pool / f"{i:04d}.png" for i in range(600)],
                 _signal.render_images(_signal.latents(600, rng), 32, rng))
    register_pool(store, pool, "novel")
    embed_store(store, "ip-adapter-sdxl", write_tiny_encoder(WORK / "enc")["hf"])
    for key in nfstore.open_store(store).subjects():
        augment(store, key, AugmentConfig(pool="novel", fraction=1.0, noise="lowrank", rank=4),
                overwrite=True)
    (store / "augmented").touch()


def config(method: str, subjects: list[str], out: Path, seed: int, **kw: object) -> C.TrainConfig:
    """The config a user gets: a shipped TOML, or none (the defaults), plus subjects."""
    over = {"subjects": subjects, "output_dir": str(out), "seed": seed, **kw}
    if method == "default":
        return C.build(over)
    values = C.load(C.example({"demo": "demo-cpu", "paper": "paper"}[method])).to_dict()
    values.update(device="cpu", synthetic=[], **over)
    return C.build(values)


def run(store: Path, method: str, subjects: list[str], seed: int, tag: str,
        **kw: object) -> dict:
    out = WORK / "decoder_quality_runs" / tag
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = train(store, config(method, subjects, out, seed, **kw))
    m = evaluate(store, out / "best", baseline="ridge")
    m["seconds"], m["val_top1"], m["best_epoch"] = (time.perf_counter() - t0, s.best_val_top1,
                                                    s.best_epoch)
    return m


def cell(values: list[float]) -> str:
    return f"{np.mean(values):.3f}" + (f" +- {np.std(values, ddof=1):.3f}"
                                       if len(values) > 1 else "")


def report(label: str, runs: list[dict], key: str = "datasets") -> list[str]:
    lines = []
    for d in DATASETS:
        rows = [r[key][d] for r in runs if d in r[key]]
        if rows:
            lines.append(f"  {label:28s} {d:9s}" + "".join(
                f"{cell([r[c] for r in rows]):>17s}" for c in COLUMNS))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="500,3000,10000")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="ridge,demo,paper,default")
    ap.add_argument("--studies", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    results: dict = {}
    head = f"  {'':28s} {'':9s}" + "".join(f"{c.replace('_brain_to_image', ' b->i').replace('_image_to_brain', ' i->b'):>17s}" for c in COLUMNS)  # noqa: E501
    for size in [int(s) for s in args.sizes.split(",")]:
        store = build_store(size)
        subjects = nfstore.open_store(store).subjects()
        runs = {m: [run(store, m, subjects, s, f"{size}_{m}_s{s}") for s in seeds]
                for m in methods if m != "ridge"}
        first = next(iter(runs.values()))[0] if runs else run(store, "default", subjects, 0,
                                                              f"{size}_ridge")
        print(f"\nsize {size} (train trials per NSD subject); test retrieval, mean +- sd over "
              f"seeds {seeds}; chance top-1 " + ", ".join(
                  f"{d} {first['datasets'][d]['chance_top1']:.3f}" for d in DATASETS))
        print(head)
        lines = report("ridge (nf decode-ridge)", [first["baseline"]])
        for m, rs in runs.items():
            lines += report(f"nf train {m}", rs)
            lines.append(f"  {'':28s} val top-1 {cell([r['val_top1'] for r in rs])}, best "
                         f"epoch {[r['best_epoch'] for r in rs]}, "
                         f"{np.mean([r['seconds'] for r in rs]):.0f} s per run")
        print("\n".join(lines), flush=True)
        results[size] = {"ridge": first["baseline"], **runs}
    if args.studies:
        results["studies"] = studies(int(args.sizes.split(",")[0]), seeds, head)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


def studies(size: int, seeds: list[int], head: str) -> dict:
    """Cross-subject vs single-subject vs one dataset, with vs without augmentation."""
    store = build_store(size, augmented=True)
    subjects = nfstore.open_store(store).subjects()
    out: dict[str, list[dict]] = {}
    out["all subjects, no augmentation"] = [
        run(store, "default", subjects, s, f"{size}_st_all_s{s}") for s in seeds]
    out["all subjects + augmentation"] = [
        run(store, "default", subjects, s, f"{size}_st_aug_s{s}", synthetic=["*"])
        for s in seeds]
    for label, groups in (("one dataset at a time", [[k for k in subjects if k.startswith(d)]
                                                       for d in DATASETS]),
                          ("one subject at a time", [[k] for k in subjects])):
        per_seed = []
        for s in seeds:
            merged: dict = {"subjects": {}}
            for g in groups:
                merged["subjects"].update(run(store, "default", g, s,
                                              f"{size}_st_{g[0].replace('/', '_')}_{len(g)}"
                                              f"_s{s}")["subjects"])
            per_seed.append({"datasets": {d: {c: float(np.mean(
                [v[c] for k, v in merged["subjects"].items() if k.startswith(d)]))
                for c in COLUMNS} for d in DATASETS}})
        out[label] = per_seed
    print(f"\nstudies at size {size} (store with ridge-synthesized trials), default setting")
    print(head)
    for label, rs in out.items():
        print("\n".join(report(label, rs)))
    return out


if __name__ == "__main__":
    main()
