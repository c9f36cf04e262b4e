"""ROI query vs. whole-subject read, and random mini-batches from the store vs. memory.

Run: ``python benchmarks/bench_query.py`` (or ``make bench``). Prints chunk bytes touched (the
compressed size of the chunk files the selection covers; not a count of bytes actually read),
times and their ratios, and trials/s for mini-batches of 256.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK, nsd_bench_tree, timed  # noqa: E402

import nfstore  # noqa: E402


def chunk_bytes(store_path: Path, key: str, voxels: np.ndarray) -> int:
    """Bytes of the betas chunk files a selection of voxels (all trials) has to read."""
    arr = zarr.open_array(str(store_path / key / "betas"), mode="r")
    cols = np.unique(voxels // arr.chunks[1])
    total = 0
    for f in (store_path / key / "betas" / "c").glob("*/*"):
        if int(f.name) in cols:
            total += f.stat().st_size
    return total


def main() -> None:
    raw = nsd_bench_tree()
    path = WORK / "query.zarr"
    if not (path / "zarr.json").is_file():
        nfstore.ingest("nsd", raw, path, overwrite=True)
    store = nfstore.open_store(path)
    key = "nsd/subj01"
    ds = store.dataset(key)
    masks = dict(zip(ds.roi.values.tolist(), ds.roi_mask.values))
    v1 = np.flatnonzero(masks["V1"])
    every = np.arange(ds.sizes["voxel"])
    b_v1, b_all = chunk_bytes(path, key, v1), chunk_bytes(path, key, every)
    t_v1, _ = timed(lambda: store.betas(key, roi="V1").values)
    t_all, _ = timed(lambda: store.betas(key).values)
    print(f"{key}: {ds.sizes['trial']} trials x {ds.sizes['voxel']} voxels; V1 = {v1.size} "
          f"voxels ({100 * v1.size / every.size:.0f}%)")
    print(f"  V1 query   : {b_v1 / 2**20:7.1f} MiB of chunks touched, {t_v1:.3f} s")
    print(f"  whole read : {b_all / 2**20:7.1f} MiB of chunks touched, {t_all:.3f} s")
    print(f"  ratio V1/whole: bytes {b_v1 / b_all:.3f}, time {t_v1 / t_all:.3f}")

    rng = np.random.default_rng(0)
    n = ds.sizes["trial"]
    batches = [np.sort(rng.choice(n, 256, replace=False)) for _ in range(20)]
    memory = store.betas(key).values
    arr = zarr.open_array(str(path / key / "betas"), mode="r")
    lazy = store.betas(key)

    def from_memory() -> None:
        for b in batches:
            memory[b]

    def from_zarr() -> None:
        for b in batches:
            arr.get_orthogonal_selection((b, slice(None)))

    def from_xarray() -> None:
        for b in batches[:5]:
            lazy.isel(trial=b).values

    t_mem, _ = timed(from_memory)
    t_zarr, _ = timed(from_zarr)
    t_xr, _ = timed(from_xarray, repeat=1)
    trials = 256 * len(batches)
    print(f"random mini-batches of 256 trials (all {ds.sizes['voxel']} voxels):")
    print(f"  in-memory numpy   : {trials / t_mem:10.0f} trials/s")
    print(f"  store, zarr direct: {trials / t_zarr:10.0f} trials/s ({t_mem / t_zarr:.3f} of "
          f"in-memory)")
    print(f"  store, xarray/dask: {256 * 5 / t_xr:10.0f} trials/s")


if __name__ == "__main__":
    main()
