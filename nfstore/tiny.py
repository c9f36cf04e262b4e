"""Tiny random image encoders for tests and the demo, written in the real on-disk layouts.

``write_tiny_encoder`` builds one small OpenCLIP ViT (random weights, real 1280-d output) and
saves the *same* weights as an open_clip ``local-dir`` folder and as a Hugging Face
``CLIPVisionModelWithProjection`` folder, using the open_clip -> HF weight mapping. Nothing is
downloaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

TINY_VISION = {"image_size": 224, "layers": 2, "width": 64, "head_width": 16, "mlp_ratio": 4.0,
               "patch_size": 32}
TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


def tiny_open_clip(embed_dim: int = 1280, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A small random OpenCLIP model and its model config."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    cfg = {"embed_dim": embed_dim, "vision_cfg": dict(TINY_VISION), "text_cfg": dict(TINY_TEXT)}
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns that the weights are random: they are meant to
    try:
        model = open_clip.create_model("ViT-bigG-14", pretrained=None, **cfg)
    finally:
        root.setLevel(level)
    with torch.no_grad():  # non-trivial LayerNorms, so a wrong mapping cannot go unnoticed
        for name, p in model.visual.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval(), cfg


def to_hf_state(visual_state: dict[str, Any], layers: int) -> dict[str, Any]:
    """Map an open_clip ``visual`` state dict to ``CLIPVisionModelWithProjection`` keys."""
    v = "vision_model."
    out = {
        f"{v}embeddings.patch_embedding.weight": visual_state["conv1.weight"],
        f"{v}embeddings.class_embedding": visual_state["class_embedding"],
        f"{v}embeddings.position_embedding.weight": visual_state["positional_embedding"],
        f"{v}pre_layrnorm.weight": visual_state["ln_pre.weight"],
        f"{v}pre_layrnorm.bias": visual_state["ln_pre.bias"],
        f"{v}post_layernorm.weight": visual_state["ln_post.weight"],
        f"{v}post_layernorm.bias": visual_state["ln_post.bias"],
        "visual_projection.weight": visual_state["proj"].T.contiguous(),
    }
    for i in range(layers):
        src, dst = f"transformer.resblocks.{i}.", f"{v}encoder.layers.{i}."
        for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                     ("mlp.c_proj", "mlp.fc2"), ("attn.out_proj", "self_attn.out_proj")):
            out[f"{dst}{b}.weight"] = visual_state[f"{src}{a}.weight"]
            out[f"{dst}{b}.bias"] = visual_state[f"{src}{a}.bias"]
        for kind in ("weight", "bias"):
            q, k, val = visual_state[f"{src}attn.in_proj_{kind}"].chunk(3)
            out[f"{dst}self_attn.q_proj.{kind}"] = q.contiguous()
            out[f"{dst}self_attn.k_proj.{kind}"] = k.contiguous()
            out[f"{dst}self_attn.v_proj.{kind}"] = val.contiguous()
    return out


def write_tiny_encoder(out: Path, embed_dim: int = 1280, seed: int = 0) -> dict[str, Path]:
    """Write one tiny encoder as ``out/open_clip`` (local-dir), ``out/hf`` (HF folder) and
    ``out/open_clip_model.safetensors`` (a bare weights file); returns the three paths."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    model, cfg = tiny_open_clip(embed_dim, seed)
    state = {k: t.contiguous() for k, t in model.state_dict().items()}
    oc = out / "open_clip"
    oc.mkdir(parents=True, exist_ok=True)
    save_file(state, str(oc / "open_clip_model.safetensors"))
    preprocess = {"image_size": 224, "mean": [0.48145466, 0.4578275, 0.40821073],
                  "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                  "resize_mode": "shortest"}
    (oc / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg,
                                                          "preprocess_cfg": preprocess}))
    save_file(state, str(out / "open_clip_model.safetensors"))

    vis = TINY_VISION
    hf_cfg = CLIPVisionConfig(hidden_size=vis["width"], intermediate_size=int(
        vis["width"] * vis["mlp_ratio"]), num_hidden_layers=vis["layers"],
        num_attention_heads=vis["width"] // vis["head_width"], image_size=vis["image_size"],
        patch_size=vis["patch_size"], projection_dim=embed_dim, hidden_act="gelu",
        layer_norm_eps=1e-5)
    hf = CLIPVisionModelWithProjection(hf_cfg)
    visual = {k[len("visual."):]: t for k, t in state.items() if k.startswith("visual.")}
    missing, unexpected = hf.load_state_dict(to_hf_state(visual, vis["layers"]), strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"open_clip -> HF mapping incomplete: {missing} {unexpected}")
    hf.save_pretrained(str(out / "hf"))
    return {"open_clip": oc, "hf": out / "hf", "file": out / "open_clip_model.safetensors"}
