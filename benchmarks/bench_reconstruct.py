"""``nf reconstruct`` against a bare diffusers loop over the same tiny pipeline and embeddings,
and images/s for one trial per call vs. N samples per call vs. batched trials.

Both sides load the pipeline from the same local folders and run the same calls (one image per
call, CFG 5, the same seeds); ``nf reconstruct`` also reads the decoded set and writes every
image into the store. Run: ``python benchmarks/bench_reconstruct.py`` (CPU, about a minute).
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK  # noqa: E402

ROWS, STEPS, SIZE = 24, 4, 64


def setup() -> tuple[Path, dict[str, Path], np.ndarray]:
    import nfstore
    from nfrecon.decoded import write_decoded
    from nfrecon.tiny import write_tiny_models
    from nfstore.embeddings import embed_store
    from nfstore.synth import synthesize
    from nfstore.tiny import write_tiny_encoder

    base = WORK / "recon"
    shutil.rmtree(base, ignore_errors=True)
    synthesize("nsd", base / "nsd", subjects=(1,), sessions=2, trials_per_session=60,
               images_per_subject=80, shared=ROWS, image_size=32, grid=(12, 14, 12))
    store = base / "nf.zarr"
    nfstore.ingest("nsd", base / "nsd", store)
    embed_store(store, "ip-adapter-sdxl", write_tiny_encoder(base / "enc")["hf"], workers=0)
    st = nfstore.open_store(store)
    test = st.betas("nsd/subj01", split="test", average_repeats=True)
    E = np.asarray(st.embeddings("ip-adapter-sdxl", stimuli=test.stimulus).values, np.float32)
    E += np.random.default_rng(0).normal(0, 0.1, E.shape).astype(np.float32)  # "decoded"
    n = E.shape[0]
    with nfstore.transaction(store, "bench decoded set") as tx:
        write_decoded(tx, "bench", "nsd/subj01", E, test.stimulus.values,
                      np.full(n, "test", object), np.ones(n, bool), np.ones(n, np.int64), {})
    return store, write_tiny_models(base / "models"), E


def bare(models: dict[str, Path], E: np.ndarray) -> float:
    from diffusers import StableDiffusionXLPipeline

    from nfrecon.pipeline import image_seed

    t0 = time.perf_counter()
    pipe = StableDiffusionXLPipeline.from_pretrained(str(models["sdxl"]), local_files_only=True)
    pipe.load_ip_adapter(str(models["ip_adapter"]), subfolder="sdxl_models",
                         weight_name="ip-adapter_sdxl.safetensors", image_encoder_folder=None)
    pipe.set_progress_bar_config(disable=True)
    for row in range(E.shape[0]):
        e = torch.from_numpy(E[row])[None, None]
        pipe(prompt="", ip_adapter_image_embeds=[torch.cat([torch.zeros_like(e), e])],
             num_inference_steps=STEPS, guidance_scale=5.0, height=SIZE, width=SIZE,
             output_type="np", generator=torch.Generator().manual_seed(image_seed(0, row, 0, 1)))
    return time.perf_counter() - t0


def ours(store: Path, models: dict[str, Path], cfg, name: str, encoder=None) -> float:  # noqa: ANN001
    from nfrecon.reconstruct import reconstruct

    t0 = time.perf_counter()
    reconstruct(store, "bench", models["sdxl"], models["ip_adapter"], name, cfg,
                encoder=encoder)
    return time.perf_counter() - t0


def main() -> None:
    from nfrecon.reconstruct import ReconConfig

    store, models, E = setup()
    cfg = ReconConfig(steps=STEPS, size=SIZE, samples=1, batch=1)
    bare(models, E[:2])  # warm-up (imports, allocator)
    t_bare, t_ours = float("inf"), float("inf")
    for k in range(3):  # alternate; best of three
        t_bare = min(t_bare, bare(models, E))
        t_ours = min(t_ours, ours(store, models, cfg, f"one{k}"))
    n = E.shape[0]
    print(f"{n} trials, tiny SDXL + IP-Adapter, {SIZE} px, {STEPS} steps, CFG 5, CPU")
    print(f"  bare diffusers loop (one image per call): {t_bare:.2f} s ({n / t_bare:.1f} img/s)")
    print(f"  nf reconstruct, batch 1               : {t_ours:.2f} s ({n / t_ours:.1f} img/s)")
    print(f"  ratio nf / bare: {t_ours / t_bare:.2f}x (goal <= 1.10x)")
    t_b4 = ours(store, models, replace(cfg, batch=4), "b4")
    enc = WORK / "recon" / "enc" / "hf"
    t_n4 = ours(store, models, replace(cfg, samples=4), "n4", encoder=enc)
    print(f"  nf reconstruct, 4 trials per call     : {n / t_b4:.1f} img/s")
    print(f"  nf reconstruct, 4 samples per call    : {4 * n / t_n4:.1f} img/s (with best-of-4 "
          f"selection by the image encoder)")


if __name__ == "__main__":
    main()
