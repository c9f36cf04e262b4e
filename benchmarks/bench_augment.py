"""Ridge CV at NSD scale: this project vs. himalaya RidgeCV vs. scikit-learn, in one run.

N = 8859 trials, d = 1280 features, V = 15724 voxels, 5-fold CV over 8 alphas (per-voxel
alphas). Each method runs in its own process (peak RSS measured there) on the same data; the
floor is the work of our algorithm divided by this machine's float32 matrix-multiply rate.

``--decode`` times the low-level decoding ridge instead: N = 8859 trials, d =
15724 voxels as features, 3136 SDXL-VAE latent targets (4x28x28), per-target alphas; ours is
``nfstore.decoding.fit_ridge`` (the thin basis from the Gram matrix, since N < d).

Run: ``python benchmarks/bench_augment.py [--decode]`` (``--small`` for a quick check).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK  # noqa: E402

ALPHAS = np.logspace(1, 6, 8)
K = 5


def data_dir(n: int, d: int, v: int) -> Path:
    """X (n, d) .npy and Y (n, v) zarr with the store's chunks, planted signal, float32."""
    import zarr

    out = WORK / f"ridge_{n}x{d}x{v}"
    if (out / "done").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d), dtype=np.float32)
    np.save(out / "X.npy", X)
    Y = zarr.create_array(str(out / "Y.zarr"), shape=(n, v), chunks=(750, 256), dtype="float32",
                          overwrite=True)
    for a in range(0, v, 2048):
        b = min(a + 2048, v)
        w = rng.standard_normal((d, b - a), dtype=np.float32) * (rng.random(b - a) * 0.05)
        Y[:, a:b] = X @ w + rng.standard_normal((n, b - a), dtype=np.float32)
    (out / "done").touch()
    return out


def flops(n: int, d: int, v: int, n_alphas: int = 8, k: int = K) -> dict[str, float]:
    """Multiply-add counts (x2 = FLOP) of our algorithm and of himalaya's."""
    n_val, n_tr = n / k, n - n / k
    ours = n * d * v  # X.T @ Y, shared by the folds and the refit
    ours += k * (n_val * d * v + d * d * v)  # per fold: X_val.T @ Y_val, V.T @ Z
    ours += k * (n_val * d * v + n_alphas * d * d * v)  # per fold: D, then G @ (g C) per alpha
    ours += 2 * d * d * v  # refit: V.T @ Z, V @ C
    ours += k * (n_tr * d * d + n_val * d * d)  # fold Gram matrices, A and G
    himalaya = k * n_alphas * (n_val * n_tr * v + n_val * d * n_tr) + n_alphas * n * d * v
    return {"ours": 2 * ours, "himalaya": 2 * himalaya}


def gemm_rate() -> float:
    """This machine's float32 matrix-multiply rate (FLOP/s), best of 3."""
    a = np.random.default_rng(1).standard_normal((4096, 4096), dtype=np.float32)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * 4096 ** 3 / best


def run_method(method: str, path: Path, workers: int, blas: int | None) -> dict[str, float]:
    import zarr

    X = np.load(path / "X.npy")
    t0 = time.perf_counter()
    if method == "ours-decode":
        from nfstore.decoding import fit_ridge

        Y = zarr.open_array(str(path / "Y.zarr"))[:]
        t0 = time.perf_counter()
        alphas = fit_ridge(X, Y, tuple(ALPHAS), cv=K, target_chunk=512, workers=workers).alpha
        method = "ours"
    elif method == "ours":
        from nfstore.augment.synthesis import AugmentConfig, fit_model

        cfg = AugmentConfig(pool="-", alphas=tuple(ALPHAS), cv=K, workers=workers,
                            voxel_chunk=1024, blas_threads=blas)
        n_vox = zarr.open_array(str(path / "Y.zarr")).shape[1]
        model, _, _ = fit_model(str(path / "Y.zarr"), np.arange(X.shape[0]), X, n_vox, cfg)
        alphas = model.alpha
    else:
        Y = zarr.open_array(str(path / "Y.zarr"))[:]
        t0 = time.perf_counter()
        if method == "himalaya":
            import warnings

            from himalaya.backend import set_backend
            from himalaya.ridge import RidgeCV
            from sklearn.model_selection import KFold

            set_backend("numpy")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                alphas = RidgeCV(alphas=ALPHAS, cv=KFold(K), fit_intercept=True).fit(
                    X, Y).best_alphas_
        else:  # scikit-learn: per-target alphas need its efficient leave-one-out (GCV) mode
            from sklearn.linear_model import RidgeCV as SkRidgeCV

            alphas = SkRidgeCV(alphas=ALPHAS, alpha_per_target=True).fit(X, Y).alpha_
    seconds = time.perf_counter() - t0
    np.save(path / f"alphas_{method}.npy", np.asarray(alphas))
    return {"seconds": seconds,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def child(method: str, path: Path, workers: int, timeout: float, blas: int | None = None
          ) -> dict[str, float] | None:
    cmd = [sys.executable, __file__, "--child", method, "--path", str(path), "--workers",
           str(workers)] + (["--blas", str(blas)] if blas else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    except subprocess.CalledProcessError as err:
        print(err.stderr[-2000:])
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--small", action="store_true")
    p.add_argument("--child")
    p.add_argument("--path", type=Path)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--skip", nargs="*", default=[])
    p.add_argument("--blas", type=int)
    p.add_argument("--decode", action="store_true")
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_method(args.child, args.path, args.workers, args.blas)))
        return
    if args.decode:
        decode(args)
        return
    n, d, v = (1500, 256, 2048) if args.small else (8859, 1280, 15724)
    path = data_dir(n, d, v)
    rate = gemm_rate()
    work = flops(n, d, v)
    print(f"data: N={n} trials, d={d} features, V={v} voxels, {K}-fold CV, {len(ALPHAS)} alphas")
    print(f"float32 GEMM on this machine: {rate / 1e9:.0f} GFLOP/s")
    print(f"work: ours {work['ours'] / 1e12:.2f} TFLOP ({work['ours'] / 2e12:.2f} T multiply-"
          f"adds), himalaya {work['himalaya'] / 1e12:.2f} TFLOP")
    floor = work["ours"] / rate
    results = {}
    runs = (("ours", 2, None), ("ours", 1, None), ("ours", 1, 1), ("ours", 2, 1),
            ("himalaya", 1, None), ("sklearn", 1, None))
    for method, workers, blas in runs:
        if method in args.skip:
            continue
        r = child(method, path, workers, args.timeout, blas)
        results[(method, workers, blas)] = r
        label = (f"{method} ({workers} Dask worker{'s' if workers > 1 else ''}"
                 + (f", {blas} BLAS thread each)" if blas else ")")) if method == "ours" else method
        if r is None:
            print(f"  {label:26s}: did not finish within {args.timeout:.0f} s")
            continue
        print(f"  {label:26s}: {r['seconds']:7.1f} s, peak RSS {r['peak_rss_gib']:.2f} GiB")
    ours = results.get(("ours", 2, None))
    if ours:
        print(f"floor (our work / GEMM rate): {floor:.1f} s; ours is {ours['seconds'] / floor:.2f}"
              f"x the floor; a literal 2 TFLOP would take {2e12 / rate:.1f} s "
              f"({ours['seconds'] / (2e12 / rate):.2f}x)")
        one, two = results.get(("ours", 1, 1)), results.get(("ours", 2, 1))
        if one and two:
            print(f"speed-up 1 -> 2 Dask workers (1 BLAS thread each): "
                  f"{one['seconds'] / two['seconds']:.2f}x")
        for other in ("himalaya", "sklearn"):
            r = results.get((other, 1, None))
            if r:
                print(f"{other} / ours: {r['seconds'] / ours['seconds']:.1f}x slower")
        h = path / "alphas_himalaya.npy"
        if h.exists():
            agree = np.isclose(np.load(path / "alphas_ours.npy"), np.load(h), rtol=1e-6).mean()
            print(f"per-voxel alphas equal to himalaya's for {100 * agree:.2f}% of voxels")


def decode(args: argparse.Namespace) -> None:
    """voxels -> latent targets at NSD scale: ours vs himalaya, time and peak memory."""
    n, d, v = (600, 2000, 512) if args.small else (8859, 15724, 3136)
    path = data_dir(n, d, v)
    print(f"decoding ridge: N={n} trials, d={d} voxels, {v} targets, {K}-fold CV, "
          f"{len(ALPHAS)} alphas, per-target alphas")
    res = {m: child(m, path, 2 if m == "ours-decode" else 1, args.timeout)
           for m in ("ours-decode", "himalaya") if m not in args.skip}
    for m, r in res.items():
        print(f"  {m:12s}: " + (f"{r['seconds']:7.1f} s, peak RSS {r['peak_rss_gib']:.2f} GiB"
                               if r else f"did not finish within {args.timeout:.0f} s"))
    ours, him = res.get("ours-decode"), res.get("himalaya")
    if ours and him:
        print(f"himalaya / ours: {him['seconds'] / ours['seconds']:.2f}x the time, "
              f"{him['peak_rss_gib'] / ours['peak_rss_gib']:.2f}x the memory")
        agree = np.isclose(np.load(path / "alphas_ours.npy"),
                           np.load(path / "alphas_himalaya.npy"), rtol=1e-6).mean()
        print(f"per-target alphas equal to himalaya's for {100 * agree:.2f}% of targets")


if __name__ == "__main__":
    main()
