"""GPU check (one CUDA GPU, no downloads): real-size SDXL UNet and VAE from shipped configs with
random weights, a real-size IP-Adapter, tiny text encoders (the prompt is empty; the UNet only
needs 768 + 1280-wide text states). Reports 1024 px images/s at 30 steps in fp16 with CFG, the
UNet's FLOPs per image (torch's FlopCounterMode on one CFG forward, times the steps), and so
the achieved fraction of the GPU's bf16/fp16 dense peak (``--peak-tflops``, H200: 989).

Run: ``python benchmarks/gpu/bench_sdxl.py [--images 8] [--peak-tflops 989]``.
Not run yet: no GPU has been lent to this project's sessions so far.
"""

from __future__ import annotations

import argparse
import time

import torch

UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, use_linear_projection=True)
VAE = dict(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3,
           latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=1024,
           scaling_factor=0.13025, force_upcast=False)


def build(device: str):  # noqa: ANN201
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from nfrecon.tiny import _tokenizer, ip_adapter_state

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET)
    vae = AutoencoderKL(**VAE)
    t1 = CLIPTextConfig(hidden_size=768, intermediate_size=768, num_attention_heads=12,
                        num_hidden_layers=1, vocab_size=1000, projection_dim=768)
    t2 = CLIPTextConfig(hidden_size=1280, intermediate_size=1280, num_attention_heads=20,
                        num_hidden_layers=1, vocab_size=1000, projection_dim=1280)
    import tempfile
    from pathlib import Path

    tok = _tokenizer(Path(tempfile.mkdtemp()) / "tok")
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(t1), text_encoder_2=CLIPTextModelWithProjection(t2),
        tokenizer=tok, tokenizer_2=tok, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                         beta_schedule="scaled_linear", steps_offset=1,
                                         timestep_spacing="leading"))
    pipe.load_ip_adapter(ip_adapter_state(unet), subfolder=None, weight_name=None,
                         image_encoder_folder=None)
    return pipe.to(device, torch.float16)


def unet_flops(pipe, device: str) -> float:  # noqa: ANN001
    """FLOPs of one UNet forward with CFG (batch 2) at a 128 x 128 latent."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 4, 128, 128, device=device, dtype=torch.float16)
    text = torch.randn(2, 77, 2048, device=device, dtype=torch.float16)
    ip = torch.randn(2, 1, 1280, device=device, dtype=torch.float16)
    cond = {"text_embeds": torch.randn(2, 1280, device=device, dtype=torch.float16),
            "time_ids": torch.zeros(2, 6, device=device, dtype=torch.float16),
            "image_embeds": [ip]}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe.unet(x, torch.tensor(500, device=device), encoder_hidden_states=text,
                  added_cond_kwargs=cond)
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    device = "cuda"
    pipe = build(device)
    pipe.set_progress_bar_config(disable=True)
    flops = unet_flops(pipe, device) * args.steps
    e = torch.randn(1, 1, 1280, device=device, dtype=torch.float16)
    embeds = [torch.cat([torch.zeros_like(e), e])]

    def one() -> None:
        pipe(prompt="", ip_adapter_image_embeds=embeds, num_inference_steps=args.steps,
             guidance_scale=5.0, height=1024, width=1024, output_type="np")

    one()  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.images):
        one()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.images
    print(f"SDXL UNet (real size, random weights) + IP-Adapter, 1024 px, {args.steps} steps, "
          f"CFG, fp16: {1 / dt:.3f} images/s ({dt:.2f} s per image, VAE decode included)")
    print(f"UNet FLOPs per image: {flops / 1e12:.1f} TFLOP; achieved {flops / dt / 1e12:.0f} "
          f"TFLOP/s = {flops / dt / 1e12 / args.peak_tflops:.2f} of a {args.peak_tflops:.0f} "
          f"TFLOP/s peak (the UNet share of the time is below 1: VAE and scheduler included)")
    metrics_on_gpu()


def metrics_on_gpu(n: int = 1000) -> None:
    """The eight metrics on n image pairs at 425 px on the GPU (random weights, tiny CLIP)."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from nfrecon import metrics as M
    from nfrecon.tiny import write_metric_weights

    w = write_metric_weights(Path(tempfile.mkdtemp()))
    nets = M.load_networks(M.weight_paths(w["weights"], "mindeye2"), w["clip"], "cuda")
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (n, 425, 425, 3), dtype=np.uint8)
    rec = rng.integers(0, 256, (n, 425, 425, 3), dtype=np.uint8)
    M.image_metrics(gt[:8], rec[:8], nets, "mindeye2", "cuda")
    t0 = time.perf_counter()
    M.image_metrics(gt, rec, nets, "mindeye2", "cuda")
    dt = time.perf_counter() - t0
    print(f"all eight metrics on {n} pairs at 425 px, CUDA: {n / dt:.1f} pairs/s")
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from bench_metrics import naive_seconds_per_pair

    t_naive = naive_seconds_per_pair(nets, gt[:100], rec[:100], "cuda")
    print(f"  naive, one pair at a time (100 pairs), CUDA: {1 / t_naive:.1f} pairs/s; ratio "
          f"batched / naive {t_naive * n / dt:.2f}x (goal >= 5x)")


if __name__ == "__main__":
    main()
