"""The store, opened lazily: subjects, ROIs, betas queries, stimulus pixels.

Opening reads metadata only; a query selects by coordinates (small arrays) and returns a
dask-backed :class:`xarray.DataArray`: no beta chunk is read before ``.values``/``.compute()``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from nfstore import _remote
from nfstore._access import RawAccess
from nfstore._query import average_repeats_of, plain_strings
from nfstore.errors import OptionError, QueryError, SchemaError, StoreError
from nfstore.identity import identities
from nfstore.names import (
    BETAS,
    COMPLETE,
    DECODED_GROUP,
    ROI,
    ROI_MASK,
    SCHEMA_VERSION,
    SPLIT,
    SPLITS,
    STATUS_ATTR,
    STIMULI_GROUP,
    STIMULUS,
    TRIAL,
    VOXEL,
    dataset_names,
)


def open_store(location: str | os.PathLike[str] | Store, *, mode: str = "r",
               check: bool = True, storage_options: dict[str, Any] | None = None,
               version: str | None = None) -> Store:
    """Open a store lazily and check it against the store schema (metadata only).

    Parameters
    ----------
    location : path, fsspec URL (``s3://bucket/nf.zarr``) or an opened :class:`Store`
        (returned as it is, so functions taking a location also take a remote store opened
        with its options)
    check : bool
        Validate the layout and metadata against ``schemas/store-v1.schema.json``.
    storage_options : dict, optional
        Passed to fsspec for a URL (``endpoint_url``, ``key``, ``secret``, ``anon``...).
    version : str, optional
        A snapshot id of a versioned store (``nf push``, :mod:`nfstore.versioned`); default
        its latest.
    mode : ``"r"`` or ``"a"``
        ``"a"`` creates an empty store at a local ``location`` that does not exist yet. Reads
        are lazy in both modes; writes go through :meth:`Store.transaction`.
    """
    if mode not in ("r", "a"):
        raise OptionError(f"mode: expected 'r' or 'a'; found {mode!r}")
    if isinstance(location, Store):
        return location
    if mode == "a" and not _remote.is_url(os.fspath(location)):
        from nfstore._layout import ensure_store

        ensure_store(Path(os.fspath(location).removeprefix("file://")))
    return Store(location, check=check, storage_options=storage_options, version=version)


class Store(RawAccess):
    """A NeuroFusion feature store (see ``DESIGN.md``, store contract)."""

    def __init__(self, location: str | os.PathLike[str], *, check: bool = True,
                 storage_options: dict[str, Any] | None = None,
                 version: str | None = None, zarr_store: Any = None) -> None:
        """``zarr_store``: read this opened zarr store instead of ``location``'s (a writable
        Icechunk session's, checked before it commits: :func:`nfstore.versioned.push`)."""
        self.location = os.fspath(location)
        self.storage_options = dict(storage_options or {})
        self.remote = _remote.is_url(self.location)
        # listings (staging, interrupted swaps) and zarr's reads go through the same location
        self.fs, self.fs_path = _remote.filesystem(self.location, self.storage_options)
        self.version: str | None = None  # snapshot id of a versioned store
        self._zstore = _remote.zarr_store(self.location, self.storage_options)
        if zarr_store is not None:
            self._zstore = zarr_store
        elif version is not None or (self.remote and self._versioned()):
            from nfstore.versioned import read_session

            self._zstore, self.version = read_session(self.location, self.storage_options,
                                                      version)
        self._zstore = _remote.checked(self._zstore, self.location)  # lost chunks raise
        try:
            self._root = zarr.open_group(self._zstore, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError) as err:
            raise SchemaError(f"{self.location}: expected a NeuroFusion store; found no zarr "
                              f"group there") from err
        except Exception as err:  # a remote backend's own errors (credentials, endpoint)
            if not self.remote:
                raise
            raise StoreError(f"{self.location}: could not be opened: {type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}") from None
        version = self._root.attrs.get("nf_schema_version")
        if version != SCHEMA_VERSION:
            raise SchemaError(f"{self.location}: expected nf_schema_version {SCHEMA_VERSION}; "
                              f"found {version!r}")
        self._open: dict[str, xr.Dataset] = {}
        self._identity: Any = None  # identity_table(), read once
        if check:
            from nfstore.schema import check_store

            check_store(self)

    def transaction(self, command: str, *, check: bool = True, progress: bool = False) -> Any:
        """A write transaction on this store (:func:`nfstore.transaction.transaction`): the
        one write path. Reopen the store after it to read what it wrote.

        >>> with store.transaction("nf predict") as tx:
        ...     staged, state, resumed = tx.stage("decoded/rr/nsd/subj01")
        ...     tx.commit("decoded/rr/nsd/subj01")
        """
        from nfstore.transaction import transaction

        return transaction(self.location, command, storage_options=self.storage_options,
                           check=check, progress=progress)

    def _versioned(self) -> bool:
        """A URL without a root ``zarr.json`` may hold an Icechunk repository (``nf push``)."""
        try:
            if self.fs.exists(f"{self.fs_path}/zarr.json"):
                return False
        except OSError:
            return False
        except Exception as err:  # the backend's own errors (endpoint, credentials)
            raise StoreError(f"{self.location}: expected a reachable store; found "
                             f"{_remote.describe_error(err)}") from None
        from nfstore.versioned import is_repository

        return is_repository(self.location, self.storage_options)

    def __repr__(self) -> str:
        return f"<nfstore.Store {self.location!r}: {len(self.subjects())} subjects>"

    # ----------------------------------------------------------------- listing
    def _children(self, path: str) -> list[str]:
        if path not in self._root:
            return []
        return sorted(self._root[path].group_keys())

    def subjects(self, dataset: str | None = None) -> list[str]:
        """Complete subjects, as ``'<dataset>/<subject>'`` keys (incomplete ones are hidden)."""
        out = []
        for ds in [dataset] if dataset else dataset_names():
            for name in self._children(ds):
                if self._root[f"{ds}/{name}"].attrs.get(STATUS_ATTR) == COMPLETE:
                    out.append(f"{ds}/{name}")
        return out

    def attrs(self, subject: str) -> dict[str, Any]:
        """Attributes (provenance, geometry, normalization) of a subject group."""
        self._require(subject)
        return dict(self._root[subject].attrs)

    def _require(self, subject: str) -> None:
        if subject not in self.subjects():
            raise QueryError(f"subject: {subject!r} is not in {self.location}; available: "
                             f"{self.subjects()}")

    def dataset(self, subject: str) -> xr.Dataset:
        """The whole subject group as a lazy :class:`xarray.Dataset` (betas + coordinates)."""
        if subject not in self._open:  # checked and opened once per Store
            self._require(subject)
            ds = xr.open_zarr(self._zstore, group=subject, consolidated=False, chunks={},
                              zarr_format=3)
            # small coordinates in memory: selections never touch beta chunks
            small = self._loaded(subject, lambda: {c: ds[c].load() for c in ds.coords
                                                   if c != BETAS})
            self._open[subject] = ds.assign_coords({c: plain_strings(v) for c, v in small.items()})
        return self._open[subject]

    def rois(self, subject: str) -> list[str]:
        """ROI names available for ``subject`` (native names and harmonized aliases)."""
        return [str(r) for r in self.dataset(subject)[ROI].values]

    # ----------------------------------------------------------------- queries
    def betas(self, subject: str, roi: str | Sequence[str] | None = None,
              split: str | None = None, average_repeats: bool = False,
              synthetic: bool | Sequence[str] = False) -> xr.DataArray:
        """Betas of one subject, lazily.

        Parameters
        ----------
        subject : str
            ``'<dataset>/<subject>'``, e.g. ``'nsd/subj01'``.
        roi : str or list of str, optional
            ROI name(s); a list selects their union. Default: every voxel.
        split : {"train", "test", "imagery"}, optional
        average_repeats : bool
            Average the trials that share a stimulus (within the selection): one row per
            stimulus, with coordinate ``n_repeats``.
        synthetic : bool or list of str
            Add synthetic trial sets (``nf augment``): ``True`` for all, or their names.
            The trial coordinate ``source`` tells them apart (``measured`` or the set name).

        Returns
        -------
        betas : DataArray of shape (n_trials, n_voxels), dask-backed
        """
        ds = self.dataset(subject)
        x = ds[BETAS]
        voxels = None
        if roi is not None:
            names = [roi] if isinstance(roi, str) else list(roi)
            unknown = [r for r in names if r not in set(ds[ROI].values.tolist())]
            if unknown:
                raise QueryError(f"roi: {unknown} not available for {subject}; available: "
                                 f"{self.rois(subject)}")
            voxels = np.flatnonzero(ds[ROI_MASK].sel({ROI: names}).values.any(axis=0))
            x = x.isel({VOXEL: voxels})
        if split is not None and split not in SPLITS:
            raise QueryError(f"split: expected one of {list(SPLITS)}; got {split!r}")
        parts = [x] + [self._synthetic(subject, name, voxels)
                       for name in self._synthetic_names(subject, synthetic)]
        if len(parts) > 1:
            keep = [c for c in parts[0].coords if all(c in p.coords for p in parts)]
            parts = [p.drop_vars([c for c in p.coords if c not in keep]) for p in parts]
            x = xr.concat(parts, dim=TRIAL, coords="minimal", compat="override",
                          join="override")
        if split is not None:
            x = x.isel({TRIAL: np.flatnonzero(x[SPLIT].values == split)})
        if average_repeats:
            x = average_repeats_of(x)
        x.attrs = {"subject": subject, "roi": roi if roi is None or isinstance(roi, str)
                   else list(roi), "split": split, "average_repeats": average_repeats}
        return x.rename(BETAS)

    def synthetic_sets(self, subject: str) -> list[str]:
        """Names of the subject's synthetic trial sets."""
        self._require(subject)
        return self._children(f"{subject}/synthetic")

    def synthetic_stimuli(self, subject: str, name: str) -> np.ndarray:
        """Stimulus ids of a synthetic set's trials, object array of shape (n_trials,)."""
        g = self._root[f"{subject}/synthetic/{name}"]
        return np.array(g[STIMULUS][:].tolist(), dtype=object)

    def synthetic_attrs(self, subject: str, name: str) -> dict[str, Any]:
        """Attributes (config, provenance) of a synthetic set."""
        return dict(self._root[f"{subject}/synthetic/{name}"].attrs)

    def check_synthetic(self, subject: str, name: str) -> None:
        """Raise :class:`StoreError` if a synthetic set was built from other embeddings or
        another ingest of the subject than the store holds now (stale after a re-embed or a
        re-ingest)."""
        attrs = self.synthetic_attrs(subject, name)
        model = attrs.get("embedding", "")
        fix = (f"rebuild it with `nf augment {self.location} {subject} --pool "
               f"{attrs.get('config', {}).get('pool', 'POOL')} --name {name} --overwrite`")
        if model in self.embedding_models():
            now = self._root[f"embeddings/{model}"].attrs.get("weights_sha256")
            if attrs.get("embedding_weights_sha256") != now:
                raise StoreError(f"{self.location}/{subject}/synthetic/{name}: built from other "
                                 f"{model} embeddings than the cache holds now (re-embedded "
                                 f"since); {fix}")
        if attrs.get("measured_fingerprint") != self.attrs(subject).get("ingest_fingerprint"):
            raise StoreError(f"{self.location}/{subject}/synthetic/{name}: built from another "
                             f"ingest of {subject} (re-ingested since); {fix}")

    def _synthetic_names(self, subject: str, synthetic: bool | Sequence[str]) -> list[str]:
        if synthetic is False or synthetic is None:
            return []
        have = self.synthetic_sets(subject)
        names = have if synthetic is True else (
            [synthetic] if isinstance(synthetic, str) else list(synthetic))
        unknown = [n for n in names if n not in have]
        if unknown:
            raise QueryError(f"synthetic: {unknown} not found for {subject}; available: {have}")
        for name in names:
            self.check_synthetic(subject, name)
        return names

    def _synthetic(self, subject: str, name: str, voxels: np.ndarray | None) -> xr.DataArray:
        ds = xr.open_zarr(self._zstore, group=f"{subject}/synthetic/{name}",
                          consolidated=False, chunks={}, zarr_format=3)
        ds = ds.assign_coords(self._loaded(f"{subject}/synthetic/{name}", lambda: {
            c: plain_strings(ds[c].load()) for c in ds.coords}))
        x = ds[BETAS]
        measured = self.dataset(subject)
        x = x.assign_coords({c: (VOXEL, measured[c].values) for c in measured.coords
                             if measured[c].dims == (VOXEL,)})
        return x if voxels is None else x.isel({VOXEL: voxels})

    # ----------------------------------------------------------------- stimuli
    def stimulus_tables(self) -> list[str]:
        """Names of the stimulus tables: datasets and pools."""
        return self._children(STIMULI_GROUP)

    def stimuli(self, dataset: str) -> xr.Dataset:
        """Stimulus table of ``dataset`` or a pool: ``stimulus`` ids with the ``file``/``index``
        of their pixels, ``identity`` and ``fingerprint`` (:mod:`nfstore.identity`)."""
        if dataset not in self._children(STIMULI_GROUP):
            raise QueryError(f"stimuli: {dataset!r} has no stimulus table in {self.location}; "
                             f"available: {self._children(STIMULI_GROUP)}")
        ds = xr.open_zarr(self._zstore, group=f"{STIMULI_GROUP}/{dataset}",
                          consolidated=False, zarr_format=3)
        ds = self._loaded(f"{STIMULI_GROUP}/{dataset}", ds.load)
        ds = ds.assign_coords({c: plain_strings(ds[c]) for c in ds.coords})
        ids = ds[STIMULUS].values.tolist()
        if "identity" not in ds:  # a table written before identities existed
            ds = ds.assign_coords(identity=(STIMULUS, identities(dataset, ids)))
        if "fingerprint" not in ds:
            ds = ds.assign_coords(fingerprint=(STIMULUS, np.array([""] * len(ids), object)))
        return ds

    def identity_table(self) -> Any:
        """Every stimulus of every table: DataFrame with columns ``stimulus``, ``table``,
        ``identity``, ``fingerprint`` (one row per stimulus id; read once per Store)."""
        if self._identity is None:
            import pandas as pd

            parts = []
            for name in self.stimulus_tables():
                tab = self.stimuli(name)
                parts.append(pd.DataFrame({"stimulus": tab[STIMULUS].values, "table": name,
                                           "identity": tab["identity"].values,
                                           "fingerprint": tab["fingerprint"].values}))
            cols = ["stimulus", "table", "identity", "fingerprint"]
            self._identity = (pd.concat(parts, ignore_index=True).drop_duplicates("stimulus")
                              if parts else pd.DataFrame(columns=cols))
        return self._identity

    def identities_of(self, stimuli: Sequence[str]) -> tuple[list[str], list[str]]:
        """(identity, fingerprint) of each stimulus id; ids in no table get the identity their
        name gives (:func:`nfstore.identity.identity_from_name`) and no fingerprint."""
        from nfstore.identity import identity_from_name

        tab = self.identity_table().set_index("stimulus")
        ids = list(stimuli)
        ident = [v if isinstance(v, str) else identity_from_name(i.split("/")[0], i)
                 for i, v in zip(ids, tab["identity"].reindex(ids).tolist())]
        prints = [v if isinstance(v, str) else "" for v in
                  tab["fingerprint"].reindex(ids).tolist()]
        return ident, prints

    def images(self, stimuli: Any, size: tuple[int, int] | None = None) -> xr.DataArray:
        """Pixels of the given stimuli, lazily: DataArray (stimulus, y, x, rgb) uint8.

        Read from the store's pixel cache (``/stimuli/<table>/pixels``, :mod:`nfstore.pixels`)
        where it holds the stimuli, else from the raw dataset files.

        Parameters
        ----------
        stimuli : sequence of str or DataArray of stimulus ids (of one dataset or pool)
        size : (height, width), optional
            Resize one-image-per-file datasets whose images differ in size.
        """
        from nfstore.pixels import select_pixels

        return select_pixels(self, stimuli, size)

    def raw_root(self, table: str) -> Path:
        """The raw dataset folder (or pool folder) the stimulus table's files are relative to."""
        return Path(self.stimuli(table).attrs["raw_root"])

    def embedding_models(self) -> list[str]:
        """Names of the cached embedding models (``nf embed``)."""
        return self._children("embeddings")

    def embeddings(self, model: str, stimuli: Any = None) -> xr.DataArray:
        """Cached embeddings aligned to ``stimuli`` (any order, repeats allowed), lazily.

        Parameters
        ----------
        model : str
            ``ip-adapter-sdxl``, ``ip-adapter-sdxl-vit-h`` or ``<model>-tokens``.
        stimuli : sequence of str or DataArray, optional
            e.g. ``x.stimulus`` of a betas query; default: every cached stimulus.

        Returns
        -------
        DataArray (stimulus, feature) -- (stimulus, token, feature) for tokens -- dask-backed
        """
        import dask.array as da

        if model not in self.embedding_models():
            raise QueryError(f"model: no {model!r} embeddings in {self.location}; cached: "
                             f"{self.embedding_models()} (run `nf embed`)")
        g = self._root[f"embeddings/{model}"]
        count = int(g.attrs["count"])
        ids = np.array(g["stimulus"][:count].tolist(), dtype=object)
        arr = da.from_zarr(g["embedding"])[:count]
        if stimuli is None:
            rows, want = np.arange(count), ids
        else:
            want = np.asarray(getattr(stimuli, "values", stimuli), dtype=object).ravel()
            import pandas as pd

            rows = pd.Index(ids).get_indexer(want)
            if (rows < 0).any():
                missing = want[rows < 0]
                raise QueryError(f"stimuli: {len(set(missing.tolist()))} have no {model} "
                                 f"embedding (e.g. {missing[:3].tolist()}); run `nf embed`")
        dims = (STIMULUS, "token", "feature") if arr.ndim == 3 else (STIMULUS, "feature")
        return xr.DataArray(arr[rows], dims=dims, coords={STIMULUS: want}, name=model,
                            attrs={k: v for k, v in g.attrs.items() if k != "count"})

    # ----------------------------------------------------------------- decoded
    def decoded_sets(self) -> list[str]:
        """Names of the decoded-embedding sets (``nf predict``, ``nf decode-ridge``)."""
        return self._children(DECODED_GROUP)

    def decoded_subjects(self, name: str) -> list[str]:
        """Subjects with rows in decoded set ``name``."""
        if name not in self.decoded_sets():
            raise QueryError(f"decoded: no decoded set {name!r} in {self.location}; "
                             f"available: {self.decoded_sets()}")
        return [f"{ds}/{sub}" for ds in self._children(f"{DECODED_GROUP}/{name}")
                for sub in self._children(f"{DECODED_GROUP}/{name}/{ds}")]

    def decoded(self, name: str, subject: str) -> xr.DataArray:
        """Decoded embeddings of ``subject`` in set ``name``, lazily.

        Returns
        -------
        DataArray (stimulus, feature), dask-backed, with row coordinates ``split``,
        ``out_of_sample`` (the decoder never trained on the row) and ``n_repeats``;
        attrs: the set's provenance (checkpoint or ridge, options, store fingerprint).
        """
        subjects = self.decoded_subjects(name)
        if subject not in subjects:
            raise QueryError(f"subject: {subject!r} has no rows in decoded set {name!r}; "
                             f"it has {subjects}")
        ds = xr.open_zarr(self._zstore, group=f"{DECODED_GROUP}/{name}/{subject}",
                          consolidated=False, chunks={}, zarr_format=3)
        coords = self._loaded(f"{DECODED_GROUP}/{name}/{subject}", lambda: {
            c: plain_strings(ds[c].load()).values for c in ds.coords})
        return xr.DataArray(ds["embedding"].data, dims=(STIMULUS, "feature"),
                            coords={STIMULUS: coords.pop(STIMULUS),
                                    **{c: (STIMULUS, v) for c, v in coords.items()}},
                            name=name, attrs=dict(ds.attrs))

    # ----------------------------------------------------------------- summary
    def info(self) -> dict[str, dict[str, Any]]:
        """Per subject: trials per split, voxels, ROIs, sessions (metadata and coordinates)."""
        out = {}
        for key in self.subjects():
            ds = self.dataset(key)
            splits = {s: int((ds[SPLIT].values == s).sum()) for s in SPLITS}
            out[key] = {"trials": int(ds.sizes[TRIAL]), **splits,
                        "stimuli": int(np.unique(ds[STIMULUS].values).size),
                        "voxels": int(ds.sizes[VOXEL]), "rois": int(ds.sizes[ROI]),
                        "sessions": int(np.unique(ds["session"].values).size),
                        "dtype": str(ds[BETAS].dtype),
                        "synthetic": {n: int(self._root[f"{key}/synthetic/{n}/{BETAS}"].shape[0])
                                      for n in self.synthetic_sets(key)}}
        return out
