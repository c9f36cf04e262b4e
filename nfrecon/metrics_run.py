"""``nf metrics`` end to end: score a reconstruction set (:func:`nfrecon.report.metrics_report`),
write what was asked for (JSON, paper-layout tables, figures) and return the lines the command
prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfrecon.report import metrics_report, write_figures, write_json, write_tables


def run_metrics(location: str | Path, name: str, weights: str | Path, clip: str | Path, *,
                classifier: str | Path | None = None, out: str | Path | None = None,
                table_dir: str | Path | None = None, figures_dir: str | Path | None = None,
                label: str = "NeuroFusion", **options: Any) -> list[str]:
    """Score set ``name`` of the store at ``location`` and write the outputs asked for.

    Parameters
    ----------
    classifier : ``vit_h_14_swag-80465313.pth``: adds the paper's 50-way Top-1 accuracy
    out : the report as JSON
    table_dir : the paper-layout tables (``metrics_table.{md,html}``), also printed
    figures_dir : a reconstruction grid per subject and the metric chart
    label : the row label of ours in the tables
    options : the keywords of :func:`nfrecon.report.metrics_report` (``variant``,
        ``subjects``, ``oracle``, ``device``, ``seed``, ``sdxl``, ``sdxl_config``, ``progress``)

    Returns
    -------
    The lines to print: per subject, brain retrieval, what was written, the totals.
    """
    from nfrecon.semantic import load_classifier

    device = options.get("device", "cpu")
    rep = metrics_report(location, name, weights, clip, **options,
                         classifier=load_classifier(classifier, device) if classifier else None)
    lines = subject_lines(rep)
    if figures_dir:
        lines.append(f"wrote {len(write_figures(rep, location, figures_dir))} figures to "
                     f"{figures_dir}")
    if table_dir:
        t = write_tables(rep, Path(table_dir), label)
        lines += [t["markdown"], f"wrote {t['md']} and {t['html']}"]
    if out:
        lines.append(f"wrote {write_json(rep, out)}")
    lines.append(f"scored {sum(r['n_images'] for r in rep['subjects'].values())} images "
                 f"({rep['variant']}) in {rep['seconds']:.1f} s ({rep['images_per_second']:.1f}"
                 f" images/s, baselines included)")
    return lines


def subject_lines(rep: dict[str, Any]) -> list[str]:
    """Each subject's metrics (mean [95% CI]) and brain retrieval, one line each."""
    lines = [f"{key}: " + ", ".join(f"{k} {v['mean']:.3f} [{v['ci95'][0]:.3f}, "
                                    f"{v['ci95'][1]:.3f}]" for k, v in row.items()
                                    if isinstance(v, dict))
             for key, row in rep["subjects"].items()]
    for key, r in rep.get("retrieval", {}).items():
        if r:
            lines.append(f"{key} brain retrieval ({r['n_candidates']} candidates): top-1 "
                         f"{r['top1_brain_to_image']:.3f} / {r['top1_image_to_brain']:.3f}, "
                         f"top-5 {r['top5_brain_to_image']:.3f} / "
                         f"{r['top5_image_to_brain']:.3f} (brain->image / image->brain)")
    return lines
