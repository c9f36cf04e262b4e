"""Write a query result to a file: ``.npy`` (values), ``.nc`` (netCDF4) or ``.zarr``."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from nfstore.errors import OptionError
from nfstore.transaction import replace_path

SUFFIXES = (".npy", ".nc", ".zarr")


def write_query(x: xr.DataArray, out: str | Path) -> Path:
    """Compute ``x`` and write it to ``out`` (format from the suffix); returns the path.

    The file is written next to its destination and renamed into place, so a failure never
    leaves half a file.
    """
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise OptionError(f"out: expected a file ending in {', '.join(SUFFIXES)}; got {out}")
    if not out.parent.is_dir():
        raise OptionError(f"out: folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.stem}.partial-{os.getpid()}{out.suffix}")
    attrs = dict(x.attrs)
    x = x.compute()
    x.attrs = {}
    x.encoding = {}
    ds = x.to_dataset(name=str(x.name or "betas"))
    # netCDF attributes: strings and numbers only (bool and None become strings)
    ds.attrs = {k: v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else str(v)
                for k, v in attrs.items()}
    try:
        if out.suffix == ".npy":
            np.save(tmp, x.values)
        elif out.suffix == ".nc":
            for name in list(ds.coords):
                if ds[name].dtype.kind in "OT":  # netCDF4 takes fixed-width strings
                    fixed = np.array(ds[name].values.tolist(), dtype="U")
                    ds = ds.assign_coords({name: (ds[name].dims, fixed)})
            ds.to_netcdf(tmp, engine="h5netcdf")
        else:
            with warnings.catch_warnings():  # consolidated metadata: a zarr-python extension
                warnings.filterwarnings("ignore", message="Consolidated metadata")
                ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True)
        replace_path(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    return out
