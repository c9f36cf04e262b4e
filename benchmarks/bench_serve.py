"""``nf serve`` under a bounded load on 127.0.0.1 (figures in docs/benchmarks.md).

A synthetic NSD subject with 1000 test images and a reconstruction set of 1000 rows (random
64 px images: rendering and serving cost, not quality), served by ``nf serve`` in its own
process. After one warm-up request (the gallery computes PixCorr/SSIM of the 1000 rows once),
``--clients`` threads each send ``--requests`` requests, alternating a gallery page (random
page and sort) and a reconstruction image (random row); p50 / p99 latency per route and the
request rate are printed.

Run: ``python benchmarks/bench_serve.py [--clients 8] [--requests 50]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK  # noqa: E402

N = 1000


def build_store() -> Path:
    import nfstore
    from nfrecon.reconstruct import create_group
    from nfstore.names import RECON_GROUP
    from nfstore.synth import synthesize

    store = WORK / "serve.zarr"
    if (store / "done").exists():
        return store
    shutil.rmtree(store, ignore_errors=True)
    raw = WORK / "serve_raw"
    synthesize("nsd", raw, overwrite=True, subjects=(1,), shared=N, images_per_subject=N + 50,
               trials_per_session=250, sessions=12, runs_per_session=5, image_size=32,
               grid=(12, 14, 12))
    nfstore.ingest("nsd", raw, store)
    st = nfstore.open_store(store)
    ds = st.dataset("nsd/subj01")
    test = np.unique(ds.stimulus.values[ds.split.values == "test"])[:N]
    key = f"{RECON_GROUP}/bench/nsd/subj01"
    with nfstore.transaction(store, "bench_serve") as tx:
        staged, _, _ = tx.stage(key, create=False)
        g = create_group(staged, test, 1, 64)
        rng = np.random.default_rng(0)
        for a in range(0, len(test), 100):
            g["images"][a:a + 100] = rng.integers(0, 256, (min(100, len(test) - a), 1, 64, 64,
                                                           3), dtype=np.uint8)
        g["chosen"][:] = 0
        g.attrs["subject"] = "nsd/subj01"
        g.attrs.update({"source": "benchmark: random images"})
        tx.commit(key)
    (store / "done").touch()
    return store


def get(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        r.read()
        return time.perf_counter() - t0, r.status


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50)
    args = ap.parse_args()
    store = build_store()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "nf", "serve", str(store), "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):  # bounded wait for the server
            try:
                urllib.request.urlopen(base + "/api/overview", timeout=5).read()
                break
            except OSError:
                time.sleep(0.2)
        t0 = time.perf_counter()
        g = json.loads(urllib.request.urlopen(base + "/api/gallery/bench", timeout=300).read())
        warm = time.perf_counter() - t0
        pages = g["pages"]

        def client(seed: int) -> dict[str, list[float]]:
            rng = np.random.default_rng(seed)
            out: dict[str, list[float]] = {"gallery page": [], "image": []}
            for i in range(args.requests):
                if i % 2 == 0:
                    sort = rng.choice(["pixcorr", "ssim"])
                    url = f"{base}/gallery/bench?sort={sort}&page={rng.integers(1, pages + 1)}"
                    out["gallery page"].append(get(url)[0])
                else:
                    url = f"{base}/image/recon/bench/nsd/subj01/{rng.integers(0, N)}/0"
                    out["image"].append(get(url)[0])
            return out

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(args.clients) as ex:
            results = list(ex.map(client, range(args.clients)))
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    total = args.clients * args.requests
    print(f"nf serve, gallery of {N} reconstructions ({pages} pages), {args.clients} concurrent "
          f"clients x {args.requests} requests on 127.0.0.1; first gallery call (metrics of "
          f"{N} rows computed once) {warm:.1f} s")
    for route in ("gallery page", "image"):
        lat = np.concatenate([r[route] for r in results]) * 1000
        print(f"  {route:13s}: p50 {np.percentile(lat, 50):6.1f} ms, p99 "
              f"{np.percentile(lat, 99):6.1f} ms ({lat.size} requests)")
    print(f"  {total} requests in {wall:.1f} s = {total / wall:.0f} requests/s")


if __name__ == "__main__":
    main()
