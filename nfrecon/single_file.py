"""A diffusers SDXL folder written as one checkpoint in the original Stability AI key layout
(the layout of ``sd_xl_base_1.0.safetensors``): ``model.diffusion_model.*`` (LDM UNet),
``first_stage_model.*`` (LDM VAE), ``conditioner.embedders.0.transformer.*`` (CLIP ViT-L text
model, Hugging Face names) and ``conditioner.embedders.1.model.*`` (OpenCLIP bigG text model,
fused ``in_proj`` attention, ``text_projection`` as ``(width, proj)``).

Used by ``nf synth models --single-file`` so that the single-file loading path of
``nf reconstruct`` is tested on the layout real users have. The mapping follows the LDM module
numbering for any number of levels (``input_blocks``: ``conv_in``, then per level
``layers_per_block`` resnet[+attention] blocks and a downsampler except at the last level).
"""

from __future__ import annotations

import json
from pathlib import Path

UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
          "conv_shortcut": "skip_connection"}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPENCLIP = (("text_model.encoder.layers.", "transformer.resblocks."), ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"), (".fc1.", ".c_fc."), (".fc2.", ".c_proj."),
            (".self_attn.", ".attn."))
OPENCLIP_FIXED = {"text_model.embeddings.position_embedding.weight": "positional_embedding",
                  "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                  "text_model.final_layer_norm.weight": "ln_final.weight",
                  "text_model.final_layer_norm.bias": "ln_final.bias"}


def _swap(name: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        name = name.replace(f".{old}.", f".{new}.")
    return name


def _level(prefix: dict[str, str], hf: str, ldm: str, first: int, count: int,
           attention: bool) -> None:
    """``count`` resnet (+ attention) blocks of one UNet level: ``ldm.{first + j}.0|1``."""
    for j in range(count):
        prefix[f"{hf}.resnets.{j}."] = f"{ldm}.{first + j}.0."
        if attention:
            prefix[f"{hf}.attentions.{j}."] = f"{ldm}.{first + j}.1."


def unet_key_map(keys: list[str], config: dict) -> dict[str, str]:
    """Diffusers UNet key -> LDM key, for ``UNet2DConditionModel`` ``config``."""
    L, n = int(config["layers_per_block"]), len(config["block_out_channels"])
    down_attn = ["CrossAttn" in t for t in config["down_block_types"]]
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    prefix: dict[str, str] = {}
    for i in range(n):
        _level(prefix, f"down_blocks.{i}", "input_blocks", 1 + i * (L + 1), L, down_attn[i])
        if i < n - 1:
            prefix[f"down_blocks.{i}.downsamplers.0.conv."] = (
                f"input_blocks.{(i + 1) * (L + 1)}.0.op.")
        _level(prefix, f"up_blocks.{i}", "output_blocks", i * (L + 1), L + 1, up_attn[i])
        if i < n - 1:
            prefix[f"up_blocks.{i}.upsamplers.0."] = (
                f"output_blocks.{i * (L + 1) + L}.{2 if up_attn[i] else 1}.")
    prefix.update({"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.":
                   "middle_block.1.", "mid_block.resnets.1.": "middle_block.2."})
    out = {}
    for k in keys:
        head, _, leaf = k.rpartition(".")
        if head in UNET_FIXED:
            out[k] = f"{UNET_FIXED[head]}.{leaf}"
            continue
        hit = next((p for p in prefix if k.startswith(p)), None)
        if hit is None:
            raise KeyError(f"UNet key {k!r} has no LDM name")
        rest = k[len(hit):]
        if ".resnets." in hit:
            first, _, tail = rest.partition(".")
            rest = f"{RESNET.get(first, first)}.{tail}"
        out[k] = prefix[hit] + rest
    return out


def vae_key_map(keys: list[str], config: dict) -> dict[str, str]:
    """Diffusers ``AutoencoderKL`` key -> LDM key (``encoder.down.i.block.j``, ``mid.attn_1``)."""
    n = len(config["block_out_channels"])
    out = {}
    for k in keys:
        v = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        parts = v.split(".")
        if parts[1] in ("down_blocks", "up_blocks"):
            level = int(parts[2]) if parts[1] == "down_blocks" else n - 1 - int(parts[2])
            kind = parts[3]
            head = f"{parts[0]}.{'down' if parts[1] == 'down_blocks' else 'up'}.{level}"
            if kind == "resnets":
                v = f"{head}.block.{parts[4]}." + ".".join(parts[5:])
            else:  # downsamplers.0 / upsamplers.0
                v = f"{head}.{kind[:-2]}." + ".".join(parts[5:])
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                v = f"{parts[0]}.mid.block_{int(parts[3]) + 1}." + ".".join(parts[4:])
            else:
                v = _swap(f"{parts[0]}.mid.attn_1." + ".".join(parts[4:]), VAE_ATTN)
        out[k] = v
    return out


def openclip_state(state: dict) -> dict:
    """Hugging Face ``CLIPTextModelWithProjection`` state -> OpenCLIP text-model state."""
    import torch

    out, qkv = {}, {}
    for k, v in state.items():
        if k in OPENCLIP_FIXED:
            out[OPENCLIP_FIXED[k]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.T.contiguous()
        elif "position_ids" in k:
            continue
        else:
            for old, new in OPENCLIP:
                k = k.replace(old, new)
            for part in ("q", "k", "v"):
                for leaf in ("weight", "bias"):
                    if k.endswith(f".attn.{part}_proj.{leaf}"):
                        base = k[: -len(f"{part}_proj.{leaf}")]
                        qkv.setdefault((base, leaf), {})[part] = v
                        break
                else:
                    continue
                break
            else:
                out[k] = v
    for (base, leaf), d in qkv.items():
        out[f"{base}in_proj_{leaf}"] = torch.cat([d["q"], d["k"], d["v"]])
    return out


def write_single_file(sdxl_dir: Path, out_file: Path) -> Path:
    """Write the diffusers SDXL folder ``sdxl_dir`` as one original-layout ``.safetensors``."""
    from safetensors.torch import load_file, save_file

    sdxl_dir, out_file = Path(sdxl_dir), Path(out_file)

    def part(name: str, file: str) -> tuple[dict, dict]:
        cfg = json.loads((sdxl_dir / name / "config.json").read_text())
        return load_file(str(sdxl_dir / name / file)), cfg

    unet, ucfg = part("unet", "diffusion_pytorch_model.safetensors")
    vae, vcfg = part("vae", "diffusion_pytorch_model.safetensors")
    te1, _ = part("text_encoder", "model.safetensors")
    te2, _ = part("text_encoder_2", "model.safetensors")
    state = {f"model.diffusion_model.{v}": unet[k]
             for k, v in unet_key_map(list(unet), ucfg).items()}
    for k, v in vae_key_map(list(vae), vcfg).items():
        w = vae[k]
        if ".mid.attn_1." in v and v.endswith(".weight") and w.ndim == 2:
            w = w[:, :, None, None]  # LDM attention projections are 1x1 convolutions
        state[f"first_stage_model.{v}"] = w
    state.update({f"conditioner.embedders.0.transformer."
                  f"{k if k.startswith('text_model.') else 'text_model.' + k}": v
                  for k, v in te1.items() if "position_ids" not in k})
    state.update({f"conditioner.embedders.1.model.{k}": v for k, v in openclip_state(te2).items()})
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_file))
    return out_file
