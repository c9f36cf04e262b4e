"""Store accessors of everything keyed by stimulus: stimulus tables, identities, images,
embedding caches and decoded sets (a mixin of :class:`nfstore.Store`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from nfstore._query import plain_strings
from nfstore.errors import QueryError
from nfstore.identity import identities
from nfstore.names import (
    DECODED_GROUP,
    STIMULI_GROUP,
    STIMULUS,
)


class StimulusAccess:
    """Stimulus tables, images, embeddings and decoded sets of a :class:`~nfstore.Store`."""

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
