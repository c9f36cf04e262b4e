"""The demo pipeline on synthetic data (``nf demo``): 15 steps on CPU, one function each.

1-4. synthesize NSD, BOLD5000, GOD and THINGS (sizes in :data:`DEMO_SIZES`) and ingest them
     into one store (THINGS: one small subject; it is not among the ``demo-cpu`` config's
     training subjects, so it appears in the ingest reports and the per-subject summary);
5.   query nsd/subj01's V1 test betas, repeat-averaged, written as a NetCDF file;
6.   export god/sub-01 as a MindEye2 bundle and as Brain-Diffuser arrays, and read the bundle
     back into a second store (values, splits, sessions and runs compared);
7.   embed every stimulus with a tiny random image encoder (written into the work folder);
8.   register and embed a pool of novel images (with a few GOD test images in it, as real
     pools have), and report the leakage between the pool and the held-out images;
9.   augment nsd/subj01 with ridge-synthesized trials of the pool images;
10.  train the decoder (the ``demo-cpu`` config, or ``config``);
11.  evaluate retrieval on the test split, with the closed-form ridge baseline;
12.  predict decoded embeddings and refine them;
13.  reconstruct images with a tiny random SDXL + IP-Adapter;
14.  export the reconstructions as PNG files and grids;
15.  the low-level stage: pixels embedded, ridge-decoded into blurry images, img2img from
     them, scored by PixCorr / SSIM;

then a per-subject summary (trials, voxels, ROIs, repeat reliability, synthetic trials).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

Echo = Callable[[str], None]
INDENT = "\n      "  # continuation lines of a step's report

# The synthetic trees' sizes where the demo departs from ``nf synth``'s defaults: GOD's test
# images are new categories, so the decoder must generalise across categories; 12 train
# categories and 10 test images left its retrieval row within reach of chance. THINGS: one
# subject of the default small tree (3 sessions x 2 runs, 8 train concepts, 3 test images),
# so that its ingest and its images' embedding add about a second.
DEMO_SIZES: dict[str, dict[str, object]] = {
    "nsd": {"sessions": 6, "images_per_subject": 200},
    "bold5000": {"sessions": 5, "test_images": 20, "images": (80, 60, 60)},
    "god": {"train_categories": 80, "test_images": 30},
    "things": {"subjects": (1,)}}
DATASETS = ("nsd", "bold5000", "god", "things")


def repeat_reliability(x: np.ndarray, stimuli: np.ndarray, repeats: np.ndarray) -> float:
    """Mean over voxels of the correlation between repeat 0 and repeat 1 of the same stimuli.

    Parameters
    ----------
    x : array of shape (n_trials, n_voxels)
    stimuli, repeats : arrays of shape (n_trials,)

    Returns
    -------
    float : NaN with fewer than 3 stimuli seen twice
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


@dataclass
class DemoSummary:
    """What the demo produced: its store, run time, retrieval and per-subject summary."""

    store: Path
    seconds: float
    reliability: float  # mean repeat reliability over subjects (NaN-skipping)
    top1: float  # overall retrieval top-1, brain -> image
    chance: float  # its chance level
    subjects: list[str] = field(default_factory=list)  # one line per subject, and a note

    def lines(self) -> list[str]:
        """The per-subject summary, then the closing line."""
        return [*self.subjects, f"demo done in {self.seconds:.1f} s; store at {self.store}"]


@dataclass
class _Demo:
    """What the steps hand on to each other."""

    workdir: Path
    seed: int
    config: Path | None
    store_path: Path
    store: Any = None  # the store as opened after ingest (the summary reads it)
    weights: Path | None = None  # the tiny image encoder
    metrics: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Path] = field(default_factory=dict)  # the tiny SDXL and IP-Adapter


def _synth(d: _Demo, dataset: str) -> str:
    import nfstore
    from nfstore.synth import synthesize

    raw = d.workdir / "raw" / dataset
    s = synthesize(dataset, raw, overwrite=True, seed=d.seed, **DEMO_SIZES.get(dataset, {}))
    summary = nfstore.ingest(dataset, raw, d.store_path, overwrite=True, progress=True)
    return f"synth {dataset}: {s['trials']} trials, {s['images']} images; {summary.line()}"


def _query(d: _Demo) -> str:
    import nfstore
    from nfstore.export import write_query

    d.store = nfstore.open_store(d.store_path)
    x = d.store.betas("nsd/subj01", roi="V1", split="test", average_repeats=True)
    out = write_query(x, d.workdir / "subj01_V1_test.nc")
    return (f"query nsd/subj01 V1 test (repeat-averaged): {x.shape[0]} stimuli x "
            f"{x.shape[1]} voxels -> {out}")


def _formats(d: _Demo) -> str:
    """GOD sub-01 written as a MindEye2 bundle and as Brain-Diffuser arrays (``nf export``);
    the bundle is read back into a second store and compared with the first."""
    import nfstore
    from nfstore.community import column_order, export_subject

    key = "god/sub-01"
    out = d.workdir / "exports"
    me2 = export_subject("mindeye2", d.store_path, key, out / "mindeye2", overwrite=True)
    bd = export_subject("brain-diffuser", d.store_path, key, out / "brain-diffuser",
                        overwrite=True, size=64)
    back = out / "mindeye2-read-back.zarr"
    nfstore.ingest("mindeye2", out / "mindeye2", back, overwrite=True)
    a = d.store.betas(key)
    b = nfstore.open_store(back).betas(nfstore.open_store(back).subjects()[0])
    keep = a["split"].values != "imagery"  # the bundle has no imagery trials
    cols = column_order(d.store.dataset(key))  # the bundle's voxel order
    diff = float(np.abs(a.values[keep][:, cols] - b.values).max())
    same = all((a[c].values[keep] == b[c].values).all() for c in ("split", "session", "run"))
    return (f"export {key}: {me2}{INDENT}{bd}{INDENT}read back with nf ingest mindeye2: "
            f"max |difference| {diff:.1e}, splits, sessions and runs "
            f"{'equal' if same else 'DIFFER'}")


def _embed(d: _Demo) -> str:
    from nfstore.embeddings import embed_store
    from nfstore.tiny import write_tiny_encoder

    d.weights = write_tiny_encoder(d.workdir / "encoder")["hf"]
    emb = embed_store(d.store_path, "ip-adapter-sdxl", d.weights, progress=True)
    return f"{emb.line()} (tiny random ViT encoder written to {d.weights})"


def _pool(d: _Demo) -> str:
    import nfstore
    from nfstore.embeddings import embed_store, register_pool
    from nfstore.leakage import find_leakage
    from nfstore.synth import synthesize

    pool = d.workdir / "raw" / "pool"  # novel images, and (as real pools) a few GOD test images
    synthesize("pool", pool, overwrite=True, seed=d.seed, n=400, image_size=64,
               god=str(d.workdir / "raw" / "god"))
    register_pool(d.store_path, pool, "novel")
    embed_store(d.store_path, "ip-adapter-sdxl", d.weights, stimuli="novel")
    return "leakage: " + INDENT.join(find_leakage(nfstore.open_store(d.store_path)).lines())


def _augment(d: _Demo) -> str:
    from nfstore.augment import AugmentConfig, augment

    aug = augment(d.store_path, "nsd/subj01", AugmentConfig(
        pool="novel", fraction=1.0, noise="lowrank", rank=8, seed=d.seed), overwrite=True)
    return "augment: " + INDENT.join(aug.lines())


def _train(d: _Demo) -> str:
    import shutil

    from nftrain.config import example, load
    from nftrain.train import train

    run = d.workdir / "run"
    if run.exists():
        shutil.rmtree(run)
    cfg = load(d.config or example("demo-cpu"),
               [f"output_dir={json.dumps(str(run))}", f"seed={d.seed}"])
    summary = train(d.store_path, cfg, progress=False)
    return f"train: {summary.exclusion_line()}{INDENT}{summary.line()}"


def _evaluate(d: _Demo) -> str:
    from nftrain.evaluate import evaluate, table, write

    d.metrics = evaluate(d.store_path, d.workdir / "run" / "best", split="test",
                         baseline="ridge")
    write(d.metrics, d.workdir / "metrics.json")
    return (f"evaluate (test split, repeat-averaged; retrieval among each subject's unique test "
            f"images; ridge rows: the closed-form baseline of `nf decode-ridge` on the same "
            f"candidates) -> {d.workdir / 'metrics.json'}"
            + "".join(INDENT + line for line in table(d.metrics).splitlines()))


def _predict(d: _Demo) -> str:
    from nfrecon.decode import predict, refine

    dec = predict(d.store_path, d.workdir / "run" / "best", "demo", include_train=True)
    ref = refine(d.store_path, "demo", "demo-refined")
    return f"predict: {dec.line()}{INDENT}refine: {ref.line()}"


def _reconstruct(d: _Demo) -> str:
    from nfrecon.reconstruct import ReconConfig, reconstruct
    from nfrecon.tiny import write_tiny_models

    d.models = write_tiny_models(d.workdir / "models", seed=d.seed)
    rec = reconstruct(d.store_path, "demo-refined", d.models["sdxl"], d.models["ip_adapter"],
                      "demo-refined", ReconConfig(steps=4, size=64, samples=2, seed=d.seed),
                      subjects=["nsd/subj01", "god/sub-01"], encoder=d.weights, limit=4)
    return (f"reconstruct (tiny random SDXL + IP-Adapter written to {d.workdir / 'models'}; "
            f"2 samples, the one closest to the decoded embedding chosen): {rec.line()}")


def _export(d: _Demo) -> str:
    from nfrecon.export import export_images

    out = d.workdir / "reconstructions"
    files = export_images(d.store_path, "demo-refined", out)
    return (f"export-images: {sum(files.values())} files, grids "
            + ", ".join(str(out / f"{k.replace('/', '_')}_grid.png") for k in files))


def _low_level(d: _Demo) -> str:
    from nfrecon.decode import decode_ridge
    from nfrecon.lowlevel_eval import compare
    from nfrecon.reconstruct import ReconConfig, reconstruct
    from nfstore.lowlevel import embed_pixels

    embed_pixels(d.store_path, size=16)
    decode_ridge(d.store_path, "nsd/subj01", "blurry", embedding="pixels", rescale=True,
                 image_size=64, alphas=(1.0, 10.0, 100.0, 1000.0))
    low = ReconConfig(steps=4, size=64, seed=d.seed)
    sdxl, ip = d.models["sdxl"], d.models["ip_adapter"]
    reconstruct(d.store_path, "demo-refined", sdxl, ip, "demo-embedding-only", low,
                subjects=["nsd/subj01"])
    reconstruct(d.store_path, "demo-refined", sdxl, ip, "demo-img2img",
                replace(low, strength=0.75, blend=0.25), subjects=["nsd/subj01"], init="blurry")
    scores = compare(d.store_path, "nsd/subj01", {
        "blurry (ridge-decoded pixels)": "blurry", "embedding only": "demo-embedding-only",
        "img2img from blurry (strength 0.75)": "demo-img2img",
        "blend 0.25": "demo-img2img-blend0.25"}, 64, d.seed)
    return ("low-level stage, nsd/subj01 (test images; PixCorr / SSIM; the tiny SDXL has "
            "random weights, so only the blurry rows carry signal):"
            + "".join(f"{INDENT}{label:36s} {v['pixcorr']:.3f} / {v['ssim']:.3f}"
                      for label, v in scores.items()))


def _subjects(store: Any) -> tuple[list[str], dict[str, float]]:
    """One line per subject of ``store`` (trials, voxels, ROIs, repeat reliability, synthetic
    sets) and a note; and the repeat reliability of each subject."""
    lines, reliability = [], {}
    for key, row in store.info().items():
        train = store.betas(key, split="train")
        rel = repeat_reliability(train.values, train.stimulus.values, train.repeat.values)
        reliability[key] = rel
        lines.append(
            f"      {key:14s} {row['trials']:4d} trials ({row['train']} train / {row['test']} "
            f"test / {row['imagery']} imagery), {row['voxels']:5d} voxels, {row['rois']:2d} ROIs"
            + (f", repeat reliability {rel:.2f}" if rel == rel else "")
            + "".join(f", +{n} synthetic ({name})" for name, n in row["synthetic"].items()))
    lines.append("      (repeat reliability: correlation between repeats of the same train "
                 "image; 0 without the planted signal)")
    return lines, reliability


STEPS: tuple[Callable[[_Demo], str], ...] = (
    *(partial(_synth, dataset=dataset) for dataset in DATASETS),
    _query, _formats, _embed, _pool, _augment, _train, _evaluate, _predict, _reconstruct, _export,
    _low_level)


def run_demo(workdir: Path, seed: int = 0, echo: Echo = print,
             config: Path | None = None) -> DemoSummary:
    """The whole pipeline on synthetic NSD, BOLD5000, GOD and THINGS (the 15 steps of this
    module's docstring), each reported through ``echo`` as ``[n/15] ...`` when it is done.

    Parameters
    ----------
    workdir : folder for the synthetic trees, the store (``nf.zarr``), the run and outputs
    seed : seed of the synthetic data, training and reconstruction
    echo : called with each step's report (lines joined by newlines)
    config : training config file (default: the ``demo-cpu`` example)
    """
    t0 = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    d = _Demo(workdir, seed, config, workdir / "nf.zarr")
    for n, step in enumerate(STEPS, start=1):
        echo(f"[{n}/{len(STEPS)}] {step(d)}")
    lines, reliability = _subjects(d.store)
    overall = d.metrics["overall"]
    return DemoSummary(d.store_path, time.perf_counter() - t0,
                       float(np.nanmean(list(reliability.values()))),
                       overall["top1_brain_to_image"], overall["chance_top1"], lines)


__all__ = ["DEMO_SIZES", "DemoSummary", "repeat_reliability", "run_demo"]
