"""The low-level stage on planted synthetic data (figures in docs/benchmarks.md).

Per seed (0, 1, 2): a small planted NSD store (one subject, tiny image encoder), the tiny
random SDXL + IP-Adapter of ``nf synth models``, then on the subject's test images:
embedding-only reconstruction (ridge-decoded embeddings), the blurry stage (ridge-decoded
16x16 pixels, rescaled), img2img from the blurry images at strengths 0.25 / 0.5 / 0.75, and
MindEye2's blend (0.75 img2img at 0.5 + 0.25 blurry); PixCorr, SSIM and AlexNet(2) 2-way
(random-weight AlexNet: a check of the code path, not a perceptual figure) beside the
shuffled and mean-train-image baselines. The SDXL here has random weights, so the embedding
rows show what an untrained generator does; only the pixel rows carry planted signal.

Run: ``python benchmarks/bench_lowlevel_quality.py [--seeds 0,1,2]``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK  # noqa: E402

SIZE = 64


def one_seed(seed: int) -> dict[str, dict[str, float]]:
    import shutil

    import nfstore
    from nfrecon import metrics as M
    from nfrecon.decode import decode_ridge
    from nfrecon.lowlevel_eval import compare
    from nfrecon.reconstruct import ReconConfig, reconstruct
    from nfrecon.tiny import write_metric_weights, write_tiny_models
    from nfstore.embeddings import embed_store
    from nfstore.lowlevel import embed_pixels
    from nfstore.synth import synthesize
    from nfstore.tiny import write_tiny_encoder

    base = WORK / f"lowlevel_s{seed}"
    shutil.rmtree(base, ignore_errors=True)
    synthesize("nsd", base / "nsd", subjects=(1,), sessions=4, trials_per_session=60,
               images_per_subject=100, shared=20, image_size=SIZE, grid=(12, 14, 12), seed=seed)
    store = base / "nf.zarr"
    nfstore.ingest("nsd", base / "nsd", store)
    embed_store(store, "ip-adapter-sdxl", write_tiny_encoder(base / "enc", seed=seed)["hf"],
                workers=0)
    embed_pixels(store, size=16)
    key = "nsd/subj01"
    decode_ridge(store, key, "ridge")
    decode_ridge(store, key, "blurry", embedding="pixels", rescale=True, image_size=SIZE)
    models = write_tiny_models(base / "models", seed=seed)
    cfg = ReconConfig(steps=8, size=SIZE, seed=seed)
    sets = {"blurry (ridge-decoded pixels)": "blurry"}
    reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], "emb", cfg)
    sets["embedding only"] = "emb"
    for strength in (0.25, 0.5, 0.75):
        name = f"i2i-{strength:g}"
        reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], name,
                    replace(cfg, strength=strength, blend=0.25 if strength == 0.5 else 0.0),
                    init="blurry")
        sets[f"img2img from blurry, strength {strength:g}"] = name
    sets["blend: 0.75 img2img(0.5) + 0.25 blurry"] = "i2i-0.5-blend0.25"
    w = write_metric_weights(base / "metric_weights", seed=seed)
    nets = M.load_networks(M.weight_paths(w["weights"], "mindeye2"), w["clip"], "cpu")
    return compare(store, key, sets, SIZE, seed, networks=nets)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    seeds = [int(s) for s in ap.parse_args().seeds.split(",")]
    runs = [one_seed(s) for s in seeds]
    print(f"low-level stage, planted NSD subject (20 test images, {SIZE} px), mean +- sd over "
          f"seeds {seeds}")
    print(f"  {'':42s} {'PixCorr':>16s} {'SSIM':>16s} {'AlexNet(2) 2-way':>17s}")
    for label in runs[0]:
        cells = []
        for m in ("pixcorr", "ssim", "alexnet2"):
            v = [r[label][m] for r in runs]
            cells.append(f"{np.mean(v):.3f} +- {np.std(v, ddof=1) if len(v) > 1 else 0:.3f}")
        print(f"  {label:42s} " + " ".join(f"{c:>16s}" for c in cells))


if __name__ == "__main__":
    main()
