"""``nf leakage``: held-out stimuli that reach training under another name (or the same one).

A test or imagery stimulus of any subject leaks when the same picture -- same id, same
``identity`` or a copy by content (:mod:`nfstore.copies`: re-encoded, resized, grey,
brightened, mirrored or cropped, or the uncropped original of a square-cropped stimulus) -- is
a train stimulus of any subject, a stimulus of a synthetic set, or an image of a pool. The
report lists every such pair; :meth:`LeakageReport.excluded` is the set of stimulus ids training
and augmentation leave out by default. Fingerprints written by an earlier version (one pHash)
are compared only with each other and counted in :attr:`LeakageReport.legacy`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nfstore import copies
from nfstore import identity as ident
from nfstore.names import SPLIT, STIMULUS, dataset_names

HELD_OUT = ("test", "imagery")


@dataclass(frozen=True)
class Duplicate:
    """One held-out stimulus and one copy of it that training could see.

    Attributes
    ----------
    held_out : str       stimulus id held out (test or imagery) by ``subjects``
    split : str          ``test`` or ``imagery``
    subjects : list      subjects that hold it out
    duplicate : str      stimulus id of the copy (may equal ``held_out``)
    uses : list          where the copy is used: ``train:<subject>``,
                         ``synthetic:<subject>/<set>``, ``pool:<name>``
    by : str             ``id``, ``identity`` or ``fingerprint``
    """

    held_out: str
    split: str
    subjects: list[str]
    duplicate: str
    uses: list[str]
    by: str


@dataclass
class LeakageReport:
    duplicates: list[Duplicate] = field(default_factory=list)
    n_held_out: int = 0
    n_used: int = 0
    max_distance: int = ident.MAX_DISTANCE
    legacy: int = 0  # stimuli whose fingerprint is from an earlier version (not recomputed yet)

    def excluded(self) -> set[str]:
        """Stimulus ids whose trials training (measured and synthetic) leaves out."""
        return {d.duplicate for d in self.duplicates}

    def counts(self) -> dict[str, int]:
        """Number of leaking held-out stimuli per pair ``<held-out table> -> <copy table>``."""
        pairs = {(d.held_out, d.held_out.split("/")[0], d.duplicate.split("/")[0])
                 for d in self.duplicates}
        return dict(sorted(Counter(f"{a} -> {b}" for _, a, b in pairs).items()))

    def to_dict(self) -> dict[str, Any]:
        return {"held_out_stimuli": self.n_held_out, "used_stimuli": self.n_used,
                "max_distance": self.max_distance, "counts": self.counts(),
                "legacy_fingerprints": self.legacy,
                "leaking_held_out": len({d.held_out for d in self.duplicates}),
                "duplicates": [asdict(d) for d in self.duplicates]}

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def lines(self) -> list[str]:
        n = len({d.held_out for d in self.duplicates})
        out = [f"{n} of {self.n_held_out} held-out (test/imagery) stimuli also occur in "
               f"training, synthetic sets or pools ({len(self.duplicates)} copies; "
               f"{self.n_used} stimuli used for training or augmentation checked)"]
        out += [f"  {pair}: {c}" for pair, c in self.counts().items()]
        if self.legacy:
            out.append(f"note: {self.legacy} stimuli have fingerprints from an earlier version, "
                       f"compared only with each other (re-encoded copies only); rerun nf ingest "
                       f"or nf embed --pool of their tables to find crops and mirrored copies")
        return out


def _uses(store: Any) -> tuple[dict[str, tuple[str, set[str]]], dict[str, set[str]]]:
    """(held-out id -> (split, subjects), used id -> where used)."""
    held: dict[str, tuple[str, set[str]]] = {}
    used: dict[str, set[str]] = {}
    for key in store.subjects():
        ds = store.dataset(key)
        split = ds[SPLIT].values
        stim = ds[STIMULUS].values
        for s, sp in zip(stim.tolist(), split.tolist()):
            if sp in HELD_OUT:
                held.setdefault(s, (sp, set()))[1].add(key)
            else:
                used.setdefault(s, set()).add(f"train:{key}")
        for name in store.synthetic_sets(key):
            for s in np.unique(store.synthetic_stimuli(key, name)).tolist():
                used.setdefault(s, set()).add(f"synthetic:{key}/{name}")
    tab = store.identity_table()
    for s, name in zip(tab["stimulus"].tolist(), tab["table"].tolist()):
        if name not in dataset_names():
            used.setdefault(s, set()).add(f"pool:{name}")
    return held, used


def find_leakage(store: Any, max_distance: int = ident.MAX_DISTANCE) -> LeakageReport:
    """Every held-out stimulus of the store with a copy used for training or augmentation.

    Parameters
    ----------
    store : nfstore.Store
    max_distance : int
        Window hashes (63 bits, :mod:`nfstore.copies`) within this many bits are the same
        picture.
    """
    held, used = _uses(store)
    h_ids, u_ids = sorted(held), sorted(used)
    (h_ident, h_print), (u_ident, u_print) = store.identities_of(h_ids), store.identities_of(u_ids)
    found: dict[tuple[int, int], str] = {}
    u_pos = {s: j for j, s in enumerate(u_ids)}
    by_ident: dict[str, list[int]] = {}
    for j, d in enumerate(u_ident):
        by_ident.setdefault(d, []).append(j)
    for i, s in enumerate(h_ids):
        if s in u_pos:
            found[(i, u_pos[s])] = "id"
        for j in by_ident.get(h_ident[i], []):
            found.setdefault((i, j), "identity")
    for i, j in ident.near_pairs(h_print, u_print, max_distance):
        found.setdefault((i, j), "fingerprint")
    dups = []
    for (i, j), by in sorted(found.items()):
        split, subjects = held[h_ids[i]]
        dups.append(Duplicate(h_ids[i], split, sorted(subjects), u_ids[j], sorted(used[u_ids[j]]),
                              by))
    legacy = copies.legacy_count(list(h_print) + list(u_print))
    return LeakageReport(dups, len(h_ids), len(u_ids), max_distance, legacy)


__all__ = ["find_leakage", "LeakageReport", "Duplicate"]
