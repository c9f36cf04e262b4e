"""``nf export``: a store subject written in a community layout that peers' own code reads."""

from __future__ import annotations

import click

FORMATS = ("brain-diffuser", "mindeye2")  # nfstore.community.EXPORT_FORMATS, without importing


@click.command("export")
@click.argument("format", metavar="FORMAT", type=click.Choice(FORMATS))
@click.argument("store", type=click.Path())
@click.argument("subject")
@click.argument("out", type=click.Path())
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--option", "option", multiple=True, metavar="KEY=VALUE",
              help="Exporter option (mindeye2: block_rows=N), repeatable.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def export(format: str, store: str, subject: str, out: str, overwrite: bool,
           option: tuple[str, ...], progress: bool) -> None:
    """Write SUBJECT (e.g. nsd/subj01, god/sub-03) of STORE to OUT in FORMAT.

    mindeye2: OUT is MindEye2's data_path (betas_all_subj0N_fp32_renorm.hdf5,
    coco_images_224_float16.hdf5, wds/subj0N/{train,test,new_test}/*.tar).
    brain-diffuser: OUT is brain-diffuser's data/ folder (processed_data/subj0N/*.npy).
    Written beside OUT and renamed into place."""
    from nfstore.community import export_subject
    from nfstore.errors import OptionError

    options = {}
    for item in option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"option: expected KEY=VALUE; found {item!r}")
        options[key.strip()] = value
    click.echo(str(export_subject(format, store, subject, out, overwrite=overwrite,
                                  progress=progress, **options)))


COMMANDS = [export]
