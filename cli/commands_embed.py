"""``nf embed``: cache image features (any registered featurizer) of the store's stimuli."""

from __future__ import annotations

from typing import Any

import click
from nf._options import pixel_cache_options, writes_store


class FeaturizerChoice(click.Choice):
    """The names of the registered featurizers (:mod:`nfstore.featurizers`), looked up when the
    command runs (installed plugins included), not when the CLI is imported."""

    def __init__(self) -> None:
        super().__init__([])

    @property
    def choices(self) -> Any:
        from nfstore.featurizers import featurizer_names

        return featurizer_names()

    @choices.setter
    def choices(self, value: Any) -> None:
        pass


@click.command("embed")
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--model", default="ip-adapter-sdxl", show_default=True, type=FeaturizerChoice(),
              help="Featurizer: the built-ins or one an installed package registers under the "
                   "entry-point group nfstore.featurizers.")
@click.option("--size", type=click.IntRange(4, 256), default=32, show_default=True,
              help="pixels: downsampled image size (no weights needed).")
@click.option("--latent-size", type=click.IntRange(4, 128), default=28, show_default=True,
              help="sdxl-vae: latent side (images resized to 8x: 28 -> 224 px, 4x28x28).")
@click.option("--weights", type=click.Path(),
              help="Image encoder: HF CLIPVisionModelWithProjection folder, open_clip folder or "
                   "weights file, or the root of a local h94/IP-Adapter copy.")
@click.option("--stimuli", default="all", show_default=True,
              help="all, nsd, bold5000, god, pool (every pool) or a pool name.")
@click.option("--pool", "pool_dir", type=click.Path(file_okay=False),
              help="Register this folder of novel images first (with --pool-name).")
@click.option("--pool-name", default="pool", show_default=True,
              help="Stimulus id prefix of --pool images: NAME/<relative path stem>.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N] (fp16 on CUDA).")
@click.option("--workers", type=click.IntRange(0), default=2, show_default=True,
              help="DataLoader processes decoding images.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Stored precision.")
@click.option("--tokens", is_flag=True,
              help="Cache penultimate hidden states (IP-Adapter plus) as <model>-tokens.")
@click.option("--skip-bad", is_flag=True, help="Report unreadable images and go on.")
@click.option("--overwrite", is_flag=True, help="Replace a cache made with other weights.")
@pixel_cache_options
@click.option("--progress/--no-progress", default=True, show_default=True)
@writes_store()
def embed(store: str, model: str, size: int, latent_size: int, weights: str | None,
          stimuli: str,
          pool_dir: str | None,
          pool_name: str, batch_size: int, device: str, workers: int, dtype: str, tokens: bool,
          skip_bad: bool, overwrite: bool, cache_pixels: bool, pixel_size: int | None,
          progress: bool) -> None:
    """Embed every stimulus image of STORE not cached yet with a featurizer (resumable).

    `--model pixels` caches downsampled RGB pixels (`--size`) of every dataset image instead,
    the low-level target of `nf decode-ridge --target pixels`; `--model sdxl-vae --weights
    SDXL_DIR` caches the SDXL VAE's raw latents (`--latent-size`), the target of
    `nf decode-ridge --target sdxl-vae`. A cache made with other weights needs `--overwrite`
    (weightless ones such as pixels are rebuilt). `--cache-pixels` also copies the images of
    the `--stimuli` tables into the store (alone, without --weights, it only does that).
    Options, weights and cache are all checked before `--pool` is registered: a failed command
    leaves the store as it was."""
    from nfstore.embeddings import embed_store

    # options, weights and cache are checked before the pool is registered or anything written
    summary = embed_store(store, model, weights, options={"size": size, "latent_size": latent_size,
                                                          "tokens": tokens},
                          stimuli=stimuli, pool=pool_dir, pool_name=pool_name,
                          batch_size=batch_size, device=device, dtype=dtype, workers=workers,
                          skip_bad=skip_bad, overwrite=overwrite, progress=progress,
                          cache_pixels=cache_pixels, pixel_size=pixel_size)
    if summary.registered:
        click.echo(f"registered {summary.registered} images of {pool_dir} as {pool_name}/...")
    for line in summary.skipped:
        click.echo(f"skipped {line}", err=True)
    if summary.pixels:
        click.echo(summary.pixels)
    if summary.ran:
        click.echo(summary.line())


COMMANDS = [embed]
