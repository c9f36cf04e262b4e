"""``nf train``, ``nf finetune``, ``nf evaluate``."""

from __future__ import annotations

from pathlib import Path

import click
from nf._options import ManyValues, remote_store


@click.command("train")
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML config (see configs/paper.toml, configs/demo-cpu.toml).")
@click.option("--set", "overrides", cls=ManyValues, split_commas=False, metavar="KEY=VALUE",
              help="Override config keys, e.g. epochs=5 'subjects=[\"nsd/subj01\"]'.")
@click.option("--resume", is_flag=True, help="Continue the run in output_dir/last.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@remote_store
def train(store: str, config_file: str | None, overrides: tuple[str, ...] | None, resume: bool,
          progress: bool) -> None:
    """Train a cross-subject decoder on STORE."""
    import os

    from nftrain.config import load
    from nftrain.train import train as run

    cfg = load(config_file, list(overrides or ()))
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun, one line from rank 0
    summary = run(store, cfg, resume=resume, progress=progress and rank0)
    if rank0:
        click.echo(summary.exclusion_line())
        click.echo(summary.line())


@click.command("finetune")
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--checkpoint", "init", required=True, type=click.Path(file_okay=False),
              help="Trained checkpoint folder (e.g. runs/nf/best).")
@click.option("--subjects", cls=ManyValues, required=True, help="New subjects to add.")
@click.option("--fraction", type=float, default=1.0, show_default=True,
              help="Share of the new subjects' training stimuli to use.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML config for the fine-tuning run [the checkpoint's, with new subjects].")
@click.option("--set", "overrides", cls=ManyValues, split_commas=False, metavar="KEY=VALUE")
@click.option("--progress/--no-progress", default=True, show_default=True)
@remote_store
def finetune(store: str, init: str, subjects: tuple[str, ...], fraction: float,
             config_file: str | None, overrides: tuple[str, ...] | None, progress: bool) -> None:
    """Train only new subjects' adapters; backbone and head of --checkpoint stay frozen."""
    from nftrain.finetune import finetune_config
    from nftrain.train import train as run

    cfg = finetune_config(init, list(subjects), fraction, config_file, list(overrides or ()))
    summary = run(store, cfg, init=init, progress=progress)
    click.echo(summary.exclusion_line())
    click.echo(summary.line())


@click.command("evaluate")
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--checkpoint", "ckpt", required=True, type=click.Path(file_okay=False))
@click.option("--split", default="test", show_default=True,
              type=click.Choice(["test", "train", "imagery"]))
@click.option("--subjects", cls=ManyValues, help="Default: every subject of the checkpoint.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="metrics.json")
@click.option("--device", default="cpu", show_default=True)
@click.option("--baseline", type=click.Choice(["ridge"]),
              help="Also score a closed-form ridge per subject on the same candidates.")
@click.option("--allow-store-change", is_flag=True,
              help="Use a checkpoint trained on other data than STORE holds now (a subject "
                   "ingested again, embeddings made with other weights); refused by default.")
@remote_store
def evaluate(store: str, ckpt: str, split: str, subjects: tuple[str, ...] | None,
             out: Path | None, device: str, baseline: str | None,
             allow_store_change: bool) -> None:
    """Retrieval top-1/top-5 (both directions) and cosine on SPLIT, repeat-averaged."""
    from nftrain.evaluate import evaluate as run
    from nftrain.evaluate import table, write

    metrics = run(store, ckpt, split=split, subjects=list(subjects) if subjects else None,
                  device=device, baseline=baseline, allow_store_change=allow_store_change)
    click.echo(table(metrics))
    if out is not None:
        click.echo(f"wrote {write(metrics, out)}")


COMMANDS = [train, finetune, evaluate]
