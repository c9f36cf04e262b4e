"""``nf demo``: the pipeline on synthetic data, CPU, minutes."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("nf-demo"), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def demo(workdir: Path, seed: int) -> None:
    """Synthesize NSD, BOLD5000, GOD and THINGS; ingest, query, embed, augment, train, evaluate,
    predict, reconstruct and export, on CPU; print each step and a summary."""
    from nfrecon.demo import run_demo

    summary = run_demo(workdir, seed=seed, echo=click.echo)
    for line in summary.lines():
        click.echo(line)


COMMANDS = [demo]
