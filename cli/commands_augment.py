"""``nf augment``: ridge-synthesized trials for novel images."""

from __future__ import annotations

from pathlib import Path

import click
from nf._options import ManyValues, writes_store


@click.command("augment")
@click.argument("store", type=click.Path(file_okay=False))
@click.argument("subject")
@click.option("--pool", required=True, help="Pool (or dataset) whose embedded images to use.")
@click.option("--n", type=int, help="Number of synthetic trials.")
@click.option("--fraction", type=float, help="Synthetic trials as a fraction of train trials.")
@click.option("--noise", type=click.Choice(["gaussian", "lowrank", "paper-histogram"]),
              default="gaussian", show_default=True,
              help="paper-histogram reproduces the paper's procedure, for comparison only.")
@click.option("--noise-scale", type=float, default=1.0, show_default=True)
@click.option("--alpha", type=float, help="One fixed alpha for every voxel (no alpha search).")
@click.option("--alphas", cls=ManyValues, help="Alpha grid for per-voxel CV, e.g. 10 100 1e3 "
              "[8 values from 1e1 to 1e6].")
@click.option("--cv", type=click.IntRange(2), default=5, show_default=True, help="K folds.")
@click.option("--rank", type=click.IntRange(1), default=16, show_default=True,
              help="Residual components of --noise lowrank.")
@click.option("--name", help="Name of the synthetic set [POOL-NOISE].")
@click.option("--embedding", default="ip-adapter-sdxl", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--voxel-chunk", type=click.IntRange(1), default=1024, show_default=True)
@click.option("--workers", type=click.IntRange(1), help="Local Dask workers [CPU cores].")
@click.option("--scheduler", help="Dask distributed scheduler address (tcp://host:8786).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a diagnostics figure (PNG).")
@click.option("--overwrite", is_flag=True, help="Replace a synthetic set of the same name.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@writes_store()
def augment(store: str, subject: str, pool: str, n: int | None, fraction: float | None,
            noise: str, noise_scale: float, alpha: float | None, alphas: tuple[str, ...] | None,
            cv: int, rank: int, name: str | None, embedding: str, seed: int, voxel_chunk: int,
            workers: int | None, scheduler: str | None, dtype: str, plot: Path | None,
            overwrite: bool, progress: bool) -> None:
    """Fit SUBJECT's ridge encoding model and synthesize trials for POOL images."""
    from nfstore.augment import AugmentConfig
    from nfstore.augment import augment as run
    from nfstore.errors import OptionError

    if alpha is not None and alphas:
        raise OptionError("--alpha / --alphas: give one of them")
    try:
        grid = tuple(float(a) for a in alphas) if alphas else None
    except ValueError:
        raise OptionError(f"alphas: expected numbers; found {list(alphas or ())}") from None
    cfg = AugmentConfig(pool=pool, n=n, fraction=fraction, noise=noise, noise_scale=noise_scale,
                        alpha=alpha, cv=cv, rank=rank, name=name, seed=seed, embedding=embedding,
                        voxel_chunk=voxel_chunk, workers=workers, scheduler=scheduler,
                        **({"alphas": grid} if grid else {}))
    summary = run(store, subject, cfg, overwrite=overwrite, dtype=dtype, progress=progress)
    for line in summary.lines():
        click.echo(line)
    if plot is not None:
        import nfstore
        from nfstore.augment.plot import diagnostics

        st = nfstore.open_store(store)
        both = st.betas(subject, split="train", synthetic=[summary.name])
        src = both.source.values
        values = both.values
        diagnostics(plot, summary.cv_corr, values[src == "measured"], values[src == summary.name],
                    f"{subject}: synthetic set '{summary.name}' ({noise}, scale {noise_scale})")
        click.echo(f"wrote {plot}")


COMMANDS = [augment]
