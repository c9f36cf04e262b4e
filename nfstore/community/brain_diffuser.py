"""Export one store subject in Brain-Diffuser's prepared-array layout, which its own scripts
read unchanged (``nf export brain-diffuser STORE SUBJECT OUT``).

Written under ``OUT`` (Brain-Diffuser's ``data/`` folder), N = the subject number::

    processed_data/subj0N/nsd_{train,test}_fmriavg_nsdgeneral_subN.npy  (n, V) float64
    processed_data/subj0N/nsd_{train,test}_stim_subN.npy                (n, size, size, 3) float64
    processed_data/subj0N/nsd_{train,test}_cap_subN.npy                 (n, 5) fixed-width str

One row per image and split: the mean of the store's trials of that image (weighted by their
``n_repeats`` when the store's rows are themselves repeat averages), rows in order of the
image's first trial; voxel columns in C order over the grid when the store has every voxel's
grid index (an NSD subject: Brain-Diffuser's nsdgeneral order), else the store's order.
Values are the store's betas, already normalized at ingest: the
``/300`` and z-score of Brain-Diffuser's regression scripts then change nothing but a scale
(see the dataset page). Imagery trials (GOD) and synthetic trial sets are left out. Every file
loads with ``np.load`` without ``allow_pickle``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nfstore.community import brain_diffuser_files as bdf
from nfstore.community import column_order
from nfstore.errors import OptionError, StoreError
from nfstore.names import SPLIT, STIMULUS
from nfstore.transaction import replace_path

IMAGE_SIZE = 425  # Brain-Diffuser's im_dim
IMAGE_ROWS = 64  # images read and resized per step


@dataclass
class ExportSummary:
    """What :func:`export_subject` wrote; ``str()`` is a one-line summary."""

    subject: str
    folder: Path
    number: int
    rows: dict[str, int] = field(default_factory=dict)
    voxels: int = 0
    image_size: int = IMAGE_SIZE
    captions: bool = False
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"exported {self.subject} to {self.folder} as Brain-Diffuser subject "
                f"{self.number}: {self.rows.get('train', 0)} train and "
                f"{self.rows.get('test', 0)} test images x {self.voxels} voxels, "
                f"{self.image_size} px images, "
                f"{'with' if self.captions else 'without'} captions, in {self.seconds:.1f} s")


def subject_number(subject: str, number: int | None) -> int:
    """The N of ``subjN`` in the file names: ``number`` or the subject name's last digits."""
    if number is None:
        m = re.search(r"(\d+)$", subject)
        if not m or int(m.group(1)) < 1:
            raise OptionError(f"number: expected a subject number (the subject name "
                              f"{subject!r} ends in none); pass number=N")
        number = int(m.group(1))
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 99:
        raise OptionError(f"number: expected an integer in 1..99; found {number!r}")
    return number


def _integer(name: str, value: Any) -> int | None:
    """An integer option, also from its text (``--option size=64``)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    try:
        return int(str(value))
    except ValueError:
        raise OptionError(f"{name}: expected an integer; found {value!r}") from None


def _groups(ds: Any) -> dict[str, tuple[np.ndarray, list[np.ndarray]]]:
    """Per split: stimulus ids in first-trial order and each one's trial rows."""
    stim = np.asarray(ds[STIMULUS].values, dtype=object)
    split = np.asarray(ds[SPLIT].values, dtype=object)
    out = {}
    for name in bdf.SPLITS:
        where = np.flatnonzero(split == name)
        codes, uniq = _codes(stim[where])
        order, pos = bdf.first_appearance(codes)
        out[name] = (uniq[order], [where[p] for p in pos])
    return out


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of string values and the sorted unique values."""
    uniq, inverse = np.unique(values.astype(str), return_inverse=True)
    return inverse.astype(np.int64), uniq.astype(object)


def _average(betas: Any, groups: dict[str, tuple[np.ndarray, list[np.ndarray]]],
             weights: np.ndarray, columns: np.ndarray, tmp: Path, number: int, bar: Any
             ) -> None:
    """Write each split's weighted row means (voxels in ``columns`` order), reading the betas
    once in trial blocks."""
    n_trials, n_vox = betas.shape
    outs, row_of, totals = {}, {}, {}
    for split, (ids, trials) in groups.items():
        outs[split] = np.lib.format.open_memmap(
            tmp / bdf.array_path(tmp, number, split, "fmri").name, mode="w+",
            dtype=np.float64, shape=(len(ids), n_vox))
        outs[split][:] = 0.0
        r = np.full(n_trials, -1, np.int64)
        for k, t in enumerate(trials):
            r[t] = k
        row_of[split] = r
        totals[split] = np.array([weights[t].sum() for t in trials], np.float64)
    step = int(betas.chunks[0])
    for a in range(0, n_trials, step):
        x = np.asarray(betas[a:a + step], dtype=np.float64)[:, columns]
        for split, out in outs.items():
            rows = row_of[split][a:a + step]
            keep = np.flatnonzero(rows >= 0)
            if keep.size:
                order = keep[np.argsort(rows[keep], kind="stable")]
                g, starts = np.unique(rows[order], return_index=True)
                out[g] += np.add.reduceat(x[order] * weights[a + order, None], starts, axis=0)
        bar.update(1)
    for split, out in outs.items():
        if len(out):
            out /= totals[split][:, None]
        out.flush()
        del out


def _resized(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, H, W, 3) -> (n, size, size, 3), PIL bicubic where the size differs."""
    if images.shape[1:3] == (size, size):
        return images
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size),
                                                           Image.Resampling.BICUBIC))
                     for im in images])


def _write_images(st: Any, ids: np.ndarray, path: Path, size: int) -> None:
    """The stimuli's pixels as Brain-Diffuser's float64 (n, size, size, 3) array."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64,
                                    shape=(len(ids), size, size, 3))
    for a in range(0, len(ids), IMAGE_ROWS):
        part = ids[a:a + IMAGE_ROWS].tolist()
        pixels = np.asarray(st.images(part, size=(size, size)).values, dtype=np.uint8)
        out[a:a + len(part)] = _resized(pixels, size)
    out.flush()
    del out


def _captions(ds: Any, groups: dict[str, tuple[np.ndarray, list[np.ndarray]]]
              ) -> dict[str, np.ndarray] | None:
    """(n, 5) caption arrays from the ``caption_1..5`` trial coordinates, or None."""
    names = [f"caption_{k + 1}" for k in range(bdf.N_CAPTIONS)]
    if not all(n in ds.coords for n in names):
        return None
    cols = np.stack([np.asarray(ds[n].values, dtype=object) for n in names], axis=1)
    return {split: bdf.caption_array([[str(c) for c in cols[t[0]]] for t in trials])
            for split, (_, trials) in groups.items()}


def export_subject(store: Any, subject: str, out: str | os.PathLike[str], *,
                   overwrite: bool = False, progress: bool = False, size: int = IMAGE_SIZE,
                   number: int | None = None, **options: Any) -> ExportSummary:
    """Write ``subject`` of ``store`` as Brain-Diffuser's ``processed_data/subj0N`` arrays.

    Parameters
    ----------
    store : path, URL or :class:`nfstore.Store`
    subject : str
        ``'<dataset>/<subject>'``, e.g. ``'nsd/subj01'``, ``'god/sub-01'``.
    out : path
        Brain-Diffuser's ``data/`` folder; ``processed_data/subj0N`` is written inside it
        (built aside, then put in place).
    overwrite : bool
        Replace an existing ``processed_data/subj0N``.
    progress : bool
        Show a progress bar.
    size : int
        Image side in pixels (Brain-Diffuser: 425); images are resized with PIL bicubic.
    number : int, optional
        N of ``subj0N`` / ``subN`` (default: the subject name's last digits). Brain-Diffuser's
        scripts accept 1, 2, 5 and 7 only.

    Returns
    -------
    ExportSummary
    """
    from tqdm.auto import tqdm

    import nfstore

    if options:
        raise OptionError(f"{sorted(options)[0]}: not an option of the brain-diffuser export; "
                          f"valid: number, size")
    size, number = _integer("size", size), _integer("number", number)
    if size is None or size < 1:
        raise OptionError(f"size: expected an image side in pixels >= 1; found {size!r}")
    number = subject_number(subject, number)
    t0 = time.perf_counter()
    st = store if isinstance(store, nfstore.Store) else nfstore.open_store(store)
    ds = st.dataset(subject)
    target = bdf.subject_dir(Path(out), number)
    if target.exists() and not overwrite:
        raise StoreError(f"{target}: folder exists; pass --overwrite to replace it")
    groups = _groups(ds)
    if not len(groups["train"][0]):
        raise OptionError(f"subject: expected train trials in {subject}; found none")
    betas = st.betas_array(subject)
    weights = (np.asarray(ds["n_repeats"].values, np.float64) if "n_repeats" in ds.coords
               else np.ones(betas.shape[0], np.float64))
    captions = _captions(ds, groups)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = bdf.new_folder(target)
    n_img = sum(-(-len(ids) // IMAGE_ROWS) for ids, _ in groups.values())
    bar = tqdm(total=-(-betas.shape[0] // int(betas.chunks[0])) + n_img, unit="step",
               disable=not progress, desc="export")
    try:
        _average(betas, groups, weights, column_order(ds), tmp, number, bar)
        for split, (ids, _) in groups.items():
            _write_images(st, ids, tmp / bdf.array_path(tmp, number, split, "stim").name, size)
            bar.update(-(-len(ids) // IMAGE_ROWS))
            caps = captions[split] if captions else bdf.caption_array([[]] * len(ids))
            bdf.write_array(tmp / bdf.array_path(tmp, number, split, "cap").name, caps)
        replace_path(tmp, target)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return ExportSummary(subject=subject, folder=target, number=number,
                         rows={s: len(g[0]) for s, g in groups.items()},
                         voxels=int(betas.shape[1]), image_size=size,
                         captions=captions is not None, seconds=time.perf_counter() - t0)
