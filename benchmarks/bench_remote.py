"""Past one machine: the store on an S3-compatible server vs. local disk, and ingest on 1 vs. 2
Dask workers. Everything runs on 127.0.0.1 in one run.

- a V1 query and a whole-subject read, local folder vs. the same store on moto's S3 server
  (best of 3; GET requests counted at the server);
- the trainer's loader (one epoch of ``nftrain.data.batches``, chunk-aligned blocks into the
  shuffle buffer), local vs. S3, in samples/s;
- ``nfstore.ingest`` of one synthetic NSD subject in this process vs. with ``scheduler=`` a
  LocalCluster of 1 and of 2 worker processes (one thread each);
- what a real object store's latency would change: requests x a first-byte latency, divided by
  zarr's concurrent requests (``async.concurrency``), beside the measured times.

Run: ``python benchmarks/bench_remote.py``.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK, nsd_bench_tree, timed  # noqa: E402

import nfstore  # noqa: E402

LATENCIES_MS = (10, 30, 100)  # same-region S3 first byte ~10-30 ms; cross-region ~100 ms


class GetCounter(logging.Handler):
    """Counts GET requests in the server's access log."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    def emit(self, record: logging.LogRecord) -> None:
        if '"GET ' in record.getMessage():
            self.gets += 1


def _epoch(store: nfstore.Store) -> tuple[int, int]:
    from nftrain.config import build
    from nftrain.data import batches, load_dataset

    cfg = build(dict(subjects=["nsd/subj01"], batch_size=256, cache_mb=64, output_dir="-",
                     val_fraction=0.1))
    data = load_dataset(store, cfg)
    n = sum(b.size for b in batches(data, cfg, 0))
    return n, len(data.subjects[0].train[0].rows)


def main() -> None:
    import s3fs
    import zarr

    raw = nsd_bench_tree()
    local = WORK / "remote_local.zarr"
    if not (local / "embeddings").is_dir():
        from nfstore.embeddings import embed_store
        from nfstore.tiny import write_tiny_encoder

        shutil.rmtree(local, ignore_errors=True)
        nfstore.ingest("nsd", raw, local)
        embed_store(local, "ip-adapter-sdxl", write_tiny_encoder(WORK / "enc")["hf"], workers=0)
    from nfstore.testing import local_s3

    counter = GetCounter()
    logging.getLogger("werkzeug").addHandler(counter)
    logging.getLogger("werkzeug").setLevel(logging.INFO)
    logging.getLogger("werkzeug").propagate = False
    with local_s3("bench") as server:
        opts = server["options"]
        fs = s3fs.S3FileSystem(**opts)
        t0 = time.perf_counter()
        fs.put(str(local), "bench/nf.zarr", recursive=True)
        print(f"upload of the store to the local S3 server: {time.perf_counter() - t0:.1f} s")
        stores = {"local disk": nfstore.open_store(local),
                  "S3 (127.0.0.1)": nfstore.open_store("s3://bench/nf.zarr",
                                                       storage_options=opts)}
        key = "nsd/subj01"
        ds = stores["local disk"].dataset(key)
        print(f"{key}: {ds.sizes['trial']} trials x {ds.sizes['voxel']} voxels; chunks "
              f"{stores['local disk'].betas_array(key).chunks}; zarr async.concurrency "
              f"{zarr.config.get('async.concurrency')}")
        rows = {}
        for name, st in stores.items():
            counter.gets = 0
            t_v1, _ = timed(lambda st=st: st.betas(key, roi="V1").values)
            v1_gets = counter.gets // 3
            counter.gets = 0
            t_all, _ = timed(lambda st=st: st.betas(key).values)
            all_gets = counter.gets // 3
            counter.gets = 0
            t0 = time.perf_counter()
            n, _ = _epoch(st)
            t_ep = time.perf_counter() - t0
            rows[name] = (t_v1, v1_gets, t_all, all_gets, n / t_ep, counter.gets)
        print(f"{'':16s} {'V1 query':>10s} {'GETs':>6s} {'whole':>8s} {'GETs':>6s} "
              f"{'loader samples/s':>17s} {'GETs':>6s}")
        for name, (a, ag, b, bg, sps, eg) in rows.items():
            print(f"{name:16s} {a:9.3f}s {ag:6d} {b:7.3f}s {bg:6d} {sps:17.0f} {eg:6d}")
        lo, s3 = rows["local disk"], rows["S3 (127.0.0.1)"]
        print(f"S3 / local: V1 query {s3[0] / lo[0]:.2f}x the time, whole read "
              f"{s3[2] / lo[2]:.2f}x, loader throughput {s3[4] / lo[4]:.2f} of local")
        conc = int(zarr.config.get("async.concurrency"))
        for ms in LATENCIES_MS:  # a block's (or query's) chunks are fetched `conc` at a time
            print(f"  at {ms:3d} ms first-byte latency: + {s3[1] * ms / 1e3 / conc:.2f} s per "
                  f"V1 query, + {s3[3] * ms / 1e3 / conc:.2f} s per whole read, + "
                  f"{s3[5] * ms / 1e3 / conc:.2f} s per loader epoch (blocks one after "
                  f"another, the prefetch thread overlapping them with training)")
    _ingest(raw)


def _ingest(raw: Path) -> None:
    from distributed import LocalCluster

    times = {}
    out = WORK / "remote_ingest.zarr"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    nfstore.ingest("nsd", raw, out)
    times["in this process (threads)"] = time.perf_counter() - t0
    for n in (1, 2):
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster:
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            nfstore.ingest("nsd", raw, out, scheduler=cluster.scheduler_address)
            times[f"{n} Dask worker{'s' if n > 1 else ''}"] = time.perf_counter() - t0
    print("NSD ingest (one subject):")
    for k, v in times.items():
        print(f"  {k:28s}: {v:6.2f} s")
    print(f"  1 -> 2 workers: {times['1 Dask worker'] / times['2 Dask workers']:.2f}x")


if __name__ == "__main__":
    main()
