"""Ingest: raw dataset files -> store groups, streamed block by block, resumable, atomic.

Any registered reader (:mod:`nfstore.readers`, plugins included) can be ingested. The write
goes through the store's one write path (:func:`nfstore.transaction`): each subject is staged
(invisible to queries) under its key with the ingest fingerprint as identity, written one block
(NSD session) at a time, its finished blocks saved as the transaction's progress, so a killed
ingest resumes where it stopped; when every block is written the subject is committed, replacing
a previous version only at that moment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from nfstore import _layout
from nfstore._version import __version__
from nfstore.errors import MissingFileError, NFError, OptionError, StoreError
from nfstore.ingest_blocks import stage_here, write_template
from nfstore.ingest_cluster import ClusterRun, connect, stage_on_cluster, stage_on_forks
from nfstore.names import BETAS, COMPLETE, STAGING_GROUP, STATUS_ATTR, STIMULI_GROUP, subject_key
from nfstore.normalize import (
    NONFINITE,
    set_nonfinite,
    set_normalization,
    spanning_stats,
)
from nfstore.readers import get_reader
from nfstore.readers.base import Block, RawSubject, StimulusTable
from nfstore.stimuli import commit_stimulus_table, fingerprints_to_compute
from nfstore.transaction import Transaction, transaction

VOXEL_CHUNK = 512
DTYPES = ("float32", "float16")


@dataclass
class IngestSummary:
    """What an ingest did: subjects written, trials, voxels, bytes of betas, seconds."""

    dataset: str
    subjects: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    trials: int = 0
    voxels: dict[str, int] = field(default_factory=dict)
    bytes_written: int = 0
    seconds: float = 0.0
    nonfinite: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        rate = self.trials / self.seconds if self.seconds else 0.0
        mb = self.bytes_written / 2**20
        return (f"ingested {len(self.subjects)} {self.dataset} subject(s) "
                f"({', '.join(self.subjects)}): {self.trials} trials, "
                f"{sum(self.voxels.values())} voxels, {mb:.1f} MiB of betas in "
                f"{self.seconds:.1f} s ({rate:.0f} trials/s, {mb / max(self.seconds, 1e-9):.1f} "
                f"MiB/s)" + (f"; resumed {', '.join(self.resumed)}" if self.resumed else "")
                + (f"; skipped {', '.join(self.skipped)} (already complete from the same files)"
                   if self.skipped else "")
                + (f"; {sum(self.nonfinite.values())} non-finite betas stored as 0 ("
                   + ", ".join(f"{k}: {n}" for k, n in self.nonfinite.items()) + ")"
                   if any(self.nonfinite.values()) else ""))


def ingest(dataset: str, raw_root: str | Path, store: str | Path, *,
           subjects: Sequence[str] | None = None, options: Any = None,
           overwrite: bool = False, dtype: str = "float32", voxel_chunk: int = VOXEL_CHUNK,
           normalization: str | None = None, progress: bool = False,
           on_block: Callable[[str, str], None] | None = None,
           scheduler: str | None = None, nonfinite: str = "error") -> IngestSummary:
    """Ingest subjects of ``dataset`` from ``raw_root`` into ``store``.

    Parameters
    ----------
    dataset : str
        A reader's name (:func:`nfstore.readers.reader_names`: ``nsd``, ``bold5000``, ``god``
        and plugins).
    raw_root : path
        Root of the dataset in its original layout (never modified).
    store : path or URL
        Store folder, created if missing (or a versioned store's URL).
    subjects : list of str, optional
        Subject names accepted by the reader (``1``, ``subj01``); default: all found.
    options : reader ``Options`` or dict, optional
        A dict is converted by the reader (``Reader.parse_options``).
    overwrite : bool
        Replace subjects already in the store (atomically, at the end).
    dtype : {"float32", "float16"}
    voxel_chunk : int
        Voxels per chunk (the trial chunk is the largest block, e.g. one NSD session).
    normalization : {"session-train", "run", "train-global", "none"}, optional
        Per voxel z-scoring: per session with that session's train-trial statistics (NSD and
        BOLD5000 default); per run with the run's own statistics, test runs included (GOD
        default, as Kamitani's pipeline); per subject with all its train trials; or none.
    progress : bool
        Show a progress bar.
    on_block : callable, optional
        Called with ``(subject_key, block_label)`` after each block is durably written.
    scheduler : str, optional
        Address of a Dask distributed scheduler (``tcp://host:8786``): every block (an NSD
        session, a BOLD5000 session, a GOD block of runs) of every subject becomes a task that a
        worker loads, normalizes and writes into the staged subject; the workers read
        ``raw_root`` and write the store at the same paths as here (a shared filesystem). This
        process checks, keeps the progress files and commits, as without a scheduler, so the
        values are the same and a killed run resumes the same way.
    nonfinite : {"error", "zero"}
        Betas that are NaN or infinite once read as float32 (float64 values beyond float32's
        range included): ``"error"`` refuses the file with a one-line error naming it and the
        count; ``"zero"`` leaves them out of the normalization statistics, stores them as 0 and
        records their count (``normalization.nonfinite_values`` in the subject's attributes,
        and the summary line). Finite betas above ``nfstore.normalize.MAX_ABS`` in magnitude
        are refused either way.
    """
    t0 = time.perf_counter()
    reader = get_reader(dataset)
    root, options, raws, table = _read_subjects(reader, dataset, raw_root, subjects, options,
                                                dtype, normalization, nonfinite)
    summary = _write_store(store, dataset, reader, (root, options, raws, table), overwrite, dtype,
                           voxel_chunk, normalization, progress, on_block, scheduler,
                           nonfinite)
    summary.seconds = time.perf_counter() - t0
    return summary


def _read_subjects(reader: Any, dataset: str, raw_root: str | Path,
                   subjects: Sequence[str] | None, options: Any, dtype: str,
                   normalization: str | None, nonfinite: str
                   ) -> tuple[Path, Any, list[RawSubject], StimulusTable]:
    """Check the arguments and open every subject and the stimulus table, writing nothing.

    Everything that can be checked before writing is checked here: the store is untouched
    when a header, design file or ROI is wrong.

    Returns
    -------
    root : Path
        The dataset root.
    options : reader ``Options``
    raws : list of RawSubject
        One per subject, with its normalization and nonfinite policy set.
    table : StimulusTable
    """
    if dtype not in DTYPES:
        raise OptionError(f"dtype: expected one of {list(DTYPES)}; found {dtype!r}")
    if nonfinite not in NONFINITE:
        raise OptionError(f"nonfinite: expected one of {list(NONFINITE)}; found {nonfinite!r}")
    root = Path(raw_root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: missing folder; expected the {dataset} dataset root")
    if options is None or isinstance(options, dict):
        options = reader.parse_options(options)
    names = [reader.subject_name(s) for s in subjects] if subjects else reader.list_subjects(root)
    if not names:
        raise MissingFileError(f"{root}: expected {dataset} subject folders; found none")
    raws = [reader.open_subject(root, name, options) for name in names]
    for raw in raws:
        set_normalization(raw, normalization, reader.normalization)
        set_nonfinite(raw, nonfinite)
    return root, options, raws, reader.stimulus_table(root, options)


def _write_store(store: str | Path, dataset: str, reader: Any,
                 opened: tuple[Path, Any, list[RawSubject], StimulusTable], overwrite: bool,
                 dtype: str, voxel_chunk: int, normalization: str | None, progress: bool,
                 on_block: Callable[[str, str], None] | None, scheduler: str | None,
                 nonfinite: str) -> IngestSummary:
    """Write the opened subjects and stimuli in one transaction.

    ``opened`` is :func:`_read_subjects`'s result. A store folder this call created is removed
    again when the ingest fails before writing anything into it.
    """
    root, options, raws, table = opened
    local = _local_path(store)
    created = local is not None and not local.exists()
    try:
        with transaction(store, f"nf ingest {dataset}", create=True) as tx:
            run = ClusterRun(dataset, root.resolve(), options, normalization, scheduler,
                             nonfinite)
            summary = _write_subjects(tx, run, raws, table, overwrite, dtype, voxel_chunk,
                                      progress, on_block, _reader_path(reader))
    except NFError:
        if created and local is not None and _empty_store(local, reader.store_dataset()):
            shutil.rmtree(local, ignore_errors=True)  # a store this command created, empty
        raise
    return summary


def _local_path(store: str | Path) -> Path | None:
    """The store's folder, or None for a URL."""
    from nfstore import _remote

    text = os.fspath(store)
    return None if _remote.is_url(text) else Path(text.removeprefix("file://"))


def _empty_store(path: Path, dataset: str) -> bool:
    """Whether ``path`` holds no subject and no staged write (what a failed first ingest
    leaves: safe to remove)."""
    return not any(path.glob(f"{dataset}/*/zarr.json")) and not any(
        p.name != "zarr.json" for p in (path / STAGING_GROUP).glob("*.json"))


def _reader_path(reader: Any) -> str:
    """Where the reader's class lives (``nfstore.readers.nsd.NSDReader``), for provenance."""
    return f"{type(reader).__module__}.{type(reader).__qualname__}"


def _write_subjects(tx: Transaction, run: ClusterRun, raws: list[RawSubject],
                    table: StimulusTable, overwrite: bool, dtype: str, voxel_chunk: int,
                    progress: bool, on_block: Callable[[str, str], None] | None,
                    reader: str) -> IngestSummary:
    """Stage and commit each subject in turn, inside the transaction ``tx``.

    Each subject is committed when complete, so a failure in a later subject keeps the
    earlier ones. A user error (bad file) discards the failing subject's staged blocks; an
    interrupt, a full disk or a memory error keeps them, and rerunning resumes.
    """
    dataset, root, path = get_reader(run.dataset).store_dataset(), run.root, tx.root
    raws, skipped = _check_existing(tx, dataset, raws, overwrite, dtype, voxel_chunk)
    summary = IngestSummary(dataset, skipped=skipped)
    bar = _progress_bar(sum(len(r.blocks) for r in raws), progress)
    committed_any = False
    # image fingerprints are computed in a thread while the first subject's betas are staged
    pool = ThreadPoolExecutor(max_workers=1)
    client = connect(run.scheduler)
    referenced = sorted({i for raw in raws for i in pd.unique(raw.trials["stimulus"])})
    tx.path(f"{STIMULI_GROUP}/{table.dataset}")  # on a URL: the previous table, to reuse
    prints = pool.submit(fingerprints_to_compute, path, table, referenced)
    try:
        for raw in raws:
            key = subject_key(dataset, raw.subject)
            try:
                resumed, n_bad = _stage(tx, raw, key, (dtype, voxel_chunk, str(root), reader),
                                        bar, on_block, (client, run))
            except NFError:
                tx.discard(key)  # a user error leaves no trace of this subject
                raise
            except (OSError, MemoryError) as err:
                state = tx.state(key) or {}
                raise StoreError(
                    f"{path}: ingest of {key} stopped after {len(state.get('blocks_done', []))}"
                    f" of {len(raw.blocks)} blocks ({type(err).__name__}: "
                    f"{' '.join(str(err).split())[:160]}); the written blocks are kept: free "
                    f"space or memory and rerun the same command to resume") from err
            if not committed_any:
                _commit_stimuli(path, table, raws, prints.result())
            _keep_synthetic_sets(tx, key)
            tx.commit(key)
            committed_any = True
            summary.subjects.append(key)
            summary.resumed += [key] if resumed else []
            summary.nonfinite[key] = n_bad
            summary.trials += raw.n_trials
            summary.voxels[key] = raw.n_voxels
            summary.bytes_written += raw.n_trials * raw.n_voxels * np.dtype(dtype).itemsize
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
        if client is not None:
            client.close()
    return summary


def _keep_synthetic_sets(tx: Transaction, key: str) -> None:
    """Move the synthetic sets of the version being replaced into the new one: they stay
    usable if the ingest fingerprint is unchanged, and are refused as stale otherwise (on a
    URL they are brought into the scratch folder whole first)."""
    old, staged = tx.path(f"{key}/synthetic"), tx.staged(key)
    if old.is_dir() and not (staged / "synthetic").exists():
        os.rename(old, staged / "synthetic")


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="block", disable=not enabled, desc="ingest")


def _check_existing(tx: Transaction, dataset: str, raws: list[RawSubject], overwrite: bool,
                    dtype: str, voxel_chunk: int) -> tuple[list[RawSubject], list[str]]:
    """Subjects still to write, and those skipped.

    A complete subject needs ``overwrite`` to be replaced, except when this command resumes an
    interrupted ingest: complete subjects written from the same files and options (same
    fingerprint) are then skipped, so that rerunning the interrupted command finishes it.
    """
    if overwrite:
        return raws, []
    path = tx.root
    keys = [subject_key(dataset, r.subject) for r in raws]
    existing = [(r, k) for r, k in zip(raws, keys) if _is_complete(path / k)]
    if not existing:
        return raws, []
    resuming = tx.continues or any(tx.state(k) is not None for k in keys)
    same = {k for r, k in existing if resuming and _stored_fingerprint(path / k)
            == _fingerprint(r, dtype, voxel_chunk)}
    blocking = [k for _, k in existing if k not in same]
    if blocking:
        raise StoreError(f"{path}: {', '.join(blocking)} already in the store; pass "
                         f"--overwrite to replace")
    return [r for r, k in zip(raws, keys) if k not in same], sorted(same)


def _stored_fingerprint(group: Path) -> str | None:
    meta = _layout.read_json(group / "zarr.json") or {}
    return meta.get("attributes", {}).get("ingest_fingerprint")


def _is_complete(group: Path) -> bool:
    meta = _layout.read_json(group / "zarr.json")
    return bool(meta) and meta.get("attributes", {}).get(STATUS_ATTR) == COMPLETE


def _fingerprint(raw: RawSubject, dtype: str, voxel_chunk: int) -> str:
    blob = json.dumps({"dataset": raw.dataset, "subject": raw.subject, "dtype": dtype,
                       "normalization": raw.normalization,
                       "voxel_chunk": voxel_chunk, "attrs": raw.attrs,
                       "blocks": [(b.label, b.start, b.stop) for b in raw.blocks],
                       "n_voxels": raw.n_voxels, "version": __version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _stage(tx: Transaction, raw: RawSubject, key: str, layout: tuple[str, int, str, str],
           bar: Any, on_block: Callable[[str, str], None] | None,
           cluster: tuple[Any, ClusterRun | None] = (None, None)) -> tuple[bool, int]:
    """Write ``raw`` into its staged group block by block (``layout``: dtype, voxel chunk,
    raw root and reader); returns whether it resumed earlier work and how many non-finite betas
    were stored as 0."""
    dtype, voxel_chunk, raw_root, reader = layout
    fingerprint = _fingerprint(raw, dtype, voxel_chunk)
    staged, state, resumed = tx.stage(key, identity={"fingerprint": fingerprint}, create=False)
    if not resumed:
        write_template(raw, staged, dtype, voxel_chunk, raw_root, reader)
        state = {**state, "blocks_done": [], "zero_std": 0, "nonfinite": 0}
        tx.save(key, state)
    betas = zarr.open_array(str(staged / BETAS), mode="r+")
    fit = raw.norm_fit if raw.norm_fit is not None else (raw.trials["split"] == "train"
                                                          ).to_numpy()
    todo = [b for b in raw.blocks if b.label not in state["blocks_done"]]
    bar.update(len(raw.blocks) - len(todo))
    none = raw.normalization.get("method") == "none"
    stats = None if none or not todo else spanning_stats(raw, fit)

    def done(block: Block, n_zero: int, n_bad: int) -> None:  # after the block's write
        state["blocks_done"].append(block.label)
        state["zero_std"] += n_zero
        state["nonfinite"] = state.get("nonfinite", 0) + n_bad
        tx.save(key, state)
        bar.update(1)
        bar.set_postfix_str(f"{key} {block.label}")
        if on_block is not None:
            on_block(key, block.label)

    client, run = cluster
    if client is not None and tx.remote is not None:  # a URL: forks of the work branch
        stage_on_forks(client, run, raw, todo, tx.remote,
                       (staged / BETAS).relative_to(tx.root).as_posix(), stats, dtype, done)
    elif client is not None:
        stage_on_cluster(client, run, raw, todo, str((staged / BETAS).resolve()), stats,
                          dtype, done)
    else:
        stage_here(raw, todo, betas, stats, fit, none, dtype, done)
    group = zarr.open_group(str(staged), mode="r+")
    norm = dict(raw.normalization, zero_std_pairs=int(state["zero_std"]))
    n_bad = int(state.get("nonfinite", 0))
    if "nonfinite" in norm:
        norm["nonfinite_values"] = n_bad
    group.attrs.update({"normalization": norm, "ingest_fingerprint": fingerprint,
                        STATUS_ATTR: COMPLETE})
    return resumed, n_bad


def _commit_stimuli(store: Path, table: StimulusTable, raws: list[RawSubject],
                    known: dict[str, str]) -> None:
    """The reader's table plus every stimulus the subjects reference without an image (GOD
    imagery names a category: empty ``file``); fingerprints of the referenced images."""
    referenced = [i for raw in raws for i in pd.unique(raw.trials["stimulus"])]
    commit_stimulus_table(store, table, referenced, fingerprint_ids=referenced, known=known)


def options_from(dataset: str, **values: Any) -> Any:
    """The reader's ``Options`` from keyword values (``None`` keeps a default; text is
    converted, see :meth:`nfstore.readers.Reader.parse_options`)."""
    return get_reader(dataset).parse_options(values)
