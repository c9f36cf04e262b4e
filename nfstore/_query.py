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
    ``source`` are kept (a stimulus' trials share one split).
    """
    stim = x[STIMULUS].values
    if stim.size == 0:
        return x
    groups = xr.DataArray(stim, dims=TRIAL, name=STIMULUS)
    keep = [c for c in (SPLIT, SOURCE) if c in x.coords]
    # skipna=False: a non-finite trial makes its average non-finite, never silently dropped
    mean = x.drop_vars([c for c in x.coords if x[c].dims == (TRIAL,)]).groupby(groups).mean(
        skipna=False)
    uniq, first, counts = np.unique(stim, return_index=True, return_counts=True)
    mean = mean.rename({STIMULUS: TRIAL}).drop_vars(TRIAL)
    coords = {STIMULUS: (TRIAL, uniq.astype(object)), "n_repeats": (TRIAL, counts)}
    coords.update({c: (TRIAL, x[c].values[first]) for c in keep})
    return mean.assign_coords(coords).transpose(TRIAL, VOXEL)
