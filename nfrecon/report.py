"""``nf metrics``: the eight image metrics of a reconstruction set, per subject, per dataset and
overall, with 95% bootstrap CIs over images, beside the baselines that give them meaning (the
mean train image, shuffled reconstructions, and the oracle set reconstructed from the true
embeddings when given). Per-image values are stored beside the reconstructions at
``/reconstructions/<name>/<subject>/metrics/<variant>``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

import nfstore
from nfrecon import metrics as M
from nfrecon.recon_sets import read_reconstructions, recon_subjects
from nfstore import __version__
from nfstore.names import RECON_GROUP


def chosen_images(location: str | Path | nfstore.Store, name: str, subject: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The chosen sample of every row: uint8 (n, H, W, 3), and the stimulus ids (n,)."""
    r = read_reconstructions(location, name, subject)
    imgs = np.asarray(r["images"])
    return imgs[np.arange(imgs.shape[0]), r["chosen"]], r["stimulus"]


def ground_truth(store: nfstore.Store, stimuli: np.ndarray, size: int | None = None
                 ) -> np.ndarray | list[np.ndarray]:
    """Stimulus pixels, uint8.

    Parameters
    ----------
    stimuli : str array (n,)
    size : None (what metrics score: every image at its native size) or, for figures, the
        size one-image-per-file datasets are resized to (image bricks keep theirs)

    Returns
    -------
    array (n, H, W, 3), or (``size`` None, images of different sizes) a list of n arrays
    (H_i, W_i, 3)
    """
    if size is not None:
        return np.asarray(store.images(stimuli, size=(size, size)).values)
    try:
        return np.asarray(store.images(stimuli).values)
    except nfstore.QueryError:  # one-image files of different sizes: each at its own
        return [np.asarray(store.images([s]).values[0]) for s in stimuli]


def mean_train_image(store: nfstore.Store, subject: str, size: int, limit: int = 500
                     ) -> np.ndarray:
    """The mean of (up to ``limit``) train images of the subject, uint8 (size, size, 3)."""
    from nfrecon.metrics import resize_pil

    ds = store.dataset(subject)
    stim = np.unique(ds.stimulus.values[ds.split.values == "train"])
    tab = store.stimuli(subject.split("/")[0])  # read once, not once per stimulus
    with_pixels = set(tab.stimulus.values[tab["file"].values != ""].tolist())
    stim = [s for s in stim if s in with_pixels]
    px = ground_truth(store, np.array(stim[:limit], dtype=object), size)
    px = resize_pil(px, size, "bilinear") if px.shape[1] != size else px
    return np.clip(np.rint(px.astype(np.float64).mean(0)), 0, 255).astype(np.uint8)


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation with no fixed point (shuffled baseline)."""
    rng = np.random.default_rng(seed)
    while True:
        p = rng.permutation(n)
        if n < 2 or not (p == np.arange(n)).any():
            return p


def summarize(per_image: dict[str, np.ndarray], seed: int = 0) -> dict[str, Any]:
    """Mean and 95% bootstrap CI of each metric."""
    return {k: {"mean": float(np.mean(v)), "ci95": M.bootstrap_ci(v, seed=seed)}
            for k, v in per_image.items()} | {"n_images": int(len(next(iter(per_image.values()))))}


def _store_per_image(tx: nfstore.Transaction, name: str, subject: str, variant: str,
                     values: dict[str, np.ndarray]) -> None:
    """Commit the per-image values (metric -> float (n_rows,)) at
    ``/reconstructions/<name>/<subject>/metrics/<variant>`` in the open transaction ``tx``."""
    import zarr

    key = f"{RECON_GROUP}/{name}/{subject}/metrics/{variant}"
    tx.discard(key)  # written at once: never resumed
    staged, _, _ = tx.stage(key)
    g = zarr.open_group(str(staged), mode="r+")
    for k, v in values.items():
        g.create_array(k, data=np.asarray(v, np.float64), dimension_names=("row",))
    g.attrs.update({"variant": variant, "nf_version": __version__,
                    "metrics": list(values), "lower_is_better": list(M.LOWER_IS_BETTER)})
    tx.commit(key)


def metrics_report(location: str | Path, name: str, weights: str | Path, clip: str | Path, *,
                   variant: str = "mindeye2", subjects: list[str] | None = None,
                   oracle: str | None = None, device: str = "cpu", seed: int = 0,
                   classifier: Any = None, sdxl: str | Path | None = None,
                   sdxl_config: str | Path | None = None,
                   progress: bool = False) -> dict[str, Any]:
    """Metrics of reconstruction set ``name`` and its baselines; per-image values stored (in a
    local store; a store read from a URL is only read).

    ``classifier`` (uint8 images -> ImageNet probabilities, e.g.
    :func:`nfrecon.semantic.load_classifier`) adds the paper's 50-way "Top-1 acc"; ``sdxl``
    (a diffusers folder, or a single checkpoint with its ``sdxl_config`` folder) adds the VAE
    round trip of the ground truth (the low-level ceiling).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if variant not in M.VARIANTS:
        raise nfstore.OptionError(f"variant: expected one of {list(M.VARIANTS)}; found "
                                  f"{variant!r}")
    store = nfstore.open_store(location)
    keys = recon_subjects(store, name, subjects)
    networks = M.load_networks(M.weight_paths(weights, variant), clip, device)
    score = _scorer(networks, variant, device, classifier, seed)
    vae = vae_roundtrip(sdxl, device, sdxl_config) if sdxl else None
    report: dict[str, Any] = {"reconstructions": name, "variant": variant, "subjects": {},
                              "datasets": {}, "overall": {}, "baselines": {}, "retrieval": {}}
    pooled: dict[str, dict[str, np.ndarray]] = {}
    n_images = 0
    bar = tqdm(total=sum(int(store.group(f"{RECON_GROUP}/{name}/{k}")["stimulus"].shape[0])
                         for k in keys), desc=f"metrics {name}", unit="img", disable=not progress)
    with nullcontext() if store.remote else store.transaction(f"nf metrics {name}") as tx:
        for key in keys:
            pooled[key] = _score_subject(store, name, key, score, report, vae, oracle, seed)
            if tx is not None:
                _store_per_image(tx, name, key, variant, pooled[key])
            n_images += report["subjects"][key]["n_images"]
            bar.update(report["subjects"][key]["n_images"])
            bar.set_postfix_str(f"{n_images / (time.perf_counter() - t0):.2f} img/s (with "
                                f"baselines)")
    bar.close()
    _pool(report, pooled, seed)
    report["per_image_values"] = (f"stored at {RECON_GROUP}/{name}/<subject>/metrics/{variant}"
                                  if not store.remote else
                                  "not stored: the store was read from a URL")
    report["seconds"] = time.perf_counter() - t0
    report["images_per_second"] = n_images / max(report["seconds"], 1e-9)
    return report


def _scorer(networks: Any, variant: str, device: str, classifier: Any, seed: int
            ) -> Callable[[Any, np.ndarray], dict[str, np.ndarray]]:
    """(ground truth, uint8 images (n, H, W, 3)) -> metric -> per-image values (n,)."""
    def score(gt: Any, imgs: np.ndarray) -> dict[str, np.ndarray]:
        vals = M.image_metrics(gt, imgs, networks, variant, device)
        if classifier is not None:
            from nfrecon.semantic import semantic_top1

            vals["top1"] = semantic_top1(classifier(gt), classifier(imgs), seed=seed)
        return vals

    return score


def _score_subject(store: nfstore.Store, name: str, key: str, score: Callable[..., Any],
                   report: dict[str, Any], vae: Any, oracle: str | None, seed: int
                   ) -> dict[str, np.ndarray]:
    """Score one subject's chosen images and its baselines into ``report``; returns the
    per-image values (metric -> (n,))."""
    rec, stim = chosen_images(store, name, key)
    gt = ground_truth(store, stim)  # native sizes: the metric convention resizes
    vals = score(gt, rec)
    report["subjects"][key] = summarize(vals, seed)
    report["retrieval"][key] = _retrieval(store, store.group(f"{RECON_GROUP}/{name}/{key}"),
                                          stim, seed)
    rows = {"shuffled reconstructions": rec[derangement(len(rec), seed)],
            "mean train image": np.broadcast_to(
                mean_train_image(store, key, rec.shape[1]), rec.shape).copy()}
    if vae is not None:  # the VAE sees the ground truth at the reconstructions' size
        rows["VAE round trip (low-level ceiling)"] = vae(ground_truth(store, stim, rec.shape[1]))
    if oracle:
        orec, ostim = chosen_images(store, oracle, key)
        if list(ostim) == list(stim):
            rows["oracle (true embeddings)"] = orec
    for label, imgs in rows.items():
        report["baselines"].setdefault(label, {})[key] = summarize(score(gt, imgs), seed)
    return vals


def _pool(report: dict[str, Any], pooled: dict[str, dict[str, np.ndarray]], seed: int) -> None:
    """The dataset and overall means, and their CIs: a bootstrap over the pooled images."""
    report["datasets"] = _by_dataset(report["subjects"])
    report["overall"] = _mean_of(list(report["subjects"].values()))
    groups = {d: [k for k in pooled if k.startswith(f"{d}/")] for d in report["datasets"]}
    groups["overall"] = list(pooled)
    report["ci95"] = {g: {m: M.bootstrap_ci(np.concatenate([pooled[k][m] for k in ks]), seed=seed)
                          for m in pooled[ks[0]]} for g, ks in groups.items() if ks}
    for per in report["baselines"].values():
        per["overall"] = _mean_of([v for k, v in per.items() if k != "overall"])


def _retrieval(store: nfstore.Store, group: Any, stim: np.ndarray, seed: int
               ) -> dict[str, Any] | None:
    """Brain retrieval of the decoded set the reconstructions came from (same stimuli)."""
    from nfstore.decoding import brain_retrieval

    decoded, subject = group.attrs.get("decoded"), group.attrs.get("subject")
    if not decoded or decoded not in store.decoded_sets() or \
            group.attrs.get("source") != "decoded":
        return None
    d = store.decoded(decoded, subject)
    rows = np.flatnonzero(d["split"].values == group.attrs.get("split", "test"))
    if rows.size < 2:
        return None
    model = d.attrs.get("embedding", "ip-adapter-sdxl")
    pred = np.asarray(d.values[rows], np.float32)
    target = np.asarray(store.embeddings(model, stimuli=d.stimulus.values[rows]).values)
    return brain_retrieval(pred, target, seed)


def vae_roundtrip(sdxl: str | Path, device: str, config: str | Path | None = None) -> Any:
    """SDXL's VAE (local files): uint8 images -> encode -> decode -> uint8 images."""
    from nfrecon.pipeline import locate_sdxl, locate_sdxl_config
    from nfstore.lowlevel import load_vae, vae_decode, vae_latents

    where = locate_sdxl(sdxl)
    folder = locate_sdxl_config(where, config)
    if folder is None:
        vae = load_vae(where, device)
    else:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_single_file(str(where), config=str(folder), subfolder="vae",
                                             local_files_only=True).eval().to(device)
    return lambda images: vae_decode(vae, vae_latents(vae, images))


def _mean_of(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean over subjects of each metric's mean (the papers' convention)."""
    if not rows:
        return {}
    keys = [k for k in (*M.METRICS, "top1") if all(k in r for r in rows)]
    return {k: float(np.mean([r[k]["mean"] for r in rows])) for k in keys}


def _by_dataset(subjects: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for key, row in subjects.items():
        groups.setdefault(key.split("/")[0], []).append(row)
    return {d: _mean_of(rows) for d, rows in groups.items()}


# --------------------------------------------------------------------------- tables
PUBLISHED = {  # docs/user-guide/metrics.md: the paper's Tables 1-3 and the methods they quote
    "bold5000": [("WAVE", ".050 .194 69.47 78.31 68.41 78.41 .902 .591 20.75"),
                 ("Mind-Vis", ".036 .272 60.56 68.92 64.25 64.47 .938 .593 9.19"),
                 ("BOLD5000", ".036 .374 58.9 64.0 60.2 62.2 .947 .652 10.2"),
                 ("BOLD5000 (AUG)", ".033 .403 65.5 78.4 69.2 75.7 .900 .549 19.1"),
                 ("Cross-model-BOLD5000", ".037 .397 61.5 71.0 64.4 71.1 .924 .580 13.4"),
                 ("Cross-model-BOLD5000 (AUG)", ".034 .375 68.5 79.0 69.9 75.4 .911 .557 19.6"),
                 ("Cross-model-finetuned-BOLD5000",
                  ".040 .403 65.9 76.2 69.5 76.0 .904 .553 19.3")],
    "nsd": [("Mind-Reader", "- - - - 78.2 - - - -"),
            ("Takagi et al.", "- - 83.0 83.0 76.0 77.0 - - -"),
            ("Gu et al.", ".150 .325 - - - - .862 .465 -"),
            ("Brain-Diffuser", ".254 .356 94.2 96.2 87.2 91.5 .775 .423 -"),
            ("MindEye", ".309 .323 94.7 97.8 93.8 94.1 .645 .367 -"),
            ("Dream", ".274 .328 93.9 96.7 93.4 94.1 .645 .418 -"),
            ("NSD", ".071 .328 80.5 91.2 91.7 93.0 .707 .398 55.8"),
            ("NSD (AUG)", ".077 .346 83.6 93.0 94.1 94.8 .675 .383 61.1"),
            ("Cross-model-NSD", ".069 .326 79.7 90.8 91.5 92.9 .711 .401 55.5"),
            ("Cross-model-NSD (AUG)", ".064 .337 80.3 91.5 92.2 93.5 .698 .392 57.8")],
    "god": [("Koide-Majima", "- - - - - 90.00 - - -"),
            ("Ferrante et al.", ".32 .38 67.00 68.00 66.00 69.00 - - -"),
            ("GOD", ".041 .331 79.1 88.5 73.2 84.0 .884 .532 19.2"),
            ("Cross-model-GOD", ".028 .337 72.3 84.9 68.3 81.0 .913 .561 16.1"),
            ("Cross-model-finetuned-GOD", ".033 .313 69.1 82.4 68.5 79.8 .916 .562 15.4")]}
COLUMNS = ("PixCorr", "SSIM", "Alex(2)", "Alex(5)", "Incep", "CLIP", "EffNet-B", "SwAV",
           "Top-1")


def _fmt(m: dict[str, float]) -> list[str]:
    return ["-" if k not in m else f"{m[k]:.3f}" if k in ("pixcorr", "ssim", "effnet", "swav")
            else f"{100 * m[k]:.1f}" for k in (*M.METRICS, "top1")]


def table_rows(report: dict[str, Any], label: str) -> dict[str, list[tuple[str, str, list[str]]]]:
    """Per dataset: (kind, row label, cells) in the layout of the paper's Tables 1-3."""
    out: dict[str, list[tuple[str, str, list[str]]]] = {}
    for ds, m in report["datasets"].items():
        rows = [("published", n, v.split()) for n, v in PUBLISHED.get(ds, [])]
        rows.append(("ours", f"{label} [{ds}, {report['variant']}]", _fmt(m)))
        for b, per in report["baselines"].items():
            subj = [v for k, v in per.items() if k != "overall" and k.startswith(f"{ds}/")]
            if subj:
                rows.append(("baseline", f"{b} [{ds}]", _fmt(_mean_of(subj))))
        out[ds] = rows
    return out


def write_tables(report: dict[str, Any], out: Path, label: str) -> dict[str, str]:
    """Markdown (also returned as text) and HTML tables, one per dataset."""
    import html

    tables = table_rows(report, label)
    md_parts, html_parts = [], []
    for ds, rows in tables.items():
        md = [f"### {ds}", "", "| method | " + " | ".join(COLUMNS) + " | kind |",
              "|---" * (len(COLUMNS) + 2) + "|"]
        md += [f"| {n} | " + " | ".join(c) + f" | {k} |" for k, n, c in rows]
        md_parts.append("\n".join(md))
        body = "".join(f"<tr class='{k}'><td>{html.escape(n)}</td>" + "".join(
            f"<td>{html.escape(x)}</td>" for x in c) + f"<td>{k}</td></tr>" for k, n, c in rows)
        html_parts.append(f"<h3>{html.escape(ds)}</h3><table><tr><th>method</th>" + "".join(
            f"<th>{c}</th>" for c in COLUMNS) + f"<th>kind</th></tr>{body}</table>")
    text = ("Alex(2), Alex(5), Incep, CLIP: 2-way identification (%); EffNet-B, SwAV: "
            "correlation distance (lower is better). Rows marked published are the papers' "
            "figures on the real datasets.\n\n" + "\n\n".join(md_parts))
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics_table.md").write_text(text + "\n")
    (out / "metrics_table.html").write_text("<!doctype html><meta charset='utf-8'><title>"
                                            "metrics</title>" + "".join(html_parts))
    return {"markdown": text, "md": str(out / "metrics_table.md"),
            "html": str(out / "metrics_table.html")}


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.write_text(json.dumps(report, indent=2, default=float))
    return p


def write_figures(report: dict[str, Any], location: str | Path, out: str | Path) -> list[Path]:
    """A reconstruction grid per subject and a chart of every metric's mean with its 95% CI
    beside the baselines (PNGs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nfrecon.export import _grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = nfstore.open_store(location)
    files = []
    for key in report["subjects"]:
        r = read_reconstructions(store, report["reconstructions"], key)
        imgs = np.asarray(r["images"][:8])
        gt = ground_truth(store, r["stimulus"][:8], imgs.shape[2])
        p = out / f"{key.replace('/', '_')}_grid.png"
        _grid(p, gt, imgs, r["chosen"][:8], r["stimulus"][:8])
        files.append(p)
    keys = [k for k in (*M.METRICS, "top1") if k in next(iter(report["subjects"].values()))]
    rows = [("reconstructions", report["subjects"])] + [
        (b, {k: v for k, v in per.items() if k != "overall"})
        for b, per in report["baselines"].items()]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.2 * len(keys), 3), squeeze=False)
    for ax, metric in zip(axes[0], keys):
        for j, (label, per) in enumerate(rows):
            means = [v[metric]["mean"] for v in per.values()]
            los = [v[metric]["ci95"][0] for v in per.values()]
            his = [v[metric]["ci95"][1] for v in per.values()]
            m = float(np.mean(means))
            ax.bar(j, m, yerr=[[m - float(np.mean(los))], [float(np.mean(his)) - m]],
                   color=f"C{j}", label=label, capsize=3)
        ax.set_title(metric + (" (lower better)" if metric in M.LOWER_IS_BETTER else ""),
                     fontsize=8)
        ax.set_xticks([])
    axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"{report['reconstructions']} ({report['variant']}): mean over subjects, "
                 f"95% bootstrap CI over images", fontsize=8)
    fig.tight_layout()
    p = out / "metrics_chart.png"
    fig.savefig(p, dpi=90)
    plt.close(fig)
    return files + [p]
