"""Training data, read only from the store: chunk-aligned blocks into a bounded shuffle buffer.

Each subject contributes blocks of rows that lie in one trial chunk of its betas (an NSD
session, ...). An epoch visits the blocks in a seeded random order, reads each once (ROI voxels
only), and draws batches at random from a buffer whose size is bounded by ``cache_mb``; the
buffer holds blocks of several subjects, so batches mix subjects. Only train trials are listed
(test and imagery rows are never returned); validation trials are those of a held-out set of
train *stimuli*, chosen across all subjects, so no stimulus is both trained and validated on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import zarr

from nfstore.errors import OptionError, QueryError, StoreError
from nfstore.names import ROI, ROI_MASK, SPLIT, STIMULUS
from nftrain import fingerprint as fp
from nftrain.buffer import ShuffleBuffer, prefetch
from nftrain.config import TrainConfig

__all__ = ["Batch", "Dataset", "Source", "SubjectData", "batches", "epoch_blocks", "load_dataset",
           "n_batches", "picture_groups", "prefetch", "read_block", "shard_batch_counts",
           "shard_blocks", "with_adapters"]

READ_BATCH = 16  # zarr chunks decoded per trip through its codec pipeline


@dataclass(frozen=True)
class Source:
    """Rows of one betas array (measured, or a synthetic set) used for one subject."""

    array: zarr.Array     # opened once through the store (local or remote)
    rows: np.ndarray      # (n,) row indices, sorted
    targets: np.ndarray   # (n,) indices into the embedding table
    chunk: int            # trial chunk length of the array


@dataclass(frozen=True)
class SubjectData:
    key: str
    index: int
    voxels: np.ndarray | None   # ROI voxel indices (None: all)
    n_voxels: int
    train: tuple[Source, ...]
    val: tuple[Source, ...]


@dataclass(frozen=True)
class Batch:
    """One mini-batch. ``groups[s] = (positions, x)``: the samples of adapter ``s``.

    Attributes
    ----------
    groups : dict of int to (int array (n_s,), float32 array (n_s, n_voxels_s))
    targets : int array (batch,), rows of the embedding table (also the stimulus identity)
    """

    groups: dict[int, tuple[np.ndarray, np.ndarray]]
    targets: np.ndarray

    @property
    def size(self) -> int:
        return int(self.targets.size)


@dataclass
class Dataset:
    """Subjects, their train/val sources, and the target embedding table (stimulus x D)."""

    subjects: list[SubjectData]
    stimuli: np.ndarray        # (n_stimuli,) ids of the table rows
    embeddings: np.ndarray     # (n_stimuli, D) float32
    fingerprint: dict[str, str]
    groups: np.ndarray         # (n_stimuli,) picture group: equal for copies of one picture
    excluded: dict[str, int | bool]  # trials left out as copies of held-out pictures
    synthetic: list[tuple[str, str]] = field(default_factory=list)  # (subject, set) read

    def validation_stimuli(self) -> list[str]:
        """Sorted ids of the stimuli validated on (every subject's validation rows)."""
        rows = [src.targets for s in self.subjects for src in s.val]
        if not rows:
            return []
        return sorted({str(v) for v in self.stimuli[np.concatenate(rows)].tolist()})


def _voxels(store, key: str, roi: str | None) -> np.ndarray | None:  # noqa: ANN001
    if roi is None:
        return None
    ds = store.dataset(key)
    if roi not in ds[ROI].values.tolist():
        raise QueryError(f"roi: {roi!r} not available for {key}; available: {store.rois(key)}")
    return np.flatnonzero(ds[ROI_MASK].sel({ROI: roi}).values)


def _excluded(store, cfg: TrainConfig) -> set[str]:  # noqa: ANN001
    """Stimuli that are copies of a held-out picture anywhere in the store (``nf leakage``)."""
    if cfg.keep_test_duplicates:
        return set()
    from nfstore.leakage import find_leakage

    return find_leakage(store, cfg.duplicate_max_distance).excluded()


def picture_groups(store, stimuli: np.ndarray, max_distance: int) -> np.ndarray:  # noqa: ANN001
    """Group of each stimulus, equal for copies of one picture (identity or fingerprint).

    Returns
    -------
    groups : int array of shape (n_stimuli,)
    """
    from nfstore import identity

    return identity.groups(*store.identities_of(stimuli.tolist()), max_distance)


def load_dataset(store, cfg: TrainConfig) -> Dataset:  # noqa: ANN001
    """Resolve subjects, ROIs, splits and targets from the store (coordinates only).

    Train trials (measured and synthetic) whose stimulus is a copy of any held-out picture of
    the store are left out unless ``cfg.keep_test_duplicates``; validation pictures are chosen
    by picture group, and synthetic trials of a validation picture are left out too.
    """
    have = store.subjects()
    missing = [s for s in cfg.subjects if s not in have]
    if missing:
        raise QueryError(f"subjects: {missing} not in {store.location}; available: {have}")
    excluded = _excluded(store, cfg)
    counts = {"measured_trials": 0, "synthetic_trials": 0, "validation_synthetic_trials": 0}
    rng = np.random.default_rng([cfg.seed, 1])
    measured = [_measured_train_rows(store, key, excluded, counts) for key in cfg.subjects]
    synthetic = _synthetic_rows(store, cfg)
    pool = np.array(sorted(set().union(*[set(stims.tolist()) for _, stims in measured])),
                    dtype=object)
    wanted = set(pool.tolist()).union(*[set(ids.tolist()) for sets in synthetic.values()
                                        for _, ids in sets])
    stimuli = np.array(sorted(wanted), dtype=object)
    table = {s: i for i, s in enumerate(stimuli)}
    groups = picture_groups(store, stimuli, cfg.duplicate_max_distance)
    # validation: whole picture groups of train stimuli, never also trained on
    pool_groups = np.unique(groups[[table[s] for s in pool]])
    val_groups = set(rng.choice(pool_groups, max(1, int(round(cfg.val_fraction *
                                                             pool_groups.size))),
                                replace=False).tolist())
    embeddings = _embeddings(store, cfg, stimuli)
    targets = _Targets(table, groups, val_groups)
    subjects = [_subject(store, cfg, index, key, rows, stims, synthetic[key], targets,
                         excluded, counts)
                for index, (key, (rows, stims)) in enumerate(zip(cfg.subjects, measured))]
    excl = {"keep_test_duplicates": cfg.keep_test_duplicates,
            "held_out_copies": len(excluded), **counts}
    return Dataset(subjects, stimuli, embeddings, fp.of_store(store, cfg.subjects, cfg.embedding),
                   groups, excl, [(k, n) for k, sets in synthetic.items() for n, _ in sets])


@dataclass(frozen=True)
class _Targets:
    """The embedding table's row of each stimulus id, and the validation picture groups."""

    table: dict[str, int]
    groups: np.ndarray  # (n_stimuli,) picture group of each table row
    val_groups: set[int]

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Table rows (n,) int64 of the stimulus ids (n,)."""
        return np.array([self.table[s] for s in ids], dtype=np.int64)

    def in_val(self, ids: np.ndarray) -> np.ndarray:
        """(n,) bool: is the stimulus a validation picture?"""
        return np.array([self.groups[self.table[s]] in self.val_groups for s in ids], dtype=bool)


def _measured_train_rows(store, key: str, excluded: set[str],  # noqa: ANN001
                         counts: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, stimulus ids) of ``key``'s train trials, less copies of held-out pictures."""
    ds = store.dataset(key)
    rows = np.flatnonzero(ds[SPLIT].values == "train")
    stims = ds[STIMULUS].values[rows]
    leak = np.isin(stims, list(excluded))
    counts["measured_trials"] += int(leak.sum())
    return rows[~leak], stims[~leak]


def _synthetic_rows(store, cfg: TrainConfig  # noqa: ANN001
                    ) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Each subject's synthetic sets that ``cfg.synthetic`` names: [(name, stimulus ids)]."""
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for key in cfg.subjects:
        have = store.synthetic_sets(key)
        out[key] = []
        for name in (have if cfg.synthetic == ("*",) else list(cfg.synthetic)):
            if name not in have:
                raise QueryError(f"synthetic: {key} has no set {name!r}; available: {have}")
            store.check_synthetic(key, name)
            out[key].append((name, store.synthetic_stimuli(key, name)))
    return out


def _embeddings(store, cfg: TrainConfig, stimuli: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """The target embeddings (n_stimuli, D) float32, all finite."""
    emb = store.embeddings(cfg.embedding, stimuli=stimuli)
    embeddings = np.asarray(emb.values, dtype=np.float32)
    if not np.isfinite(embeddings).all():
        bad = stimuli[~np.isfinite(embeddings).all(axis=1)]
        raise StoreError(f"{store.location}/embeddings/{cfg.embedding}: non-finite embeddings "
                         f"for {bad.size} stimuli (e.g. {bad[:3].tolist()}); re-embed them")
    return embeddings


def _subject(store, cfg: TrainConfig, index: int, key: str, rows: np.ndarray,  # noqa: ANN001
             stims: np.ndarray, synthetic: list[tuple[str, np.ndarray]], t: _Targets,
             excluded: set[str], counts: dict[str, int]) -> SubjectData:
    """One subject's train sources (measured, then synthetic up to ``synthetic_share``) and
    validation source."""
    arr = _open_betas(store, key)
    is_val = t.in_val(stims)
    if cfg.train_fraction < 1:  # keep a share of the training stimuli (val untouched)
        own = np.unique(stims[~is_val])
        keep = set(np.random.default_rng([cfg.seed, 4, index]).choice(
            own, max(1, int(round(cfg.train_fraction * own.size))), replace=False).tolist())
        drop = ~is_val & ~np.isin(stims, list(keep))
        rows, stims, is_val = rows[~drop], stims[~drop], is_val[~drop]
    tgt = t.rows(stims)
    train = [Source(arr, rows[~is_val], tgt[~is_val], arr.chunks[0])]
    n_syn_max = int(cfg.synthetic_share / (1 - cfg.synthetic_share) * (~is_val).sum())
    for name, ids in synthetic:
        leak = np.isin(ids, list(excluded))
        in_val = t.in_val(ids)
        counts["synthetic_trials"] += int(leak.sum())
        counts["validation_synthetic_trials"] += int((in_val & ~leak).sum())
        usable = np.flatnonzero(~leak & ~in_val)
        keep = np.sort(usable[np.random.default_rng([cfg.seed, 2, index]).permutation(
            usable.size)[:n_syn_max]])
        n_syn_max -= keep.size
        sarr = _open_betas(store, key, name)
        train.append(Source(sarr, keep, t.rows(ids[keep]), sarr.chunks[0]))
    voxels = _voxels(store, key, cfg.roi_for(key))
    n_vox = int(arr.shape[1]) if voxels is None else int(voxels.size)
    if n_vox == 0:
        raise OptionError(f"roi: {cfg.roi_for(key)!r} selects no voxels of {key}")
    val = (Source(arr, rows[is_val], tgt[is_val], arr.chunks[0]),)
    return SubjectData(key, index, voxels, n_vox, tuple(train), val)


def _open_betas(store, key: str, synthetic: str | None = None) -> zarr.Array:  # noqa: ANN001
    """The betas array, opened so that reads decode a slab's chunks in batches (zarr's default
    is one chunk per trip through its async codec pipeline: about twice the time here); the
    pipeline takes the setting when the array is opened, so the change stays scoped."""
    with zarr.config.set({"codec_pipeline.batch_size": READ_BATCH}):
        return store.betas_array(key, synthetic)


def _blocks(position: int, sources: tuple[Source, ...]) -> list[tuple[int, int, int]]:
    """(subject position, source index, chunk number) of every non-empty chunk."""
    out = []
    for s, src in enumerate(sources):
        for c in np.unique(src.rows // src.chunk):
            out.append((position, s, int(c)))
    return out


def with_adapters(data: Dataset, adapters: list[int]) -> Dataset:
    """The dataset with each subject's batches keyed by the given adapter index."""
    from dataclasses import replace

    return replace(data, subjects=[replace(s, index=a) for s, a in zip(data.subjects,
                                                                         adapters)])


def read_block(subject: SubjectData, src: Source, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Betas (n, n_voxels) float32 and targets (n,) of the source's rows in one chunk."""
    sel = (src.rows >= chunk * src.chunk) & (src.rows < (chunk + 1) * src.chunk)
    rows = src.rows[sel]
    lo, hi = int(rows.min()), int(rows.max()) + 1
    arr = src.array
    if subject.voxels is None:  # one contiguous slab (zarr's fast path), rows in numpy
        slab = arr[lo:hi]
    else:
        slab = arr.get_orthogonal_selection((slice(lo, hi), subject.voxels))
    x = np.asarray(slab, dtype=np.float32)[rows - lo]
    return x, src.targets[sel]


def epoch_blocks(data: Dataset, cfg: TrainConfig, epoch: int, split: str = "train"
                 ) -> list[tuple[int, int, int]]:
    """The epoch's blocks (subject position, source, chunk) in reading order: shuffled by
    (seed, epoch) for ``train``, fixed for ``val``."""
    blocks = [b for p, s in enumerate(data.subjects)
              for b in _blocks(p, s.train if split == "train" else s.val)]
    if split == "train":
        rng = np.random.default_rng([cfg.seed, 3, epoch])
        blocks = [blocks[i] for i in rng.permutation(len(blocks))]
    return blocks


def _block_rows(data: Dataset, block: tuple[int, int, int]) -> int:
    sub_i, src_i, chunk = block
    src = data.subjects[sub_i].train[src_i]
    return int(((src.rows >= chunk * src.chunk) & (src.rows < (chunk + 1) * src.chunk)).sum())


def shard_blocks(data: Dataset, cfg: TrainConfig, epoch: int, n: int
                 ) -> list[list[tuple[int, int, int]]]:
    """The epoch's train blocks dealt to ``n`` shards (torchrun ranks): in reading order, each
    block to the shard holding the fewest rows so far (ties: the lowest shard), so shards
    differ by at most one block's rows and every rank computes the same deal."""
    shards: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
    rows = [0] * n
    for block in epoch_blocks(data, cfg, epoch):
        r = int(np.argmin(rows))
        shards[r].append(block)
        rows[r] += _block_rows(data, block)
    return shards


def n_batches(rows: int, batch_size: int) -> int:
    """Exactly the number of batches :func:`batches` yields for ``rows`` rows (full ones, then
    a last one of >= 2)."""
    return rows // batch_size + (1 if rows % batch_size >= 2 else 0)


def shard_batch_counts(data: Dataset, cfg: TrainConfig, epoch: int, n: int) -> list[int]:
    """Batches each of ``n`` shards yields in ``epoch``."""
    return [n_batches(sum(_block_rows(data, b) for b in blocks), cfg.batch_size)
            for blocks in shard_blocks(data, cfg, epoch, n)]


def batches(data: Dataset, cfg: TrainConfig, epoch: int, split: str = "train",
            skip: int = 0, shard: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
    """The epoch's mini-batches, in an order fixed by (seed, epoch).

    Parameters
    ----------
    split : {"train", "val"}
        Validation batches are read in a fixed order and not shuffled.
    skip : int
        Batches to skip (resuming mid-epoch); they are drawn but not yielded.
    shard : (index, count)
        Read only shard ``index`` of ``count`` (:func:`shard_blocks`; train only): the blocks
        of one torchrun rank, drawn from a stream of its own.
    """
    rng = np.random.default_rng([cfg.seed, 3, epoch])
    if shard[1] > 1 and split == "train":
        blocks = shard_blocks(data, cfg, epoch, shard[1])[shard[0]]
        rng = np.random.default_rng([cfg.seed, 3, epoch, 1, shard[0]])
    else:
        blocks = epoch_blocks(data, cfg, epoch, split)
        if split == "train":
            rng.permutation(len(blocks))  # the draws follow the permutation in one stream
    pick = rng if split == "train" else None  # validation batches: in reading order
    budget = cfg.cache_mb * 2**20
    buf = ShuffleBuffer()
    n = 0
    for sub_i, src_i, chunk in blocks:
        sub = data.subjects[sub_i]
        x, t = read_block(sub, (sub.train if split == "train" else sub.val)[src_i], chunk)
        buf.add(x, sub.index, t)
        del x
        while buf.nbytes > budget and len(buf) >= cfg.batch_size:
            b = Batch(*buf.draw(cfg.batch_size, pick))
            n += 1
            if n > skip:
                yield b
    while len(buf) >= 2 or (split == "val" and len(buf)):  # last, smaller batch included
        b = Batch(*buf.draw(min(cfg.batch_size, len(buf)), pick))
        n += 1
        if n > skip:
            yield b
