"""Writing to a store on S3 (moto's server, 127.0.0.1) without a local copy of it.

1. Adding one embedding set (``--model pixels``) to a store on S3 from a machine with nothing
   local: the previous working copy (``nfstore.versioned.publishing``: pull the store, write,
   push) vs. direct writes (``nfstore.embeddings.embed_store(URL)``: a work branch and a
   sparse scratch folder). Measured: bytes over the loopback interface during the command
   (uploads and downloads together; the server is on 127.0.0.1), the peak of local disk use
   under ``$NF_WORKDIR`` (sampled every 20 ms), and wall time.
2. Ingest throughput to S3: direct (``nfstore.ingest(..., URL)``) vs. a local ingest followed
   by ``nfstore.versioned.push``.

Each comparison is printed as a ratio measured in one run. ``--sessions N`` scales the
store (4 sessions of 250 trials by default, ~0.1 GB; about 40 reach ~1 GB).

Run: ``python benchmarks/bench_direct_writes.py [--sessions N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK, nsd_bench_tree  # noqa: E402
from bench_ingest_bold5000_r2 import header  # noqa: E402

import nfstore  # noqa: E402
from nfstore import versioned  # noqa: E402


def _du(folder: Path) -> int:
    total = 0
    for parent, _, files in os.walk(folder):  # os.walk skips folders removed while walked
        for name in files:
            try:
                total += os.stat(os.path.join(parent, name)).st_size
            except OSError:  # removed while walked
                pass
    return total


def measured(call: Callable[[], Any], workdir: Path) -> dict[str, float]:
    """Run ``call`` with ``NF_WORKDIR=workdir``: wall time, loopback bytes, peak disk."""
    import psutil

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    os.environ["NF_WORKDIR"] = str(workdir)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _du(workdir))
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    net0 = psutil.net_io_counters(pernic=True)["lo"].bytes_sent
    t0 = time.perf_counter()
    thread.start()
    try:
        call()
    finally:
        stop.set()
        thread.join()
    seconds = time.perf_counter() - t0
    net = psutil.net_io_counters(pernic=True)["lo"].bytes_sent - net0
    return {"seconds": seconds, "net": float(net), "disk": float(max(peak[0], _du(workdir)))}


def _embed_set(url: str, opts: dict[str, Any], store_bytes: int) -> None:
    from nfstore.embeddings import embed_store

    def working_copy() -> None:
        with versioned.publishing(url, opts, message="nf embed --model pixels") as work:
            embed_store(work, "pixels", options={"size": 8}, workers=0, overwrite=True)

    def direct() -> None:
        embed_store(url, "pixels", options={"size": 8}, workers=0, overwrite=True)

    rows = {"working copy": measured(working_copy, WORK / "wd_copy"),
            "direct writes": measured(direct, WORK / "wd_direct")}
    print(f"add one embedding set (pixels, 8x8) to a {store_bytes / 2**20:.1f} MiB store on S3:")
    for name, r in rows.items():
        print(f"  {name:14s} {r['seconds']:7.2f} s  loopback {r['net'] / 2**20:8.1f} MiB  "
              f"local disk peak {r['disk'] / 2**20:8.1f} MiB "
              f"({r['disk'] / store_bytes:.1%} of the store)")
    a, b = rows["working copy"], rows["direct writes"]
    print(f"  working copy / direct: loopback bytes {a['net'] / max(b['net'], 1):.1f}x, local "
          f"disk {a['disk'] / max(b['disk'], 1):.1f}x, time {a['seconds'] / b['seconds']:.2f}x")


def _ingest(raw: Path, opts: dict[str, Any], bucket: str) -> None:
    local = WORK / "direct_local.zarr"
    shutil.rmtree(local, ignore_errors=True)

    def local_then_push() -> None:
        nfstore.ingest("nsd", raw, local)
        versioned.push(local, f"s3://{bucket}/{uuid.uuid4().hex[:8]}/nf.zarr", opts)

    def direct() -> None:
        nfstore.ingest("nsd", raw, f"s3://{bucket}/{uuid.uuid4().hex[:8]}/nf.zarr")

    a = measured(local_then_push, WORK / "wd_push")
    b = measured(direct, WORK / "wd_ingest")
    mb = _du(local) / 2**20
    print(f"ingest of one NSD subject ({mb:.1f} MiB store) to S3:")
    print(f"  local ingest + nf push {a['seconds']:7.2f} s ({mb / a['seconds']:.1f} MiB/s)")
    print(f"  direct writes          {b['seconds']:7.2f} s ({mb / b['seconds']:.1f} MiB/s)")
    print(f"  direct / (local + push) throughput: {a['seconds'] / b['seconds']:.2f}")


def main() -> None:
    import fsspec.config
    import s3fs

    from nfstore.testing import local_s3

    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=4)
    args = parser.parse_args()
    print(header())
    raw = nsd_bench_tree(sessions=args.sessions)
    local = WORK / f"direct_seed_{args.sessions}.zarr"
    if not (local / "stimuli").is_dir():
        shutil.rmtree(local, ignore_errors=True)
        nfstore.ingest("nsd", raw, local)
    with local_s3("bench-direct") as server:
        opts = server["options"]
        fsspec.config.conf.setdefault("s3", {}).update(opts)
        url = "s3://bench-direct/store/nf.zarr"
        versioned.push(local, url, opts, message="seed")
        store_bytes = int(s3fs.S3FileSystem(**opts).du("bench-direct/store"))
        _embed_set(url, opts, store_bytes)
        _ingest(raw, opts, "bench-direct")


if __name__ == "__main__":
    main()
