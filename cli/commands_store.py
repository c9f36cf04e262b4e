"""Store commands: ``nf synth``, ``nf ingest``, ``nf info``, ``nf validate``, ``nf query``."""

from __future__ import annotations

import time

import click

from nf._options import ManyValues, store_option, subjects_option

DATASET = click.Choice(["nsd"])


@click.command("synth")
@click.argument("dataset", type=DATASET)
@click.argument("out_dir", type=click.Path(file_okay=False))
@subjects_option("Subjects to write, e.g. 1 2 (default: 1 2).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sessions", type=click.IntRange(1), help="Sessions per subject [real: 30-40].")
@click.option("--trials-per-session", type=click.IntRange(1), help="[real: 750]")
@click.option("--runs-per-session", type=click.IntRange(1), help="[real: 12]")
@click.option("--images-per-subject", type=click.IntRange(2), help="[real: 10000]")
@click.option("--shared", type=click.IntRange(1), help="Shared test images [real: 1000].")
@click.option("--image-size", type=click.IntRange(8), help="Pixels per side [real: 425].")
@click.option("--grid", help="Voxel grid X,Y,Z of subject 1, e.g. 20,24,20.")
@click.option("--noise", type=float, help="Trial noise, percent signal change.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it is not empty.")
def synth(dataset: str, out_dir: str, subjects: tuple[str, ...] | None, seed: int,
          grid: str | None, overwrite: bool, **sizes: int | float | None) -> None:
    """Write a small synthetic DATASET tree in its ORIGINAL layout to OUT_DIR."""
    from nfstore.errors import OptionError
    from nfstore.synth import synthesize

    try:
        subs = tuple(int(s) for s in subjects) if subjects else None
        grid_t = tuple(int(v) for v in grid.split(",")) if grid else None
    except ValueError:
        raise OptionError(f"--subjects/--grid: expected integers; got {subjects} / {grid}"
                          ) from None
    if grid_t is not None and len(grid_t) != 3:
        raise OptionError(f"--grid: expected three integers X,Y,Z; got {grid!r}")
    summary = synthesize(dataset, out_dir, overwrite=overwrite, subjects=subs, seed=seed,
                         grid=grid_t, **sizes)
    click.echo(f"wrote synthetic {dataset} to {out_dir}: {summary['subjects']} subject(s), "
               f"{summary['trials']} trials, {summary['images']} images in "
               f"{summary['seconds']:.1f} s")


@click.command("ingest")
@click.argument("dataset", type=DATASET)
@click.argument("raw_root", type=click.Path())
@store_option
@subjects_option("Subjects, e.g. 1 2 or subj01 (default: every subject found).")
@click.option("--sessions", help="NSD sessions, e.g. 1-37 or 1,3,5 (default: all found).")
@click.option("--beta-version", default="betas_fithrf_GLMdenoise_RR", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["auto", "nifti", "hdf5"]), default="auto",
              show_default=True, help="NSD betas source; auto prefers NIfTI.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace subjects already in the store.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def ingest(dataset: str, raw_root: str, store: str, subjects: tuple[str, ...] | None,
           sessions: str | None, beta_version: str, fmt: str, dtype: str, overwrite: bool,
           progress: bool) -> None:
    """Ingest DATASET from RAW_ROOT (original layout) into the store."""
    import nfstore
    from nfstore.ingest import options_from
    from nfstore.readers.base import parse_ranges

    ranges = parse_ranges(sessions, "--sessions")
    options = options_from(dataset, beta_version=beta_version, format=fmt,
                           sessions=tuple(ranges) if ranges else None)
    summary = nfstore.ingest(dataset, raw_root, store, subjects=subjects, options=options,
                             overwrite=overwrite, dtype=dtype, progress=progress)
    click.echo(summary.line())


@click.command("info")
@click.argument("store", type=click.Path())
def info(store: str) -> None:
    """Subjects of STORE side by side: trials per split, voxels, ROIs, sessions."""
    import nfstore

    st = nfstore.open_store(store)
    table = st.info()
    head = ("subject", "trials", "train", "test", "imagery", "stimuli", "voxels", "rois",
            "sessions", "dtype")
    rows = [head] + [(k, *(str(v[c]) for c in head[1:])) for k, v in table.items()]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    for r in rows:
        click.echo("  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths))))
    for key, state in st.incomplete().items():
        click.echo(f"{key}: incomplete ingest ({state}); rerun `nf ingest` to finish it")
    if not table:
        click.echo(f"{store}: no subjects yet")


@click.command("validate")
@click.argument("store", type=click.Path())
def validate(store: str) -> None:
    """Check STORE against the store schema and its value rules; exit 1 on any problem."""
    import nfstore
    from nfstore.schema import validate_store

    st = nfstore.open_store(store, check=False)
    problems = validate_store(st)
    for p in problems:
        click.echo(p, err=True)
    if problems:
        raise SystemExit(1)
    click.echo(f"{store}: valid (schema version 1; {len(st.subjects())} subjects)")


@click.command("query")
@click.argument("store", type=click.Path())
@click.argument("subject")
@click.option("--roi", cls=ManyValues, help="ROI name(s); several select their union.")
@click.option("--split", type=click.Choice(["train", "test", "imagery"]))
@click.option("--average-repeats", is_flag=True, help="One row per stimulus (mean of repeats).")
@click.option("--out", required=True, type=click.Path(dir_okay=True),
              help="Output file: .npy (values), .nc (with coordinates) or .zarr.")
def query(store: str, subject: str, roi: tuple[str, ...] | None, split: str | None,
          average_repeats: bool, out: str) -> None:
    """Select betas of SUBJECT by ROI and split and write them to --out."""
    import nfstore
    from nfstore.export import write_query

    t0 = time.perf_counter()
    x = nfstore.open_store(store).betas(subject, roi=list(roi) if roi else None, split=split,
                                        average_repeats=average_repeats)
    path = write_query(x, out)
    dt = time.perf_counter() - t0
    click.echo(f"wrote {path}: {x.shape[0]} x {x.shape[1]} ({x.nbytes / 2**20:.1f} MiB) "
               f"in {dt:.2f} s")


COMMANDS = [synth, ingest, info, validate, query]
