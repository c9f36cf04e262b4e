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
from nfstore._stimulus_access import StimulusAccess
from nfstore.errors import OptionError, QueryError, SchemaError, StoreError
from nfstore.names import (
    BETAS,
    COMPLETE,
    ROI,
    ROI_MASK,
    SCHEMA_VERSION,
    SPLIT,
    SPLITS,
    STATUS_ATTR,
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


class Store(RawAccess, StimulusAccess):
    """A NeuroFusion feature store (layout: docs/reference/store-layout.md; identifiers and
    normalization: docs/internals/architecture.md, "Store contract")."""

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
        if zarr_store is None and not self.remote and version is None:
            from nfstore.transaction import overlay_of

            zarr_store = overlay_of(self.location)  # the scratch of a write on a URL
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
