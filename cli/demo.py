"""The demo pipeline on synthetic data (``nf demo``), in 13 steps on CPU.

1-3. synth and ingest NSD, BOLD5000 and GOD; 4. query (nsd/subj01, V1, test, repeat-averaged);
5. embed (a tiny random image encoder); 6. a pool of novel images, embedded, and the leakage
report; 7. augment (ridge-synthesized trials); 8. train (the ``demo-cpu`` config); 9. evaluate
(retrieval, with the ridge baseline); 10. predict and refine; 11. reconstruct (a tiny random
SDXL + IP-Adapter); 12. export-images; 13. the low-level stage (pixels embedded, ridge-decoded
into blurry images, img2img from them, PixCorr / SSIM); then a per-subject summary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def repeat_reliability(x: np.ndarray, stimuli: np.ndarray, repeats: np.ndarray) -> float:
    """Mean over voxels of the correlation between repeat 0 and repeat 1 of the same stimuli.

    Parameters
    ----------
    x : array of shape (n_trials, n_voxels)
    stimuli, repeats : arrays of shape (n_trials,)
    """
    first = {s: i for i, (s, r) in enumerate(zip(stimuli, repeats)) if r == 0}
    pairs = [(first[s], i) for i, (s, r) in enumerate(zip(stimuli, repeats))
             if r == 1 and s in first]
    if len(pairs) < 3:
        return float("nan")
    a, b = x[[p[0] for p in pairs]], x[[p[1] for p in pairs]]
    a = (a - a.mean(0)) / (a.std(0) + 1e-12)
    b = (b - b.mean(0)) / (b.std(0) + 1e-12)
    return float((a * b).mean(0).mean())


# The synthetic trees' sizes where the demo departs from ``nf synth``'s defaults: GOD's test
# images are new categories, so the decoder must generalise across categories; 12 train
# categories and 10 test images left its retrieval row within reach of chance.
DEMO_SIZES: dict[str, dict[str, object]] = {
    "nsd": {"sessions": 6, "images_per_subject": 200},
    "bold5000": {"sessions": 5, "test_images": 20, "images": (80, 60, 60)},
    "god": {"train_categories": 80, "test_images": 30}}


def run_demo(workdir: Path, seed: int = 0, echo: Callable[[str], None] = print,
             config: Path | None = None) -> dict[str, float]:
    """The whole pipeline on synthetic NSD, BOLD5000 and GOD, the 13 steps of this module's
    docstring, each echoed as ``[n/13] ...``; returns the run time, the mean repeat reliability
    and the overall retrieval top-1 with its chance level."""
    import nfstore
    from nfstore.export import write_query
    from nfstore.synth import synthesize

    t0 = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    store_path = workdir / "nf.zarr"
    steps = 13
    for n, dataset in enumerate(("nsd", "bold5000", "god"), start=1):
        raw = workdir / "raw" / dataset
        s = synthesize(dataset, raw, overwrite=True, seed=seed, **DEMO_SIZES.get(dataset, {}))
        summary = nfstore.ingest(dataset, raw, store_path, overwrite=True, progress=True)
        echo(f"[{n}/{steps}] synth {dataset}: {s['trials']} trials, {s['images']} images; "
             f"{summary.line()}")
    store = nfstore.open_store(store_path)
    x = store.betas("nsd/subj01", roi="V1", split="test", average_repeats=True)
    out = write_query(x, workdir / "subj01_V1_test.nc")
    echo(f"[4/{steps}] query nsd/subj01 V1 test (repeat-averaged): {x.shape[0]} stimuli x "
         f"{x.shape[1]} voxels -> {out}")
    from nfstore.embeddings import embed_store
    from nfstore.tiny import write_tiny_encoder

    weights = write_tiny_encoder(workdir / "encoder")["hf"]
    emb = embed_store(store_path, "ip-adapter-sdxl", weights, progress=True)
    echo(f"[5/{steps}] {emb.line()} (tiny random ViT encoder written to {weights})")
    pool = workdir / "raw" / "pool"  # novel images, and (as real pools) a few GOD test images
    synthesize("pool", pool, overwrite=True, seed=seed, n=400, image_size=64,
               god=str(workdir / "raw" / "god"))
    from nfstore.augment import AugmentConfig, augment
    from nfstore.embeddings import register_pool
    from nfstore.leakage import find_leakage

    register_pool(store_path, pool, "novel")
    embed_store(store_path, "ip-adapter-sdxl", weights, stimuli="novel")
    echo(f"[6/{steps}] leakage: " + "\n      ".join(find_leakage(
        nfstore.open_store(store_path)).lines()))
    aug = augment(store_path, "nsd/subj01", AugmentConfig(pool="novel", fraction=1.0,
                                                          noise="lowrank", rank=8, seed=seed),
                  overwrite=True)
    echo(f"[7/{steps}] augment: " + "\n      ".join(aug.lines()))
    from nftrain.config import example, load
    from nftrain.evaluate import evaluate, table, write
    from nftrain.train import train

    run = workdir / "run"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    cfg = load(config or example("demo-cpu"),
               [f"output_dir={json.dumps(str(run))}", f"seed={seed}"])
    summary = train(store_path, cfg, progress=False)
    echo(f"[8/{steps}] train: {summary.exclusion_line()}\n      {summary.line()}")
    metrics = evaluate(store_path, run / "best", split="test", baseline="ridge")
    write(metrics, workdir / "metrics.json")
    echo(f"[9/{steps}] evaluate (test split, repeat-averaged; retrieval among each subject's "
         f"unique test images; ridge rows: the closed-form baseline of `nf decode-ridge` on the "
         f"same candidates) -> {workdir / 'metrics.json'}")
    for line in table(metrics).splitlines():
        echo("      " + line)
    from nfrecon.decode import decode_ridge, predict, refine
    from nfrecon.export import export_images
    from nfrecon.reconstruct import ReconConfig, reconstruct
    from nfrecon.tiny import write_tiny_models

    dec = predict(store_path, run / "best", "demo", include_train=True)
    ref = refine(store_path, "demo", "demo-refined")
    echo(f"[10/{steps}] predict: {dec.line()}\n      refine: {ref.line()}")
    models = write_tiny_models(workdir / "models", seed=seed)
    rec = reconstruct(store_path, "demo-refined", models["sdxl"], models["ip_adapter"],
                      "demo-refined", ReconConfig(steps=4, size=64, samples=2, seed=seed),
                      subjects=["nsd/subj01", "god/sub-01"], encoder=weights, limit=4)
    echo(f"[11/{steps}] reconstruct (tiny random SDXL + IP-Adapter written to "
         f"{workdir / 'models'}; 2 samples, the one closest to the decoded embedding chosen): "
         f"{rec.line()}")
    files = export_images(store_path, "demo-refined", workdir / "reconstructions")
    echo(f"[12/{steps}] export-images: {sum(files.values())} files, grids "
         + ", ".join(str(workdir / "reconstructions" / f"{k.replace('/', '_')}_grid.png")
                     for k in files))
    from dataclasses import replace

    from nfrecon.lowlevel_eval import compare
    from nfstore.lowlevel import embed_pixels

    embed_pixels(store_path, size=16)
    decode_ridge(store_path, "nsd/subj01", "blurry", embedding="pixels", rescale=True,
                 image_size=64, alphas=(1.0, 10.0, 100.0, 1000.0))
    low = ReconConfig(steps=4, size=64, seed=seed)
    reconstruct(store_path, "demo-refined", models["sdxl"], models["ip_adapter"],
                "demo-embedding-only", low, subjects=["nsd/subj01"])
    reconstruct(store_path, "demo-refined", models["sdxl"], models["ip_adapter"], "demo-img2img",
                replace(low, strength=0.75, blend=0.25), subjects=["nsd/subj01"], init="blurry")
    table = compare(store_path, "nsd/subj01", {
        "blurry (ridge-decoded pixels)": "blurry", "embedding only": "demo-embedding-only",
        "img2img from blurry (strength 0.75)": "demo-img2img",
        "blend 0.25": "demo-img2img-blend0.25"}, 64, seed)
    echo(f"[13/{steps}] low-level stage, nsd/subj01 (test images; PixCorr / SSIM; the tiny "
         f"SDXL has random weights, so only the blurry rows carry signal):")
    for label, v in table.items():
        echo(f"      {label:36s} {v['pixcorr']:.3f} / {v['ssim']:.3f}")
    reliability = {}
    for key, row in store.info().items():
        train = store.betas(key, split="train")
        rel = repeat_reliability(train.values, train.stimulus.values, train.repeat.values)
        reliability[key] = rel
        echo(f"      {key:14s} {row['trials']:4d} trials ({row['train']} train / {row['test']} "
             f"test / {row['imagery']} imagery), {row['voxels']:5d} voxels, {row['rois']:2d} ROIs"
             + (f", repeat reliability {rel:.2f}" if rel == rel else "")
             + "".join(f", +{n} synthetic ({name})" for name, n in row["synthetic"].items()))
    echo("      (repeat reliability: correlation between repeats of the same train image; "
         "0 without the planted signal)")
    dt = time.perf_counter() - t0
    echo(f"demo done in {dt:.1f} s; store at {store_path}")
    return {"seconds": dt, "reliability": float(np.nanmean(list(reliability.values()))),
            "top1": metrics["overall"]["top1_brain_to_image"],
            "chance": metrics["overall"]["chance_top1"]}
