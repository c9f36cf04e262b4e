"""The stimulus images a featurizer reads, batch by batch (:func:`nfstore.embeddings.embed_store`).

A featurizer with an ``input_size`` gets ``Store.images(ids, size=input_size)`` in batches of
one stimulus table; one without gets each image at its own size (dataset files, NSD's brick
rows, pool files decoded by :func:`nfstore.imagefile.open_rgb`), passed through its
``preprocess`` in DataLoader worker processes, an unreadable file reported per image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nfstore.errors import ReaderError
from nfstore.featurizers import Featurizer


class _Images:
    """Dataset of (index, preprocessed image or None, error), decoded in worker processes.

    Parameters
    ----------
    items : (absolute file, brick key or "", row in the brick or -1) per image
    preprocess : one uint8 image (H, W, 3) -> the featurizer's input (``Featurizer.preprocess``)
    """

    def __init__(self, items: list[tuple[str, str, int]],
                 preprocess: Callable[[np.ndarray], np.ndarray]) -> None:
        self.items = items
        self.preprocess = preprocess
        self._bricks: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        from nfstore.imagefile import open_rgb

        path, key, row = self.items[i]
        try:
            if row >= 0:
                from nfstore.bricks import Brick

                if path not in self._bricks:
                    self._bricks[path] = Brick(path)
                img = self._bricks[path].rows(np.array([row]))[0]
            else:
                img = np.asarray(open_rgb(path), dtype=np.uint8)
            return i, self.preprocess(img), ""
        except ReaderError as err:  # one line naming the file already
            return i, None, str(err)
        except Exception as err:  # reported per file by the caller
            return i, None, f"{path}{f' row {row}' if row >= 0 else ''}: {type(err).__name__}: " \
                            f"{' '.join(str(err).split())[:200]}"


def _collate(batch: list[tuple[int, np.ndarray | None, str]]) -> list[tuple[int, Any, str]]:
    return batch


Todo = list[tuple[str, str, str, str, int]]  # (table, stimulus, absolute file, brick key, row)


def todo_images(store: Any, tables: list[str], done: set[str]) -> Todo:
    """(table, stimulus, absolute file, brick key, row) of every stimulus of ``tables`` with
    pixels and not in ``done``."""
    out = []
    for ds in tables:
        tab = store.stimuli(ds)
        root = Path(tab.attrs["raw_root"])  # the table read just above
        for sid, f, idx in zip(tab["stimulus"].values.tolist(), tab["file"].values.tolist(),
                               tab["index"].values.tolist()):
            if f and sid not in done:
                out.append((ds, sid, str(root / f), "brick" if idx >= 0 else "", int(idx)))
    return out


Batch = list[tuple[str, np.ndarray | None, str]]  # (stimulus, featurizer input or None, error)


def batches(store: Any, feat: Featurizer, todo: Todo,
            batch_size: int, workers: int) -> Iterator[Batch]:
    """The images to featurize, batch by batch: read with ``store.images`` at the
    featurizer's ``input_size`` (batches of one table), or each at its own size in
    ``workers`` DataLoader processes (``input_size`` None)."""
    if feat.input_size is not None:
        for table in dict.fromkeys(t[0] for t in todo):
            ids = [t[1] for t in todo if t[0] == table]
            for a in range(0, len(ids), batch_size):
                part = np.array(ids[a:a + batch_size], dtype=object)
                images = np.asarray(store.images(part, size=feat.input_size).values)
                yield [(s, feat.preprocess(im), "") for s, im in zip(part.tolist(), images)]
        return
    data = _Images([(f, k, r) for _, _, f, k, r in todo], feat.preprocess)
    if workers > 0:
        import torch

        loader: Any = torch.utils.data.DataLoader(data, batch_size=batch_size,
                                                  num_workers=workers, collate_fn=_collate)
    else:
        loader = ([data[i] for i in range(a, min(a + batch_size, len(data)))]
                  for a in range(0, len(data), batch_size))
    for batch in loader:
        yield [(todo[i][1], x, err) for i, x, err in batch]
