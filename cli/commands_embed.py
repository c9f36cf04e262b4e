"""``nf embed``: cache IP-Adapter image embeddings of the store's stimuli."""

from __future__ import annotations

import click
from nf._options import pixel_cache_options, writes_store


@click.command("embed")
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--model", default="ip-adapter-sdxl", show_default=True,
              type=click.Choice(["ip-adapter-sdxl", "ip-adapter-sdxl-vit-h", "pixels",
                                 "sdxl-vae"]))
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
    """Embed every stimulus image of STORE not cached yet (resumable).

    `--model pixels` caches downsampled RGB pixels (`--size`) of every dataset image instead,
    the low-level target of `nf decode-ridge --target pixels`; `--model sdxl-vae --weights
    SDXL_DIR` caches the SDXL VAE's raw latents (`--latent-size`), the target of
    `nf decode-ridge --target sdxl-vae`. `--cache-pixels` also copies the images of the
    `--stimuli` tables into the store (alone, without --weights, it only does that). Options,
    weights and cache are all checked before `--pool` is registered: a failed command leaves
    the store as it was."""
    from nfstore.errors import OptionError

    if pool_dir is not None and not model.startswith("ip-adapter"):
        raise OptionError(f"--pool: registers images for the ip-adapter models; found "
                          f"--model {model}")
    if model == "pixels":
        from nfstore.lowlevel import embed_pixels

        _cache_pixels(store, stimuli, cache_pixels, pixel_size, progress)
        r = embed_pixels(store, size)
        click.echo(f"cached {r['stimuli']} downsampled images ({size} x {size}) as "
                   f"embeddings/pixels in {r['seconds']:.1f} s")
        return
    if weights is None:
        if cache_pixels and model.startswith("ip-adapter") and pool_dir is None:
            _cache_pixels(store, stimuli, cache_pixels, pixel_size, progress)
            return
        raise OptionError(f"--weights: required for --model {model} (the image encoder, or "
                          f"for sdxl-vae a diffusers SDXL folder)")
    if model == "sdxl-vae":
        from nfstore.lowlevel import embed_vae_latents

        _cache_pixels(store, stimuli, cache_pixels, pixel_size, progress)
        r = embed_vae_latents(store, weights, latent_size, batch_size, device, progress)
        click.echo(f"cached the SDXL VAE latents (4 x {latent_size} x {latent_size}) of "
                   f"{r['stimuli']} images as embeddings/sdxl-vae in {r['seconds']:.1f} s")
        return
    from nfstore.embeddings import embed_store

    # options, weights and cache are checked before the pool is registered or anything written
    summary = embed_store(store, model, weights, stimuli=stimuli, pool=pool_dir,
                          pool_name=pool_name, batch_size=batch_size, device=device, dtype=dtype,
                          tokens=tokens, workers=workers, skip_bad=skip_bad, overwrite=overwrite,
                          progress=progress)
    if summary.registered:
        click.echo(f"registered {summary.registered} images of {pool_dir} as {pool_name}/...")
    for line in summary.skipped:
        click.echo(f"skipped {line}", err=True)
    click.echo(summary.line())
    _cache_pixels(store, pool_name if pool_dir is not None and stimuli == "all" else stimuli,
                  cache_pixels, pixel_size, progress)


def _cache_pixels(store: str, stimuli: str, wanted: bool, pixel_size: int | None,
                  progress: bool) -> None:
    """``--cache-pixels``: copy the images of the ``--stimuli`` tables into the store."""
    if not wanted:
        return
    import nfstore
    from nfstore.names import DATASETS
    from nfstore.pixels import cache_pixels as cache

    tables = nfstore.open_store(store).stimulus_tables()
    pick = (None if stimuli == "all" else [t for t in tables if t not in DATASETS]
            if stimuli == "pool" else [stimuli])
    click.echo(cache(store, pick, pixel_size, progress).line())

COMMANDS = [embed]
