"""The loader's moving parts: the bounded shuffle buffer that batches are drawn from
(:class:`ShuffleBuffer`), and the background thread that reads ahead (:func:`prefetch`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


class ShuffleBuffer:
    """Samples read but not yet batched: one betas row each, with its adapter and target row.

    ``nbytes`` is the size of the rows held; the loader bounds it (``cache_mb``).
    """

    def __init__(self) -> None:
        self.x: list[np.ndarray] = []  # (n_voxels_s,) float32 each
        self.adapter: list[int] = []
        self.target: list[int] = []
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.x)

    def add(self, x: np.ndarray, adapter: int, targets: np.ndarray) -> None:
        """Add a block's rows ``x`` (n, n_voxels) of one ``adapter``, with their ``targets``."""
        # own copies, not views: a view would keep its whole block alive for as long as any
        # of its rows waits in the buffer, and memory would grow to the dataset's size
        self.x.extend(row.copy() for row in x)
        self.adapter.extend([adapter] * len(x))
        self.target.extend(targets.tolist())
        self.nbytes += x.nbytes

    def draw(self, k: int, rng: np.random.Generator | None
             ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """Take ``k`` samples out (at random with ``rng``, else the oldest ``k``).

        Returns
        -------
        groups : {adapter: (positions (n_s,), x (n_s, n_voxels_s))}
        targets : (k,) int64 target rows
        """
        pick = rng.choice(len(self.x), k, replace=False) if rng is not None else np.arange(k)
        pick_set = set(pick.tolist())
        groups: dict[int, list[tuple[int, np.ndarray]]] = {}
        for pos, i in enumerate(pick):
            groups.setdefault(self.adapter[i], []).append((pos, self.x[i]))
        targets = np.array([self.target[i] for i in pick], np.int64)
        self.nbytes -= sum(self.x[i].nbytes for i in pick)
        keep = [i for i in range(len(self.x)) if i not in pick_set]
        self.x = [self.x[i] for i in keep]
        self.adapter = [self.adapter[i] for i in keep]
        self.target = [self.target[i] for i in keep]
        return ({s: (np.array([p for p, _ in g]), np.stack([x for _, x in g]))
                 for s, g in groups.items()}, targets)


def prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Produce ``items`` in a background thread, ``depth`` ahead (same order).

    Reading and decompressing chunks releases the GIL, as does the model's compute, so the
    loader works while the model trains. Exceptions are re-raised in the consumer.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            q.put(err)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
