"""``nf reconstruct``: decoded embeddings -> images with SDXL + IP-Adapter (diffusers), written
as reconstruction sets. The pipeline itself (loading, generation, best of N) is
:mod:`nfrecon.pipeline`. Output: ``/reconstructions/<name>/<subject>``: ``images`` uint8 (row,
sample, y, x, rgb), one image per chunk; ``stimulus``, ``chosen``, ``scores`` and ``seeds``;
built under ``_staging`` row by row (resumable after a kill) and renamed into place when
complete.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import nfstore
from nfrecon.decoded import check_name
from nfrecon.pipeline import (
    ReconConfig,
    choose,
    generate,
    image_seed,
    load_image_encoder,
    load_pipeline,
)
from nfstore import _layout
from nfstore._names import RECON_GROUP
from nfstore._version import __version__
from nfstore.errors import OptionError, StoreError


@dataclass
class ReconSummary:
    name: str
    images: int = 0
    resumed: int = 0
    seconds: float = 0.0
    subjects: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"reconstructed {self.images} images into /{RECON_GROUP}/{self.name} "
                f"({', '.join(self.subjects)}) in {self.seconds:.1f} s "
                f"({self.images / max(self.seconds, 1e-9):.2f} images/s)"
                + (f"; {self.resumed} rows resumed" if self.resumed else ""))


def _staged_group(store: Path, name: str, subject: str, n_rows: int, cfg: ReconConfig,
                  meta: dict[str, Any], stimuli: np.ndarray) -> tuple[Any, Path, int]:
    """Open or create the staged output; returns (group, path, rows already done)."""
    import zarr

    staged = _layout.staging_path(store, f"{RECON_GROUP}.{name}.{subject.replace('/', '.')}")
    if staged.is_dir():
        g = zarr.open_group(str(staged), mode="r+")
        if g.attrs.get("params") == meta["params"] and g.attrs.get("decoded_sha256") == \
                meta["decoded_sha256"]:
            return g, staged, int(g.attrs.get("rows_done", 0))
        _layout.discard(staged)
    g = create_group(staged, stimuli, cfg.samples, cfg.size)
    g.attrs.update({**meta, "rows_done": 0})
    return g, staged, 0


def create_group(staged: Path, stimuli: np.ndarray, samples: int, size: int) -> Any:
    """A new reconstruction group at ``staged``: ``images`` uint8 (row, sample, size, size, 3),
    one image per chunk, ``stimulus`` filled, ``chosen``/``scores``/``seeds`` allocated."""
    import zarr

    staged.parent.mkdir(parents=True, exist_ok=True)
    g = zarr.open_group(str(staged), mode="w", zarr_format=3)
    n_rows = len(stimuli)
    g.create_array("images", shape=(n_rows, samples, size, size, 3),
                   chunks=(1, 1, size, size, 3), dtype="uint8",
                   dimension_names=("row", "sample", "y", "x", "rgb"))
    g.create_array("stimulus", shape=(n_rows,), dtype=str, dimension_names=("row",))
    g["stimulus"][:] = np.asarray(stimuli, dtype=object)
    for arr, dt, shape, dims in (("chosen", "int64", (n_rows,), ("row",)),
                                 ("scores", "float32", (n_rows, samples), ("row", "sample")),
                                 ("seeds", "int64", (n_rows, samples), ("row", "sample"))):
        g.create_array(arr, shape=shape, dtype=dt, dimension_names=dims)
    return g


def reconstruct(location: str | Path, decoded: str, sdxl: str | Path, ip_adapter: str | Path,
                name: str, cfg: ReconConfig, *, subjects: list[str] | None = None,
                split: str = "test", encoder: str | Path | None = None,
                from_embeddings: bool = False, limit: int | None = None,
                progress: bool = False, on_row: Any = None,
                sdxl_config: str | Path | None = None, init: str | None = None,
                init_kind: str = "auto", stimuli: list[str] | None = None,
                on_step: Any = None) -> ReconSummary:
    """Reconstruct the ``split`` rows of decoded set ``decoded`` (or, ``from_embeddings``,
    the true cached embeddings of the same stimuli: the oracle row). ``sdxl_config``: the
    config folder of a single-file ``sdxl`` (see `load_pipeline`). ``init``: img2img from a
    low-level set (:mod:`nfrecon.init_images`; ``init_kind`` auto, images or latents) at
    ``cfg.strength``; ``cfg.blend > 0`` also
    writes the pixel blend with it as the set ``<name>-blend<w>``. ``stimuli``: only these
    rows; ``on_step(step, steps)`` after every denoising step (``nf serve`` job progress)."""
    from tqdm.auto import tqdm

    from nfrecon.init_images import (
        blend_name,
        check_blend,
        init_source,
        resolve,
        write_blend_set,
    )

    t0 = time.perf_counter()
    cfg.check()
    check_name(name)
    check_blend(cfg.blend, init)
    path = _layout.local_store_path(location)
    store = nfstore.open_store(path)
    keys = list(subjects) if subjects else store.decoded_subjects(decoded)
    have = store.decoded_subjects(decoded)
    missing = [k for k in keys if k not in have]
    if missing:
        raise StoreError(f"--subjects: {missing} have no rows in decoded set {decoded!r}; it "
                         f"has {have}")
    if cfg.samples > 1 and encoder is None:
        raise OptionError("--encoder: choosing the best of --samples N > 1 needs the image "
                          "encoder used by `nf embed` (its weights path)")
    for key in keys if init is not None else []:  # before the (slow) pipeline load
        check_blend(cfg.blend, init, resolve(path, init, key, init_kind))
    pipe = load_pipeline(sdxl, ip_adapter, cfg, sdxl_config)
    enc = None
    summary = ReconSummary(name)
    with _layout.writing(path, f"nf reconstruct --name {name}"):
        for key in keys:
            d = store.decoded(decoded, key)
            keep = d["split"].values == split
            if stimuli is not None:
                keep &= np.isin(d.stimulus.values, list(stimuli))
            rows = np.flatnonzero(keep)[:limit]
            if rows.size == 0:
                raise StoreError(f"{key}: decoded set {decoded!r} has no {split} rows")
            stim = d.stimulus.values[rows]
            model = d.attrs.get("embedding", "ip-adapter-sdxl")
            E = np.asarray(store.embeddings(model, stimuli=stim).values if from_embeddings
                           else d.values[rows], np.float32)
            if enc is None and cfg.samples > 1:
                enc = load_image_encoder(encoder, model, cfg.device)  # type: ignore[arg-type]
            meta = {"params": asdict(cfg), "decoded": decoded, "split": split,
                    "source": "true embeddings (oracle)" if from_embeddings else "decoded",
                    "decoded_sha256": hashlib.sha256(E.tobytes()).hexdigest(),
                    "weights_sha256": pipe._nf_checksums, "subject": key,
                    "selection": "best of samples by cosine of the nf-embed encoder's embedding"
                                 " to the decoded embedding (never the ground truth)",
                    "nf_version": __version__, "init": None}
            start = None
            if init is not None:
                kind, values, info = init_source(path, init, key, stim, cfg.size, init_kind)
                start = (kind, values)
                meta.update(info, strength=cfg.strength, init_sha256=hashlib.sha256(
                    np.ascontiguousarray(values).tobytes()).hexdigest())
            g, staged, done = _staged_group(path, name, key, rows.size, cfg, meta, stim)
            summary.resumed += done
            bar = tqdm(total=rows.size, initial=done, unit="row", desc=f"reconstruct {key}",
                       disable=not progress)
            for a in range(done, rows.size, cfg.batch):
                b = min(a + cfg.batch, rows.size)
                seeds = [[image_seed(cfg.seed, int(rows[r]), s, cfg.samples)
                          for s in range(cfg.samples)] for r in range(a, b)]
                imgs = generate(pipe, E[a:b], cfg, seeds,
                                None if start is None else (start[0], start[1][a:b]), on_step)
                chosen, scores = choose(imgs, E[a:b], enc)
                g["images"][a:b] = imgs
                g["chosen"][a:b] = chosen
                g["scores"][a:b] = scores
                g["seeds"][a:b] = np.array(seeds)
                g.attrs["rows_done"] = b  # commit point: a kill resumes after this row
                summary.images += imgs.shape[0] * imgs.shape[1]
                bar.update(b - a)
                bar.set_postfix_str(f"{summary.images / (time.perf_counter() - t0):.2f} img/s")
                if on_row is not None:
                    on_row(b)
            bar.close()
            _layout.ensure_group(path, f"{RECON_GROUP}/{name}/{key.split('/')[0]}")
            _layout.commit(path, staged, f"{RECON_GROUP}/{name}/{key}")
            if cfg.blend:
                write_blend_set(path, name, key, cfg.blend, blend_name(name, cfg.blend),
                                start[1] if start is not None else None)
            summary.subjects.append(key)
    summary.seconds = time.perf_counter() - t0
    return summary


def read_reconstructions(location: str | Path | nfstore.Store, name: str, subject: str
                         ) -> dict[str, Any]:
    """``images`` (row, sample, y, x, rgb) lazily (dask), ``stimulus``, ``chosen``, ``scores``,
    ``attrs`` of a reconstruction set (``location``: a path, URL or opened store)."""
    import dask.array as da

    store = nfstore.open_store(location, check=False)
    key = f"{RECON_GROUP}/{name}/{subject}"
    try:
        g = store.group(key)
    except nfstore.QueryError:
        raise StoreError(f"--reconstructions: no set {name!r} for {subject} in "
                         f"{store.location}") from None
    return {"images": da.from_zarr(g["images"]), "stimulus": np.array(g["stimulus"][:].tolist(),
                                                                      dtype=object),
            "chosen": g["chosen"][:], "scores": g["scores"][:], "attrs": dict(g.attrs)}


def recon_subjects(location: str | Path | nfstore.Store, name: str,
                   subjects: list[str] | None = None) -> list[str]:
    """Subjects of reconstruction set ``name`` (``subjects`` if given); a one-line error if the
    set does not exist."""
    store = nfstore.open_store(location, check=False)
    sets = store.reconstruction_sets()
    if name not in sets:
        raise nfstore.QueryError(f"--reconstructions: no set {name!r} in {store.location}")
    return list(subjects) if subjects else sets[name]
