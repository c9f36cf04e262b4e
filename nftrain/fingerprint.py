"""Which data a training run read: the store fingerprint a checkpoint records, and the checks
that refuse to mix it with other data.

The fingerprint holds, per subject, its ``ingest_fingerprint`` (it changes when the subject is
ingested again with other files or options) and, as ``embeddings``, the ``weights_sha256`` of
the embedding cache the targets came from. A run also watches the synthetic sets it reads (the
change stamp of each set's metadata), which a checkpoint does not record.
"""

from __future__ import annotations

from typing import Any

from nfstore.errors import StoreError

ABSENT = "absent"
EMBEDDINGS = "embeddings"


def of_store(store: Any, subjects: list[str] | tuple[str, ...], embedding: str
             ) -> dict[str, str]:
    """The store's fingerprint of ``subjects`` and the ``embedding`` cache, as it is now.

    Returns
    -------
    dict : subject key -> ingest fingerprint, and ``"embeddings"`` -> weights sha256
        (``"absent"`` for a subject or cache the store does not hold)
    """
    have = set(store.subjects())
    out = {k: str(store.attrs(k).get("ingest_fingerprint")) if k in have else ABSENT
           for k in subjects}
    if embedding in store.embedding_models():
        out[EMBEDDINGS] = str(store.group(f"embeddings/{embedding}").attrs.get(
            "weights_sha256"))
    else:
        out[EMBEDDINGS] = ABSENT
    return out


def changes(recorded: dict[str, str], now: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Entries of ``now`` that differ from ``recorded`` (entries missing from either, and an
    embedding cache absent now, are not compared)."""
    return {k: (recorded[k], v) for k, v in now.items()
            if k in recorded and v != recorded[k] and not (k == EMBEDDINGS and v == ABSENT)}


def describe(changed: dict[str, tuple[str, str]], embedding: str = "") -> str:
    """``nsd/subj01: ingest 47b4c2d1e0f3 then, 7f41a09b3c2e now; ...`` (one line)."""
    def short(v: str) -> str:
        return v[:12] if len(v) > 12 else v

    parts = []
    for key, (old, new) in changed.items():
        what = (f"{EMBEDDINGS} {embedding}: weights" if key == EMBEDDINGS and embedding
                else f"{key}: {'weights' if key == EMBEDDINGS else 'ingest'}")
        parts.append(f"{what} {short(old)} then, {short(new)} now")
    return "; ".join(parts)


def check_checkpoint(store: Any, meta: dict[str, Any], subjects: list[str], ckpt: Any,
                     allow: bool = False, fix: str = "", param: str = "ckpt"
                     ) -> dict[str, tuple[str, str]]:
    """Refuse a checkpoint trained on other data than ``store`` holds now for ``subjects``.

    Parameters
    ----------
    meta : the checkpoint's ``config.json`` (``store_fingerprint``; none: nothing to compare)
    allow : return the changes instead of raising (``allow_store_change``)
    fix : what the message tells the user to do (default: train again, or ``allow``)
    param : the caller's parameter that named ``ckpt`` (the message starts with it)

    Returns
    -------
    dict : what changed (key -> (then, now)); empty when nothing did
    """
    recorded = meta.get("store_fingerprint") or {}
    changed = changes(recorded, of_store(store, subjects, meta.get("embedding", "")))
    if changed and not allow:
        raise StoreError(f"{param}: {ckpt} was trained on other data than {store.location} "
                         f"holds now ({describe(changed, meta.get('embedding', ''))}; "
                         f"re-ingested or re-embedded since); "
                         + (fix or "train again on the store as it is, or pass "
                            "allow_store_change (`--allow-store-change`) to use the checkpoint "
                            "anyway"))
    return changed


def reopen(store: Any) -> Any:
    """A fresh view of the same store (same location, options and snapshot), so that what
    another process changed since ``store`` was opened is seen."""
    import nfstore

    return nfstore.open_store(store.location, check=False, version=store.version,
                              storage_options=store.storage_options or None)


class Watch:
    """What a run read, as it was when the run started: the fingerprint of its subjects and
    targets, and the change stamps of the synthetic sets it uses.

    Parameters
    ----------
    store : the run's store
    fingerprint : :func:`of_store` of the run's subjects, taken when its data were loaded
    synthetic : (subject, set name) of every synthetic set the run reads
    """

    def __init__(self, store: Any, fingerprint: dict[str, str],
                 synthetic: list[tuple[str, str]], embedding: str) -> None:
        self.store, self.fingerprint, self.embedding = store, dict(fingerprint), embedding
        self.synthetic = {f"{s}/synthetic/{n}": store.stamp(f"{s}/synthetic/{n}")
                          for s, n in synthetic}

    def changed(self) -> str:
        """What changed since the start, in words ("" when nothing did)."""
        now_store = reopen(self.store)
        subjects = [k for k in self.fingerprint if k != EMBEDDINGS]
        now = of_store(now_store, subjects, self.embedding)
        text = describe(changes(self.fingerprint, now), self.embedding)
        moved = [k for k, stamp in self.synthetic.items() if now_store.stamp(k) != stamp]
        if moved:
            text += ("; " if text else "") + ", ".join(moved) + " rewritten"
        return text
