"""Store commands: ``nf synth``, ``nf ingest``, ``nf info``, ``nf validate``, ``nf query``."""

from __future__ import annotations

import time
from pathlib import Path

import click
from nf._options import (
    ManyValues,
    pixel_cache_options,
    remote_store,
    store_option,
    subjects_option,
    writes_store,
)


class Registered(click.Choice):
    """The names of the registered dataset readers (plugins included), looked up when a value
    is checked or help is shown, not when the CLI is imported."""

    def __init__(self, synth: bool = False) -> None:
        super().__init__([], case_sensitive=True)
        self.synth = synth

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        if self.synth:
            from nfstore.synth import synth_names

            return (*synth_names(), "models")
        from nfstore.readers import reader_names

        return tuple(reader_names())

    @choices.setter
    def choices(self, value: object) -> None:  # click.Choice sets it; the registry decides
        pass


def parse_items(items: tuple[str, ...] | None, param: str) -> dict[str, str]:
    """``("KEY=VALUE", ...)`` -> ``{"key": "VALUE"}`` (dashes in keys become underscores)."""
    from nfstore.errors import OptionError

    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"{param}: expected KEY=VALUE; found {item!r}")
        out[key.strip().replace("-", "_")] = value
    return out


@click.command("synth")
@click.argument("dataset", type=Registered(synth=True))
@click.argument("out_dir", type=click.Path(file_okay=False))
@subjects_option("Subjects to write, e.g. 1 2 (default: nsd 1 2, bold5000 1 4, god 1 2).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--sessions", type=click.IntRange(1), help="Sessions per subject (nsd, bold5000).")
@click.option("--trials-per-session", type=click.IntRange(1), help="nsd [real: 750]")
@click.option("--runs-per-session", type=click.IntRange(1), help="nsd [12], bold5000 [9-10]")
@click.option("--images-per-subject", type=click.IntRange(2), help="nsd [real: 10000]")
@click.option("--shared", type=click.IntRange(1), help="nsd shared test images [real: 1000]")
@click.option("--image-size", type=click.IntRange(8), help="Pixels per side.")
@click.option("--grid", help="Voxel grid X,Y,Z (nsd: of subject 1; god: voxel box).")
@click.option("--noise", type=float, help="Trial noise (signal has unit variance).")
@click.option("--set", "settings", cls=ManyValues, split_commas=False, metavar="KEY=VALUE",
              help="Any other size of the dataset's generator, e.g. test_images=5.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it is not empty.")
def synth(dataset: str, out_dir: str, subjects: tuple[str, ...] | None, seed: int,
          grid: str | None, settings: tuple[str, ...], overwrite: bool,
          **sizes: int | float | None) -> None:
    """Write a small synthetic DATASET tree in its ORIGINAL layout to OUT_DIR.

    `pool` writes a folder of ImageNet-named images for `nf embed --pool`; with
    `--set god=GOD_TREE` it repeats some GOD test images (as real pools can). `models` writes a
    tiny random SDXL pipeline (diffusers folder, OUT_DIR/sdxl, and the same weights as one
    original-layout checkpoint, OUT_DIR/sdxl-single/sdxl.safetensors) and IP-Adapter (h94 layout,
    OUT_DIR/ip-adapter) for `nf reconstruct`, a tiny image encoder (OUT_DIR/encoder), and
    random stand-ins for the metric networks under their real file names (OUT_DIR/metrics).
    """
    if dataset == "models":
        from nfrecon.tiny import write_metric_weights, write_tiny_models
        from nfstore.tiny import write_tiny_encoder

        paths = write_tiny_models(Path(out_dir), seed=seed)
        paths["encoder"] = write_tiny_encoder(Path(out_dir) / "encoder", seed=seed)["hf"]
        paths.update(write_metric_weights(Path(out_dir) / "metrics", seed=seed))
        click.echo("wrote " + ", ".join(f"{k} {v}" for k, v in paths.items()))
        return
    from nfstore.synth import parse_settings, synthesize

    params = parse_settings(dataset, [f"subjects={','.join(subjects)}"] if subjects else [])
    if grid:
        params.update(parse_settings(dataset, [f"grid={grid}"]))
    params.update(parse_settings(dataset, list(settings or ())))
    summary = synthesize(dataset, out_dir, overwrite=overwrite, seed=seed,
                         **{**sizes, **params})
    click.echo(f"wrote synthetic {dataset} to {out_dir}: {summary['subjects']} subject(s), "
               f"{summary['trials']} trials, {summary['images']} images in "
               f"{summary['seconds']:.1f} s")


@click.command("ingest")
@click.argument("dataset", type=Registered())
@click.argument("raw_root", type=click.Path())
@store_option
@subjects_option("Subjects, e.g. 1 2, subj01, CSI1, sub-01 (default: every subject found).")
@click.option("--sessions", help="nsd: sessions, e.g. 1-37 or 1,3,5 (default: all found).")
@click.option("--beta-version", help="nsd: betas folder [betas_fithrf_GLMdenoise_RR].")
@click.option("--format", "fmt", type=click.Choice(["auto", "nifti", "hdf5", "mat", "h5"]),
              help="Source format: nsd auto|nifti|hdf5, bold5000 auto|mat|h5 [auto].")
@click.option("--tr", type=click.Choice(["TR1", "TR2", "TR3", "TR4", "TR5", "TR34"]),
              help="bold5000: ROI file [TR34 = mean of TR3 and TR4].")
@click.option("--images", type=click.Path(file_okay=False),
              help="god: folder with training/ and test/ images [RAW_ROOT/images].")
@click.option("--rois", type=click.Path(),
              help="mindeye2, brain-diffuser: the NSD release's ROI files (a subject's roi/ "
                   "folder, a folder of subj0N folders, or the NSD root), for voxel indices "
                   "and every ROI [only nsdgeneral].")
@click.option("--expdesign", type=click.Path(dir_okay=False),
              help="brain-diffuser: NSD's nsd_expdesign.mat, to recover the rows' image ids "
                   "[RAW_ROOT/nsddata/experiments/nsd/nsd_expdesign.mat].")
@click.option("--option", "option", cls=ManyValues, split_commas=False, metavar="KEY=VALUE",
              help="Any option of the dataset's reader (its Options fields, e.g. space=func1mm "
                   "for nsd, block_rows=512 for god, or a plugin's own).")
@click.option("--release", type=click.Choice(["1", "2"]),
              help="bold5000: force release 1 (ROI betas) or 2 (GLMsingle single-trial betas) "
                   "[detected: 2 when CSI*_GLMbetas-* files lie at RAW_ROOT and ROIs/ does not].")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True)
@click.option("--normalization",
              type=click.Choice(["session-train", "run", "train-global", "none"]),
              help="Per-voxel z-scoring: session-train (per session, train-trial statistics; "
                   "nsd, bold5000 default), run (each run by its own statistics, TEST RUNS "
                   "INCLUDED; god default), train-global (all train trials), none.")
@click.option("--overwrite", is_flag=True, help="Replace subjects already in the store.")
@click.option("--nonfinite", type=click.Choice(["error", "zero"]), default="error",
              show_default=True,
              help="Betas that are NaN or infinite as float32: refuse the file (error), or leave "
                   "them out of the statistics and store 0, counted in the summary (zero).")
@pixel_cache_options
@click.option("--scheduler", metavar="ADDRESS",
              help="Dask distributed scheduler (tcp://host:8786): blocks (NSD sessions) of every "
                   "subject become tasks; workers must see RAW_ROOT and the store at the same "
                   "paths (a shared filesystem).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@writes_store()
def ingest(dataset: str, raw_root: str, store: str, subjects: tuple[str, ...] | None,
           sessions: str | None, beta_version: str | None, fmt: str | None, tr: str | None,
           images: str | None, rois: str | None, expdesign: str | None,
           option: tuple[str, ...] | None, release: str | None, dtype: str,
           normalization: str | None, overwrite: bool, nonfinite: str, cache_pixels: bool,
           pixel_size: int | None, scheduler: str | None, progress: bool) -> None:
    """Ingest DATASET from RAW_ROOT (original layout) into the store.

    DATASET is any registered reader: nsd, bold5000 (releases 1 and 2), god, things, the
    prepared NSD formats mindeye2 and brain-diffuser (they write nsd subjects), or a plugin
    (`nfstore.readers` entry points). Reader options: the flags below, or
    `--option KEY=VALUE` for any."""
    import nfstore
    from nfstore.readers import get_reader

    options = {**parse_items(option, "option"), **{k: v for k, v in {
        "beta_version": beta_version, "format": fmt, "tr": tr, "images": images,
        "sessions": sessions, "release": release, "rois": rois,
        "expdesign": expdesign}.items() if v is not None}}
    summary = nfstore.ingest(dataset, raw_root, store, subjects=subjects, options=options,
                             overwrite=overwrite, dtype=dtype, normalization=normalization,
                             progress=progress, scheduler=scheduler, nonfinite=nonfinite)
    click.echo(summary.line())
    if cache_pixels:
        from nfstore.pixels import cache_pixels as cache

        click.echo(cache(store, [get_reader(dataset).store_dataset()], pixel_size,
                         progress).line())


@click.command("info")
@click.argument("store", type=click.Path())
@remote_store
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
    for key, row in table.items():
        for name, n in row["synthetic"].items():
            click.echo(f"{key}: synthetic set '{name}', {n} trials")
    for name in st.embedding_models():
        click.echo(f"embeddings {name}: {st.embeddings(name).sizes['stimulus']} stimuli")
    for key, (what, command, state) in st.staged_writes().items():
        click.echo(f"{key}: incomplete {what} ({state}); rerun `{command}` to finish it")
    if st.version is not None:  # a versioned URL: unfinished writes live on work branches
        _versioned_info(store)
    if not table:
        click.echo(f"{store}: no subjects yet")


def _versioned_info(url: str) -> None:
    """Unfinished writes (work branches) of a versioned URL, and its local disk use."""
    from nfstore.branches import listing
    from nfstore.direct import local_bytes

    for b in listing(url):
        what = ", ".join(b["staged"]) or "nothing staged"
        click.echo(f"{b['command']}: unfinished on work branch {b['branch']} ({what}); rerun "
                   f"it to finish, or `nf gc {url}` to drop it")
    folder, size = local_bytes(url)
    click.echo(f"local disk for {url}: {size / 2**20:.1f} MiB in {folder}")


@click.command("validate")
@click.argument("store", type=click.Path())
@remote_store
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
@remote_store
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


@click.command("leakage")
@click.argument("store", type=click.Path())
@click.option("--json", "json_out", type=click.Path(dir_okay=False),
              help="Write the full list of copies as JSON.")
@click.option("--max-distance", type=click.IntRange(0, 64), default=None,
              help="Bits within which two window hashes (63-bit) are the same picture [6]; "
                   "fingerprints of earlier versions (one pHash) use 3.")
@remote_store
def leakage(store: str, json_out: str | None, max_distance: int | None) -> None:
    """Held-out (test/imagery) stimuli whose picture is also a train stimulus of any subject,
    in a synthetic set or in a pool, by id, identity or content fingerprint."""
    import nfstore
    from nfstore.identity import MAX_DISTANCE
    from nfstore.leakage import find_leakage

    report = find_leakage(nfstore.open_store(store),
                          MAX_DISTANCE if max_distance is None else max_distance)
    for line in report.lines():
        click.echo(line)
    if json_out:
        click.echo(f"wrote {report.write(json_out)}")


COMMANDS = [synth, ingest, info, validate, query, leakage]
