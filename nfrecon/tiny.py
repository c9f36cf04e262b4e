"""Tiny SDXL + IP-Adapter with random weights, saved in the real on-disk layouts
(``nf synth models OUT``), so tests and the demo load them through the code path real weights
take: a diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder*/``,
``tokenizer*/``, ``scheduler/``) and an h94-style IP-Adapter folder
(``sdxl_models/ip-adapter_sdxl.safetensors``). Recipe: diffusers' fast-test components, with an
offline tokenizer and the real 1280-d image embedding."""

from __future__ import annotations

import json
from pathlib import Path

EMBED_DIM = 1280
TEXT_WIDTHS = (32, 48)  # CLIP-L and OpenCLIP-bigG stand-ins; they differ, as 768 and 1280 do
CROSS_DIM = sum(TEXT_WIDTHS)
CHANNELS = (32, 64)


def _tokenizer(folder: Path):  # noqa: ANN202
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for t in letters + [f"{c}</w>" for c in letters]:
        vocab[t] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return CLIPTokenizer.from_pretrained(str(folder))


def tiny_pipeline(work: Path, seed: int = 0):  # noqa: ANN201
    """A tiny ``StableDiffusionXLPipeline`` (random weights, seeded)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=CHANNELS, layers_per_block=1, sample_size=8, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + TEXT_WIDTHS[1], cross_attention_dim=CROSS_DIM,
        norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4,
                        norm_num_groups=8, sample_size=16)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    text = [CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=2, hidden_size=w,
                           intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
                           num_hidden_layers=2, vocab_size=1000, hidden_act="gelu",
                           projection_dim=w) for w in TEXT_WIDTHS]
    tok = _tokenizer(work / "tok")
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(text[0]),
        text_encoder_2=CLIPTextModelWithProjection(text[1]),
        tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=scheduler, image_encoder=None,
        feature_extractor=None)


def ip_adapter_state(unet, seed: int = 0) -> dict[str, dict]:  # noqa: ANN001
    """An IP-Adapter state dict in the h94 layout for ``unet`` (``image_proj`` + ``ip_adapter``)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    chans = list(unet.config.block_out_channels)
    ip, k = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = chans[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(chans))[int(name.split(".")[1])]
        else:
            hidden = chans[int(name.split(".")[1])]
        cross = unet.config.cross_attention_dim
        ip[f"{k}.to_k_ip.weight"] = torch.randn(hidden, cross, generator=g) * 0.1
        ip[f"{k}.to_v_ip.weight"] = torch.randn(hidden, cross, generator=g) * 0.1
        k += 2
    cross = unet.config.cross_attention_dim
    proj = {"proj.weight": torch.randn(4 * cross, EMBED_DIM, generator=g) * 0.05,
            "proj.bias": torch.zeros(4 * cross), "norm.weight": torch.ones(cross),
            "norm.bias": torch.zeros(cross)}
    return {"image_proj": proj, "ip_adapter": ip}


def write_tiny_models(out: Path, seed: int = 0) -> dict[str, Path]:
    """Write ``out/sdxl`` (diffusers folder), the same weights as one original-layout
    checkpoint ``out/sdxl-single/sdxl.safetensors``, and ``out/ip-adapter`` (h94 layout)."""
    from safetensors.torch import save_file

    from nfrecon.single_file import write_single_file

    out = Path(out)
    pipe = tiny_pipeline(out / "_tmp", seed)
    pipe.save_pretrained(str(out / "sdxl"))
    state = ip_adapter_state(pipe.unet, seed)
    flat = {f"{group}.{k}": v.contiguous() for group, d in state.items() for k, v in d.items()}
    (out / "ip-adapter" / "sdxl_models").mkdir(parents=True, exist_ok=True)
    save_file(flat, str(out / "ip-adapter" / "sdxl_models" / "ip-adapter_sdxl.safetensors"))
    import shutil

    shutil.rmtree(out / "_tmp", ignore_errors=True)
    single = write_single_file(out / "sdxl", out / "sdxl-single" / "sdxl.safetensors")
    return {"sdxl": out / "sdxl", "ip_adapter": out / "ip-adapter", "sdxl_single": single}


def write_metric_weights(out: Path, seed: int = 0) -> dict[str, Path]:
    """Random-weight stand-ins for the metric networks under their real file names
    (``out/weights``), and a tiny CLIP vision model in the Hugging Face layout (``out/clip``).
    Random-init BatchNorm statistics make Inception/EfficientNet features huge or constant:
    values computed with these are only checks of the code path."""
    import torch
    import torchvision.models as tvm
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from nfrecon.metrics import WEIGHT_FILES

    out = Path(out)
    w = out / "weights"
    w.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(tvm.alexnet(weights=None).state_dict(), w / WEIGHT_FILES["alexnet"])
    torch.save(tvm.inception_v3(weights=None, aux_logits=True, init_weights=True).state_dict(),
               w / WEIGHT_FILES["inception"])
    eff = tvm.efficientnet_b1(weights=None).state_dict()
    torch.save(eff, w / WEIGHT_FILES["effnet-mindeye2"])
    torch.save(eff, w / WEIGHT_FILES["effnet-brain-diffuser"])
    torch.save({f"module.{k}": v for k, v in tvm.resnet50(weights=None).state_dict().items()
                if not k.startswith("fc.")}, w / WEIGHT_FILES["swav"])
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        image_size=224, patch_size=32, projection_dim=768)).save_pretrained(str(out / "clip"))
    return {"weights": w, "clip": out / "clip"}
