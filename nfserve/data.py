"""What the pages of ``nf serve`` show, as plain JSON-ready dicts (the ``/api/`` twins).

Every name that comes from a request is validated here against what the store holds, so a
traversal attempt or an unknown id is a :class:`NotFound` (404) or :class:`BadRequest` (400)
before anything is read; nothing in this module writes to the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

import nfstore
from nfstore.errors import NFError
from nfstore.names import RECON_GROUP, STIMULI_GROUP

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STIMULUS_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(/[A-Za-z0-9._-]{1,255}){1,4}$")
PAGE = 24


class NotFound(NFError, LookupError):
    """A name or id the store does not hold (HTTP 404)."""


class BadRequest(NFError, ValueError):
    """A malformed parameter (HTTP 400)."""


def check_name(value: str, what: str) -> str:
    if not NAME.match(value or "") or ".." in value:
        raise BadRequest(f"{what}: expected a name of letters, digits, '.', '_' or '-'; "
                         f"got {value[:80]!r}")
    return value


def check_page(page: int) -> int:
    if page < 1 or page > 100_000:
        raise BadRequest(f"page: expected 1..100000; got {page}")
    return page


@dataclass
class View:
    """The store behind the site, opened once; small caches of what pages need."""

    location: Any  # path, URL or opened nfstore.Store
    store: Any = None
    path: str = ""  # the store's location, as shown
    _metrics: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from nfserve.images import register

        self.store = nfstore.open_store(self.location)
        self.path = self.store.location
        register(self.store)

    # ----------------------------------------------------------------- lookups
    def subject(self, dataset: str, subject: str) -> str:
        key = f"{check_name(dataset, 'dataset')}/{check_name(subject, 'subject')}"
        if key not in self.store.subjects():
            raise NotFound(f"subject {key!r} is not in the store")
        return key

    def stimulus(self, sid: str) -> tuple[str, int]:
        """(table, row) of a stimulus id such as ``nsd/00003``."""
        if not STIMULUS_ID.match(sid or "") or ".." in sid:
            raise BadRequest(f"id: expected a stimulus id such as nsd/00003; got {sid[:80]!r}")
        table = sid.split("/", 1)[0]
        if table not in self.store.stimulus_tables():
            raise NotFound(f"stimulus table {table!r} is not in the store")
        ids = stimulus_index(self, table)
        if sid not in ids:
            raise NotFound(f"stimulus {sid!r} is not in the store")
        return table, ids[sid]

    def recon_sets(self) -> dict[str, list[str]]:
        return self.store.reconstruction_sets()

    def recon(self, name: str, subject: str | None) -> tuple[str, list[str]]:
        sets = self.recon_sets()
        if check_name(name, "set") not in sets:
            raise NotFound(f"reconstruction set {name!r} is not in the store")
        if subject is not None and subject not in sets[name]:
            raise NotFound(f"reconstruction set {name!r} has no subject {subject!r}")
        return name, sets[name]


@lru_cache(maxsize=64)
def _index_cached(path: str, table: str, stamp: str) -> dict[str, int]:
    from nfserve.images import opened

    store = opened(path)
    return {s: i for i, s in enumerate(store.stimuli(table)["stimulus"].values.tolist())}


def stimulus_index(view: View, table: str) -> dict[str, int]:
    return _index_cached(view.path, table, view.store.stamp(f"{STIMULI_GROUP}/{table}"))


# --------------------------------------------------------------------- pages
def overview(view: View) -> dict[str, Any]:
    st = view.store
    info = st.info()
    subjects = [{"key": k, "dataset": k.split("/")[0], "subject": k.split("/")[1], **v}
                for k, v in info.items()]
    emb = {m: {k: v for k, v in st.embeddings(m).attrs.items()
               if k in ("model", "count", "feature_shape", "weights_sha256", "size",
                        "latent_shape", "scaling_factor")}
           for m in st.embedding_models()}
    decoded = {n: {"subjects": st.decoded_subjects(n),
                   **{k: v for k, v in st.decoded(n, st.decoded_subjects(n)[0]).attrs.items()
                      if k in ("decoder", "embedding", "split", "checkpoint", "rescaled")}}
               for n in st.decoded_sets() if st.decoded_subjects(n)}
    recon = {}
    for name, subs in view.recon_sets().items():
        from nfrecon.reconstruct import read_reconstructions

        a = read_reconstructions(view.store, name, subs[0])["attrs"] if subs else {}
        recon[name] = {"subjects": subs, "source": a.get("source"), "decoded": a.get("decoded"),
                       "init": a.get("init"), "blend": a.get("blend")}
    from nfstore.names import dataset_names

    datasets = set(dataset_names())
    pools = [t for t in st.stimulus_tables() if t not in datasets]
    return {"store": str(view.path), "subjects": subjects, "embeddings": emb,
            "pools": pools, "decoded": decoded, "reconstructions": recon,
            "synthetic": {k: v["synthetic"] for k, v in info.items() if v["synthetic"]}}


def subject_page(view: View, key: str, page: int = 1) -> dict[str, Any]:
    st = view.store
    ds = st.dataset(key)
    split, session = ds["split"].values, ds["session"].values
    sessions = {int(s): {p: int(((session == s) & (split == p)).sum())
                         for p in ("train", "test", "imagery")} for s in np.unique(session)}
    masks = ds["roi_mask"].values
    rois = [{"roi": r, "voxels": int(masks[i].sum())} for i, r in enumerate(st.rois(key))]
    stim = np.unique(ds["stimulus"].values)
    page = check_page(page)
    shown = stim[(page - 1) * PAGE: page * PAGE].tolist()
    attrs = st.attrs(key)
    return {"key": key, "trials": int(ds.sizes["trial"]),
            "splits": {p: int((split == p).sum()) for p in ("train", "test", "imagery")},
            "sessions": sessions, "rois": rois, "voxels": int(ds.sizes["voxel"]),
            "has_grid": "voxel_i" in ds.coords and bool(attrs.get("volume_shape")),
            "space": attrs.get("space"), "stimuli": shown, "page": page,
            "pages": max(1, -(-len(stim) // PAGE)), "n_stimuli": int(len(stim))}


def stimulus_page(view: View, sid: str) -> dict[str, Any]:
    table, _ = view.stimulus(sid)
    st = view.store
    trials = []
    for key in st.subjects():
        ds = st.dataset(key)
        hit = np.flatnonzero(ds["stimulus"].values == sid)
        for t in hit:
            trials.append({"subject": key, "trial": int(t), "split": str(ds["split"].values[t]),
                           "session": int(ds["session"].values[t])})
    ids = st.identity_table()
    row = ids[ids["stimulus"] == sid]
    identity = str(row["identity"].iloc[0]) if len(row) else ""
    same = ids[(ids["identity"] == identity) & (ids["stimulus"] != sid)] if identity else ids[:0]
    return {"id": sid, "table": table, "identity": identity, "trials": trials,
            "duplicates": same["stimulus"].tolist()}


def per_image_metrics(view: View, name: str, subject: str) -> dict[str, np.ndarray]:
    """Stored ``nf metrics`` values (mindeye2 variant first), else PixCorr and SSIM computed
    here once (cached in memory; the store is never written)."""
    if (name, subject) in view._metrics:
        return view._metrics[(name, subject)]
    base = f"{RECON_GROUP}/{name}/{subject}/metrics"
    out: dict[str, np.ndarray] = {}
    try:
        variants = sorted(view.store.group(base).group_keys(), key=lambda v: v != "mindeye2")
    except NFError:  # no stored metrics
        variants = []
    if variants:
        g = view.store.group(f"{base}/{variants[0]}")
        out = {k: np.asarray(g[k][:]) for k in g.array_keys()}
    if not out:
        from nfrecon.metrics import pixel_metrics
        from nfrecon.report import chosen_images, ground_truth

        imgs, stim = chosen_images(view.store, name, subject)
        try:
            gt = ground_truth(view.store, stim)
        except NFError:  # e.g. uploaded betas: no ground-truth picture
            gt = None
        out = pixel_metrics(gt, imgs, "mindeye2") if gt is not None and len(stim) else {}
    view._metrics[(name, subject)] = out
    return out


def gallery(view: View, name: str, subject: str | None, sort: str | None = None,
            order: str = "desc", page: int = 1) -> dict[str, Any]:
    from nfrecon.reconstruct import read_reconstructions

    name, subs = view.recon(name, subject)
    subject = subject or subs[0]
    r = read_reconstructions(view.store, name, subject)
    metrics = per_image_metrics(view, name, subject)
    n = len(r["stimulus"])
    if sort is not None and sort not in metrics:
        raise BadRequest(f"sort: expected one of {sorted(metrics)}; got {sort[:40]!r}")
    if order not in ("asc", "desc"):
        raise BadRequest(f"order: expected asc or desc; got {order[:10]!r}")
    rows = np.arange(n)
    if sort is not None:
        rows = np.argsort(metrics[sort], kind="stable")
        rows = rows[::-1] if order == "desc" else rows
    page = check_page(page)
    shown = rows[(page - 1) * PAGE: page * PAGE]
    blurry = r["attrs"].get("init") if r["attrs"].get("init_kind") == "images" else None
    samples = int(r["images"].shape[1])
    items = [{"row": int(i), "stimulus": str(r["stimulus"][i]), "chosen": int(r["chosen"][i]),
              "samples": samples,
              "metrics": {k: float(v[i]) for k, v in metrics.items()}} for i in shown]
    return {"set": name, "subject": subject, "subjects": subs, "sort": sort, "order": order,
            "page": page, "pages": max(1, -(-n // PAGE)), "n": n, "items": items,
            "samples": samples,
            "metrics": sorted(metrics), "blurry": blurry, "source": r["attrs"].get("source"),
            "means": {k: float(np.mean(v)) for k, v in metrics.items()}}


def compare(view: View, a: str, b: str, subject: str | None, page: int = 1) -> dict[str, Any]:
    from nfrecon.reconstruct import read_reconstructions

    _, subs_a = view.recon(a, subject)
    _, subs_b = view.recon(b, subject)
    common = [s for s in subs_a if s in subs_b]
    if not common:
        raise NotFound(f"sets {a!r} and {b!r} share no subject")
    subject = subject or common[0]
    ra, rb = (read_reconstructions(view.store, x, subject) for x in (a, b))
    ib = {s: i for i, s in enumerate(rb["stimulus"])}
    pairs = [(i, ib[s]) for i, s in enumerate(ra["stimulus"]) if s in ib]
    ma, mb = per_image_metrics(view, a, subject), per_image_metrics(view, b, subject)
    page = check_page(page)
    shown = pairs[(page - 1) * PAGE: page * PAGE]
    keys = sorted(set(ma) & set(mb))
    return {"a": a, "b": b, "subject": subject, "subjects": common, "page": page,
            "pages": max(1, -(-len(pairs) // PAGE)), "n": len(pairs),
            "items": [{"stimulus": str(ra["stimulus"][i]), "row_a": int(i), "row_b": int(j),
                       "a": {k: float(ma[k][i]) for k in keys},
                       "b": {k: float(mb[k][j]) for k in keys}} for i, j in shown],
            "table": {k: {"a": float(np.mean([ma[k][i] for i, _ in pairs])),
                          "b": float(np.mean([mb[k][j] for _, j in pairs]))} for k in keys}}
