"""Store validation against ``schemas/store-v1.schema.json`` plus the value checks it lists.

:func:`manifest` describes a store from its Zarr metadata alone (group attributes; array
dimension names, data types, shapes). :func:`check_store` validates that manifest (cheap, run
on every open); :func:`validate_store` adds the value checks of ``x-nf-checks`` (``nf validate``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from nfstore.errors import SchemaError
from nfstore.names import (
    BETAS,
    DECODED_GROUP,
    RECON_GROUP,
    REPEAT,
    ROI,
    ROI_MASK,
    RUN,
    SESSION,
    SPLIT,
    SPLITS,
    STIMULI_GROUP,
    STIMULUS,
    TRIAL,
    VOXEL,
)

if TYPE_CHECKING:
    from nfstore.store import Store


def _arrays(group: zarr.Group) -> dict[str, dict[str, Any]]:
    out = {}
    for name, arr in group.arrays():
        meta = arr.metadata.to_dict()
        out[name] = {"dims": list(meta.get("dimension_names") or []),
                     "dtype": str(meta.get("data_type")), "shape": list(arr.shape)}
    return out


def manifest(store: Store) -> dict[str, Any]:
    """JSON-like description of the store's groups and arrays (metadata reads only)."""
    root = store._root
    out: dict[str, Any] = {"attributes": dict(root.attrs), "stimuli": {}, "subjects": {},
                           "embeddings": {}}
    for name in store._children(STIMULI_GROUP):
        g = root[f"{STIMULI_GROUP}/{name}"]
        out["stimuli"][name] = {"attributes": dict(g.attrs), "arrays": _arrays(g)}
    for key in store.subjects():
        g = root[key]
        out["subjects"][key] = {"attributes": dict(g.attrs), "arrays": _arrays(g),
                                "synthetic": {}}
        for name in store.synthetic_sets(key):
            sg = root[f"{key}/synthetic/{name}"]
            out["subjects"][key]["synthetic"][name] = {"attributes": dict(sg.attrs),
                                                       "arrays": _arrays(sg)}
    for name in store.embedding_models():
        g = root[f"embeddings/{name}"]
        out["embeddings"][name] = {"attributes": dict(g.attrs), "arrays": _arrays(g)}
    for group in (DECODED_GROUP, RECON_GROUP):  # optional groups, described when present
        if group in root:
            out[group] = _set_groups(root[group], group == RECON_GROUP)
    return out


def _set_groups(top: zarr.Group, metrics: bool) -> dict[str, Any]:
    """``<set>/<dataset>/<subject>`` -> attributes and arrays (and ``metrics/<variant>``)."""
    out: dict[str, Any] = {}
    for name, g_set in sorted(top.groups()):
        for ds, g_ds in sorted(g_set.groups()):
            for sub, g in sorted(g_ds.groups()):
                entry: dict[str, Any] = {"attributes": dict(g.attrs), "arrays": _arrays(g)}
                if metrics and "metrics" in g:
                    entry["metrics"] = {v: {"attributes": dict(m.attrs), "arrays": _arrays(m)}
                                        for v, m in sorted(g["metrics"].groups())}
                out[f"{name}/{ds}/{sub}"] = entry
    return out


def subject_key_pattern() -> str:
    """Regex of every subject key ``<dataset>/<subject>`` of the registered readers (their
    store group and ``subject_pattern``), without anchors."""
    import re

    from nfstore.readers import readers

    keys = dict.fromkeys(f"{re.escape(cls.store_dataset())}/(?:{cls.subject_pattern})"
                         for cls in readers().values())
    return "(" + "|".join(keys) + ")"


def load_schema() -> dict[str, Any]:
    """The store schema with its subject-key patterns and dataset names made from the
    registered readers (the document's own values name the built-in datasets)."""
    import schemas
    from nfstore.readers import dataset_groups

    doc = schemas.load("store-v1")
    keys = subject_key_pattern()
    attrs = doc["$defs"]["subject"]["properties"]["attributes"]["properties"]
    attrs["dataset"]["enum"] = dataset_groups()
    props = doc["properties"]
    props["subjects"]["propertyNames"]["pattern"] = f"^{keys}$"
    for group in (DECODED_GROUP, RECON_GROUP):
        if group in props:
            props[group]["propertyNames"]["pattern"] = f"^[A-Za-z0-9_.-]+/{keys}$"
    return doc


def _schema_problems(man: dict[str, Any], location: str) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    problems = []
    for err in sorted(validator.iter_errors(man), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(p) for p in err.absolute_path)
        problems.append(f"{location}: {where or '(root)'}: {err.message}")
    for name, emb in man["embeddings"].items():
        count = emb["attributes"].get("count", 0)
        rows = {n: a["shape"][0] for n, a in emb["arrays"].items() if a.get("shape")}
        if any(r < count for r in rows.values()):
            problems.append(f"{location}/embeddings/{name}: expected at least count={count} rows; "
                            f"found {rows}")
    for key, sub in man["subjects"].items():
        arrays = sub.get("arrays", {})
        for dim in (TRIAL, VOXEL, ROI):
            lengths = {n: a["shape"][a["dims"].index(dim)] for n, a in arrays.items()
                       if dim in a.get("dims", [])}
            if len(set(lengths.values())) > 1:
                problems.append(f"{location}/{key}: expected one length along '{dim}'; found "
                                f"{lengths}")
        n_vox = arrays.get("betas", {}).get("shape", [0, 0])[-1]
        for name, syn in sub.get("synthetic", {}).items():
            shape = syn.get("arrays", {}).get("betas", {}).get("shape", [0, 0])
            if shape[-1] != n_vox:
                problems.append(f"{location}/{key}/synthetic/{name}/betas: expected {n_vox} "
                                f"voxels (the subject's); found {shape[-1]}")
    return problems


def check_store(store: Store) -> None:
    """Raise :class:`SchemaError` with the first problem if the manifest breaks the schema."""
    problems = _schema_problems(manifest(store), store.location)
    if problems:
        extra = f" (+{len(problems) - 1} more; run `nf validate`)" if len(problems) > 1 else ""
        raise SchemaError(problems[0] + extra)


def validate_store(store: Store, damaged: dict[str, str] | None = None) -> list[str]:
    """All problems of the store: schema, cross-array lengths, the value checks, and chunks
    that are missing, truncated or unreadable (each named with its array and index).

    Parameters
    ----------
    damaged : dict, optional
        Filled with chunk key -> problem for every damaged chunk found (what a repair must
        write again: :func:`nfstore.versioned.push`).
    """
    damaged = {} if damaged is None else damaged
    man = manifest(store)
    problems = _schema_problems(man, store.location)
    if problems:
        return problems
    for group in [f"{STIMULI_GROUP}/{n}" for n in man["stimuli"]] + list(man["subjects"]):
        for name in sorted(store._root[group].array_keys()):  # coordinates, tables
            if name != BETAS and name != "pixels":
                problems += _nonfinite(store, f"{group}/{name}", damaged, finite=False)
    tables = {}
    for name in man["stimuli"]:
        tables[name] = _guarded(store, f"{STIMULI_GROUP}/{name}", problems, damaged,
                                lambda n=name: set(store.stimuli(n)[STIMULUS].values.tolist())
                                ) or set()
    for key in man["subjects"]:
        problems += _guarded(store, key, problems, damaged,
                             lambda k=key: _subject_values(store, k, tables)) or []
        problems += _nonfinite(store, f"{key}/{BETAS}", damaged)
        for name in store.synthetic_sets(key):
            problems += _nonfinite(store, f"{key}/synthetic/{name}/{BETAS}", damaged)
    for name in store.embedding_models():
        problems += _nonfinite(store, f"embeddings/{name}/embedding", damaged,
                               rows=int(man["embeddings"][name]["attributes"].get("count", 0)))
    problems += _interrupted_swaps(store)
    return problems


def _guarded(store: Store, key: str, problems: list[str], damaged: dict[str, str],
             read: Any) -> Any:
    """``read()``, or None with a problem naming ``key`` where its chunks cannot be read."""
    from nfstore.errors import ChunkError

    try:
        return read()
    except ChunkError as err:
        if err.key not in damaged:
            problems.append(_without_hint(err))
            damaged[err.key] = problems[-1]
    except (RuntimeError, ValueError, OSError) as err:  # a codec's or the backend's error
        if any(k.startswith(f"{key}/") for k in damaged):
            return None  # the damaged chunk is named already
        problems.append(f"{store.location}/{key}: expected readable arrays; found "
                        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    return None


def _without_hint(err: Exception) -> str:
    """A chunk error's message without its pointer to ``nf validate`` (which prints it)."""
    return str(err).split("; `nf validate")[0]


def _read_chunk(arr: zarr.Array, path: str, index: tuple[int, ...], rows: int | None
                ) -> tuple[np.ndarray, str | None, str]:
    """(non-finite values per row (n,), problem or None, chunk key) of one chunk of ``arr``."""
    from nfstore.errors import ChunkError

    sel = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in
                zip(index, arr.chunks, arr.shape))
    if rows is not None:
        sel = (slice(sel[0].start, min(sel[0].stop, rows)), *sel[1:])
    n = sel[0].stop - sel[0].start
    key = "/".join([path, "c", *map(str, index)])
    try:
        x = arr[sel]
    except ChunkError as err:
        return np.zeros(n, np.int64), _without_hint(err), err.key or key
    except (RuntimeError, ValueError, OSError) as err:  # a codec's error: damaged bytes
        return np.zeros(n, np.int64), (f"chunk {index} ({key}): expected a chunk that "
                                       f"decodes; found {type(err).__name__}: {err}"), key
    if x.dtype.kind not in "fc":
        return np.zeros(n, np.int64), None, key
    return (~np.isfinite(x)).reshape(n, -1).sum(axis=1), None, key


def _nonfinite(store: Store, path: str, damaged: dict[str, str], rows: int | None = None,
               finite: bool = True) -> list[str]:
    """Non-finite values of a stored array (where ``finite``: values must be finite), and
    its chunks that are missing, truncated or unreadable; read chunk by chunk (dask threads),
    each named when it fails."""
    import itertools

    import dask

    arr = store._root[path]
    limit = arr.shape[0] if rows is None else min(rows, arr.shape[0])
    if limit == 0 or arr.size == 0:
        return []
    grid = [range(math.ceil(limit / arr.chunks[0]))] + [
        range(math.ceil(s / c)) for s, c in zip(arr.shape[1:], arr.chunks[1:])]
    index = list(itertools.product(*grid))
    done = dask.compute(*[dask.delayed(_read_chunk)(arr, path, i, rows) for i in index])
    per_row = np.zeros(limit, np.int64)
    problems = []
    for i, (bad, problem, key) in zip(index, done):
        start = i[0] * arr.chunks[0]
        per_row[start:start + bad.size] += bad
        if problem is not None:
            problems.append(problem if problem.startswith(store.location) else
                            f"{store.location}/{path}: {problem}")
            damaged[key] = problems[-1]
    if finite and per_row.any():
        problems.append(
            f"{store.location}/{path}: {int(per_row.sum())} non-finite values in "
            f"{int((per_row > 0).sum())} of {per_row.size} rows (first row "
            f"{int(np.flatnonzero(per_row)[0])}); re-create it (ingest --overwrite, embed "
            f"--overwrite or augment --overwrite)")
    return problems


def _interrupted_swaps(store: Store) -> list[str]:
    """Previous versions left aside by a write that was killed between its two renames."""
    from nfstore.names import TRASH_GROUP

    trash = f"{store.fs_path}/{TRASH_GROUP}"
    try:
        found = store.fs.find(trash, withdirs=True)
    except FileNotFoundError:
        found = []
    left = sorted({p[len(trash) + 1:].split("@")[0] for p in found
                   if "@" in p.rsplit("/", 1)[-1]})
    if not left:
        return []
    return [f"{store.location}/{TRASH_GROUP}: interrupted write of {', '.join(left)} (the "
            f"previous version is kept aside); the next nf ingest/embed/augment restores it"]


def _subject_values(store: Store, key: str, tables: dict[str, set[str]]) -> list[str]:
    where = f"{store.location}/{key}"
    ds = store.dataset(key)
    dataset = key.split("/")[0]
    problems = []
    bad_split = sorted(set(ds[SPLIT].values.tolist()) - set(SPLITS))
    if bad_split:
        problems.append(f"{where}/split: expected values in {list(SPLITS)}; found {bad_split}")
    for name, low in ((SESSION, 1), (RUN, 1), (REPEAT, 0)):
        if ds[name].size and int(ds[name].values.min()) < low:
            problems.append(f"{where}/{name}: expected values >= {low}; found "
                            f"{int(ds[name].values.min())}")
    stim = ds[STIMULUS].values.tolist()
    wrong = [s for s in stim if not str(s).startswith(f"{dataset}/")]
    if wrong:
        problems.append(f"{where}/stimulus: expected ids starting with '{dataset}/'; found "
                        f"{wrong[:3]}")
    missing = sorted(set(stim) - tables.get(dataset, set()))
    if missing:
        problems.append(f"{where}/stimulus: {len(missing)} ids are not in /{STIMULI_GROUP}/"
                        f"{dataset} (e.g. {missing[:3]})")
    empty = [str(r) for r, m in zip(ds[ROI].values, ds[ROI_MASK].values) if not m.any()]
    if empty:
        problems.append(f"{where}/roi_mask: expected every ROI to select voxels; empty: {empty}")
    problems += _missing_chunks(store, key)
    return problems


def _missing_chunks(store: Store, key: str) -> list[str]:
    """Betas chunks absent from the store (a chunk never written reads as NaN); one listing
    of the array's chunk keys (a folder, a URL or a versioned store)."""
    arr = store._root[f"{key}/{BETAS}"]
    grid = [math.ceil(s / c) for s, c in zip(arr.shape, arr.chunks)]
    expected = int(np.prod(grid))
    chunks = f"{key}/{BETAS}/c/"
    found = sum(k.startswith(chunks) and not k.endswith(".partial")  # zarr's temporary files
                for k in store.keys(f"{key}/{BETAS}"))
    if found < expected:
        return [f"{store.location}/{key}/{BETAS}: expected {expected} chunks; found {found} "
                f"(an ingest was cut short?)"]
    return []


__all__ = ["manifest", "check_store", "validate_store", "load_schema",
           "subject_key_pattern"]
