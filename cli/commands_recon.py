"""``nf predict``, ``nf decode-ridge``, ``nf refine``, ``nf reconstruct``, ``nf export-images``."""

from __future__ import annotations

import math

import click
from nf._options import ManyValues, remote_store, writes_store

SPLIT = click.Choice(["test", "train", "imagery"])


@click.command("predict")
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--checkpoint", "ckpt", required=True, type=click.Path(file_okay=False))
@click.option("--name", required=True, help="Decoded set: /decoded/NAME/<subject>.")
@click.option("--subjects", cls=ManyValues, help="Default: every subject of the checkpoint.")
@click.option("--split", default="test", show_default=True, type=SPLIT)
@click.option("--single-trials", is_flag=True, help="One row per trial (default: per stimulus).")
@click.option("--refine", "refine_name", help="Also fit the refinement on the checkpoint's "
              "held-out train pictures and write it as this decoded set.")
@click.option("--no-rescale", is_flag=True, help="Refinement: keep output norms.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--allow-store-change", is_flag=True,
              help="Use a checkpoint trained on other data than STORE holds now (a subject "
                   "ingested again, embeddings made with other weights); refused by default.")
@writes_store()
def predict(store: str, ckpt: str, name: str, subjects: tuple[str, ...] | None, split: str,
            single_trials: bool, refine_name: str | None, no_rescale: bool, device: str,
            allow_store_change: bool) -> None:
    """Decode held-out trials with a checkpoint into embeddings in the store."""
    from nfrecon.decode import predict as run
    from nfrecon.decode import refine

    click.echo(run(store, ckpt, name, subjects=list(subjects) if subjects else None,
                   split=split, single_trials=single_trials, include_train=bool(refine_name),
                   device=device, allow_store_change=allow_store_change).line())
    if refine_name:
        click.echo(refine(store, name, refine_name, rescale=not no_rescale).line())


@click.command("decode-ridge")
@click.argument("store", type=click.Path(file_okay=False))
@click.argument("subject")
@click.option("--name", required=True, help="Decoded set: /decoded/NAME/<subject>.")
@click.option("--alphas", cls=ManyValues, help="Candidate alphas [1e0 .. 1e6, 13 values].")
@click.option("--cv", type=click.IntRange(2), default=5, show_default=True)
@click.option("--split", default="test", show_default=True, type=SPLIT)
@click.option("--roi", help="ROI of the betas [all voxels].")
@click.option("--embedding", "--target", "embedding", default="ip-adapter-sdxl",
              show_default=True, help="Targets: an embedding cache, or the low-level pixels "
              "or sdxl-vae (`nf embed --model ...`: also writes the blurry images as a "
              "reconstruction set NAME).")
@click.option("--vae", type=click.Path(), help="sdxl-vae target: SDXL folder whose VAE decodes "
              "the predictions [the one the latents were cached with].")
@click.option("--rescale", is_flag=True,
              help="Map each target's predictions to the train targets' mean and std.")
@click.option("--image-size", type=click.IntRange(8), default=128, show_default=True,
              help="pixels / sdxl-vae target: size of the blurry images.")
@writes_store()
def decode_ridge(store: str, subject: str, name: str, alphas: tuple[str, ...] | None, cv: int,
                 split: str, roi: str | None, embedding: str, rescale: bool,
                 image_size: int, vae: str | None) -> None:
    """Closed-form ridge baseline: SUBJECT's train betas -> embeddings, per-target CV alphas."""
    from nfrecon.decode import decode_ridge as run
    from nfrecon.pipeline import SIZE_MAX
    from nfstore.decoding import DEFAULT_ALPHAS
    from nfstore.errors import OptionError

    try:
        grid = tuple(float(a) for a in alphas) if alphas else DEFAULT_ALPHAS
    except ValueError:
        raise OptionError(f"alphas: expected numbers; found {list(alphas or ())}") from None
    bad = [a for a in grid if not math.isfinite(a) or a <= 0]
    if bad:
        raise OptionError(f"alphas: expected finite numbers > 0; found {bad}")
    if image_size > SIZE_MAX:
        raise OptionError(f"image_size: expected at most {SIZE_MAX} (pixels); found "
                          f"{image_size}")
    click.echo(run(store, subject, name, alphas=grid, cv=cv, split=split, roi=roi,
                   embedding=embedding, rescale=rescale, image_size=image_size, vae=vae).line())


@click.command("refine")
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--decoded", required=True, help="Decoded set with out-of-sample train rows.")
@click.option("--name", required=True, help="Name of the refined decoded set.")
@click.option("--no-rescale", is_flag=True, help="Keep output norms.")
@writes_store()
def refine(store: str, decoded: str, name: str, no_rescale: bool) -> None:
    """The paper's refinement: a subject-agnostic ridge from decoded to true embeddings,
    fitted on out-of-sample train rows only (never test)."""
    from nfrecon.decode import refine as run

    click.echo(run(store, decoded, name, rescale=not no_rescale).line())


@click.command("reconstruct")
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--decoded", help="Decoded set to reconstruct from (with --from-embeddings: "
              "optional; without it the --split stimuli of --subjects, default every subject).")
@click.option("--sdxl", required=True, type=click.Path(), help="Local diffusers SDXL folder "
              "(model_index.json, unet/, vae/, ...) or a single .safetensors file.")
@click.option("--sdxl-config", type=click.Path(), help="With a single-file --sdxl: a local "
              "diffusers SDXL folder for the configs and tokenizers (weights not needed).")
@click.option("--ip-adapter", required=True, type=click.Path(),
              help="Local h94/IP-Adapter copy (sdxl_models/ip-adapter_sdxl.{safetensors,bin}).")
@click.option("--name", help="Reconstruction set [<decoded>, <decoded>-oracle, or oracle "
              "with --from-embeddings and no --decoded].")
@click.option("--subjects", cls=ManyValues)
@click.option("--split", default="test", show_default=True, type=SPLIT)
@click.option("--steps", type=click.IntRange(1), default=30, show_default=True)
@click.option("--guidance", type=float, default=5.0, show_default=True)
@click.option("--ip-scale", type=float, default=1.0, show_default=True)
@click.option("--size", type=click.IntRange(8), default=1024, show_default=True)
@click.option("--samples", type=click.IntRange(1), default=1, show_default=True,
              help="Images per trial; the one closest to the DECODED embedding is chosen.")
@click.option("--encoder", type=click.Path(), help="Image encoder of `nf embed` (for --samples).")
@click.option("--scheduler", type=click.Choice(["euler", "ddpm", "ddim", "dpm"]),
              default="euler", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=4, show_default=True,
              help="Trials per pipeline call (the same images as one per call).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]),
              default="auto", show_default=True, help="auto: float16 on CUDA, else float32.")
@click.option("--init", help="img2img from this low-level set: a reconstruction set (the "
              "blurry stage) or a decoded set of sdxl-vae latents.")
@click.option("--init-kind", type=click.Choice(["auto", "images", "latents"]), default="auto",
              show_default=True, help="An sdxl-vae decode-ridge set has both: auto takes the "
              "latents.")
@click.option("--strength", type=click.FloatRange(0, 1, min_open=True), default=0.75,
              show_default=True, help="img2img strength (with --init), diffusers' convention: "
              "int(steps x strength) denoising steps run, from the init noised to that level.")
@click.option("--blend", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              show_default=True, help="Also write MindEye2's pixel blend (1-w) x image + w x "
              "init image as the set <name>-blend<w> (needs --init images).")
@click.option("--from-embeddings", is_flag=True,
              help="Reconstruct from the true cached embeddings: the oracle row.")
@click.option("--limit", type=click.IntRange(1), help="At most this many rows per subject.")
@click.option("--overwrite", is_flag=True, help="Replace a finished set made with other "
              "settings (it stays readable until the new one is complete). A rerun with the "
              "same settings does nothing.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@writes_store()
def reconstruct(store: str, decoded: str | None, sdxl: str, sdxl_config: str | None,
                ip_adapter: str, name: str | None, subjects: tuple[str, ...] | None, split: str,
                encoder: str | None, from_embeddings: bool, limit: int | None, progress: bool,
                init: str | None, init_kind: str, overwrite: bool, **params: object) -> None:
    """Images from decoded embeddings with SDXL + IP-Adapter (local weights only)."""
    from nfrecon.reconstruct import ReconConfig, ReconOptions, reconstruct_sets
    from nfstore.errors import NFError

    opts = ReconOptions(sdxl=sdxl, ip_adapter=ip_adapter, decoded=decoded, name=name,
                        subjects=list(subjects) if subjects else None, split=split,
                        encoder=encoder, from_embeddings=from_embeddings, limit=limit,
                        sdxl_config=sdxl_config, init=init, init_kind=init_kind,
                        overwrite=overwrite, progress=progress)
    try:
        summary = reconstruct_sets(store, opts, ReconConfig(**params))  # type: ignore[arg-type]
    except NFError as err:  # the library names a switch `overwrite=True`: here a flag
        text = _flag_switches(str(err))
        if text == str(err):
            raise
        raise type(err)(text) from None
    click.echo(summary.line())


def _flag_switches(message: str) -> str:
    """``overwrite=True`` -> ``--overwrite`` (a library keyword switch named as its flag)."""
    import re

    return re.sub(r"\b([a-z_]+)=True\b", lambda m: "--" + m[1].replace("_", "-"), message)


@click.command("export-images")
@click.argument("store", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--reconstructions", "name", required=True)
@click.option("--subjects", cls=ManyValues)
@click.option("--max-rows", type=click.IntRange(1), default=16, show_default=True)
@remote_store
def export_images(store: str, out: str, name: str, subjects: tuple[str, ...] | None,
                  max_rows: int) -> None:
    """PNGs of a reconstruction set and a grid figure per subject (ground truth first)."""
    from nfrecon.export import export_images as run

    counts = run(store, name, out, list(subjects) if subjects else None, max_rows)
    click.echo(f"wrote {sum(counts.values())} files to {out} ("
               + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ")")


@click.command("metrics")
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--reconstructions", "name", required=True)
@click.option("--weights", required=True, type=click.Path(file_okay=False),
              help="Folder with alexnet-owt-7be5be79.pth, inception_v3_google-0cc3c7bd.pth, "
                   "efficientnet_b1-c27df63c.pth (brain-diffuser: efficientnet_b1_rwightman-"
                   "bac287d4.pth) and swav_800ep_pretrain.pth.tar.")
@click.option("--clip", required=True, type=click.Path(),
              help="CLIP ViT-L/14: Hugging Face folder, open_clip folder (open_clip_config.json "
                   "+ open_clip_pytorch_model.bin or open_clip_model.safetensors, as on model "
                   "hubs) or open_clip ViT-L-14-quickgelu file.")
@click.option("--variant", type=click.Choice(["mindeye2", "brain-diffuser"]),
              default="mindeye2", show_default=True)
@click.option("--subjects", cls=ManyValues)
@click.option("--oracle", help="Reconstruction set from the true embeddings (the oracle row).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Bootstrap and shuffled-baseline seed.")
@click.option("--out", type=click.Path(dir_okay=False), help="metrics.json")
@click.option("--table", "table_dir", type=click.Path(file_okay=False),
              help="Print the paper-layout table and write metrics_table.{md,html} here.")
@click.option("--label", default="NeuroFusion", show_default=True, help="Row label of ours.")
@click.option("--classifier", type=click.Path(),
              help="vit_h_14_swag-80465313.pth (torchvision vit_h_14): adds the paper's 50-way "
                   "Top-1 acc.")
@click.option("--sdxl", type=click.Path(), help="SDXL folder or single .safetensors: adds the "
              "ground truth through its VAE and back (the low-level ceiling).")
@click.option("--sdxl-config", type=click.Path(), help="With a single-file --sdxl: its "
              "diffusers config folder.")
@click.option("--figures", "figures_dir", type=click.Path(file_okay=False),
              help="Write a reconstruction grid per subject and the metric chart here.")
@remote_store
def metrics(store: str, name: str, weights: str, clip: str, variant: str,
            subjects: tuple[str, ...] | None, oracle: str | None, device: str, seed: int,
            out: str | None, table_dir: str | None, label: str, classifier: str | None,
            sdxl: str | None, sdxl_config: str | None, figures_dir: str | None) -> None:
    """PixCorr, SSIM, AlexNet(2/5), Inception, CLIP, EffNet-B, SwAV of a reconstruction set,
    exactly as MindEye2's (default) or Brain-Diffuser's code computes them, with baselines."""
    from nfrecon.metrics_run import run_metrics

    for line in run_metrics(store, name, weights, clip, classifier=classifier, out=out,
                            table_dir=table_dir, figures_dir=figures_dir, label=label,
                            variant=variant, subjects=list(subjects) if subjects else None,
                            oracle=oracle, device=device, seed=seed, sdxl=sdxl,
                            sdxl_config=sdxl_config, progress=True):
        click.echo(line)


COMMANDS = [predict, decode_ridge, refine, reconstruct, export_images, metrics]
