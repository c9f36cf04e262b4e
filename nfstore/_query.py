"""Array helpers of store queries: plain string coordinates, repeat averages."""

from __future__ import annotations

import numpy as np
import xarray as xr

from nfstore.names import SOURCE, SPLIT, STIMULUS, TRIAL, VOXEL


def plain_strings(x: xr.DataArray) -> xr.DataArray:
    """Zarr string arrays come back as numpy StringDType; users expect object arrays of str."""
    if x.dtype.kind == "T":
        return x.copy(data=np.array(x.values.tolist(), dtype=object))
    return x


def average_repeats_of(x: xr.DataArray) -> xr.DataArray:
    """Average trials sharing a stimulus: DataArray (trial, voxel), one row per stimulus.

    Rows are ordered by stimulus id; coordinates ``stimulus``, ``split``, ``n_repeats`` and
    ``source`` are kept (a stimulus' trials share one split). Rows that are already averages
    (an ``n_repeats`` coordinate, e.g. Brain-Diffuser's arrays) are weighted by their counts,
    and the counts add up.
    """
    stim = x[STIMULUS].values
    if stim.size == 0:
        return x
    groups = xr.DataArray(stim, dims=TRIAL, name=STIMULUS)
    keep = [c for c in (SPLIT, SOURCE) if c in x.coords]
    bare = x.drop_vars([c for c in x.coords if x[c].dims == (TRIAL,)])
    uniq, first, counts = np.unique(stim, return_index=True, return_counts=True)
    # skipna=False: a non-finite trial makes its average non-finite, never silently dropped
    if "n_repeats" in x.coords:
        w = xr.DataArray(x["n_repeats"].values, dims=TRIAL)
        mean = ((bare * w).groupby(groups).sum(skipna=False) / w.groupby(groups).sum()
                ).astype(x.dtype)
        counts = np.bincount(np.unique(stim, return_inverse=True)[1],
                             weights=w.values).astype(np.int64)
    else:
        mean = bare.groupby(groups).mean(skipna=False)
    mean = mean.rename({STIMULUS: TRIAL}).drop_vars(TRIAL)
    coords = {STIMULUS: (TRIAL, uniq.astype(object)), "n_repeats": (TRIAL, counts)}
    coords.update({c: (TRIAL, x[c].values[first]) for c in keep})
    return mean.assign_coords(coords).transpose(TRIAL, VOXEL)
