"""MindEye2 bundle ingest time vs. the bare read of the same files (h5py ``f['betas'][:]`` of
the whole betas file, as MindEye2's Train.ipynb loads it, plus tarfile + ``np.load`` of every
``behav.npy``): the ratio ingest / bare read, measured in one run, with peak memory.

Size: a real subject (subj01) is 40 sessions x 750 trials = 30000 trials by 15724 voxels,
float32: a 1.9 GB betas file, and 10000 images shown 3 times each (1000 shared test images).
The benchmark writes a bundle of that size once, directly with
:mod:`nfstore.community.mindeye2_files` (random float32 betas, the real trial design of 12
runs of 63/62 trials per session, all four behav fields per sample). ``--fraction F`` keeps
that share of the sessions (at least 1). The 224 px image rows are flat grey and stored
gzip-compressed to keep the disk use small; ingest still reads and fingerprints each shown
image, as on real data. ``--tiny`` runs a small bundle (2 sessions x 60 trials x 500 voxels)
to check that the script works.

Run: ``python benchmarks/bench_ingest_mindeye2.py [--fraction F] [--tiny]``. Prints the date,
the commit, the machine, both times, the ratio and the peak RSS after ingest (measured first)
and after the bare read. The bundle is built once under ``$NF_BENCH_DIR`` (default
``benchmarks/_work``) and reused.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK, peak_rss_mib, timed  # noqa: E402
from bench_ingest_bold5000_r2 import header  # noqa: E402

import nfstore  # noqa: E402
from nfstore.community import mindeye2_files as me2  # noqa: E402

REAL = {"sessions": 40, "trials": 750, "runs": 12, "voxels": 15724, "images": 10000,
        "shared": 1000}
TINY = {"sessions": 2, "trials": 60, "runs": 3, "voxels": 500, "images": 60, "shared": 10}


def _design(sizes: dict[str, int], rng: np.random.Generator) -> np.ndarray:
    """The behav rows (n_trials, 17) of a subject: images shown up to 3 times, shuffled."""
    n = sizes["sessions"] * sizes["trials"]
    seq = rng.permutation(np.repeat(np.arange(sizes["images"]), 3))[:n]
    ids = rng.choice(73000, sizes["images"], replace=False)
    session = np.repeat(np.arange(1, sizes["sessions"] + 1), sizes["trials"])
    runs = np.array_split(np.arange(sizes["trials"]), sizes["runs"])
    run = np.concatenate([np.full(len(r), k + 1) for k, r in enumerate(runs)])
    trial = np.concatenate([np.arange(1, len(r) + 1) for r in runs])
    return me2.behav_matrix(n, {
        me2.IMAGE: ids[seq], me2.SUBJECT: np.ones(n), me2.SESSION: session,
        me2.RUN: np.tile(run, sizes["sessions"]), me2.TRIAL: np.tile(trial, sizes["sessions"]),
        me2.ROW: np.arange(n), me2.SHARED: seq < sizes["shared"]})


def bundle(sizes: dict[str, int], name: str) -> Path:
    """The synthetic bundle (built once)."""
    import h5py

    out = WORK / name
    if (out / "complete").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    behav = _design(sizes, rng)
    shape = (behav.shape[0], sizes["voxels"])
    blocks = ((a, rng.standard_normal((min(sizes["trials"], shape[0] - a), shape[1]),
                                      dtype=np.float32))
              for a in range(0, shape[0], sizes["trials"]))
    me2.write_betas(out / me2.betas_name(1), shape, blocks)
    session = behav[:, me2.SESSION]
    me2.write_tars(out / me2.wds_dir(1), behav, session <= session.max() - 3)
    grey = np.full((3, me2.IMAGE_SIZE, me2.IMAGE_SIZE), 0.5, np.float16)
    with h5py.File(out / me2.IMAGES, "w") as f:
        d = f.create_dataset("images", (73000, 3, me2.IMAGE_SIZE, me2.IMAGE_SIZE), np.float16,
                             chunks=(1, 3, me2.IMAGE_SIZE, me2.IMAGE_SIZE), compression="gzip")
        for row in np.unique(behav[:, me2.IMAGE]).astype(int).tolist():
            d[row] = grey
    (out / "complete").write_text("ok\n")
    return out


def bare_read(root: Path) -> int:
    """Read the whole betas file and every behav array, as a script without nfstore would."""
    import h5py

    with h5py.File(root / me2.betas_name(1), "r") as f:
        betas = f["betas"][:]
    behav = []
    for tar in sorted((root / me2.wds_dir(1)).rglob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t:
                if m.name.endswith(".behav.npy"):
                    behav.append(np.load(io.BytesIO(t.extractfile(m).read()), allow_pickle=False))
    return int(betas.nbytes + sum(b.nbytes for b in behav))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=1.0,
                    help="share of a real subject's 40 sessions (default 1: 30000 trials)")
    ap.add_argument("--tiny", action="store_true", help="a small bundle, to check the script")
    args = ap.parse_args(argv)
    sizes = dict(TINY) if args.tiny else {
        **REAL, "sessions": max(1, round(REAL["sessions"] * args.fraction))}
    name = "mindeye2_tiny" if args.tiny else f"mindeye2_{sizes['sessions']}"
    root = bundle(sizes, name)
    store = WORK / "ingest_mindeye2.zarr"

    def ingest() -> nfstore.IngestSummary:
        shutil.rmtree(store, ignore_errors=True)
        return nfstore.ingest("mindeye2", root, store)

    repeat = 3 if args.tiny else 1
    t_ingest, summary = timed(ingest, repeat=repeat)
    rss_ingest = peak_rss_mib()
    t_bare, nbytes = timed(lambda: bare_read(root), repeat=repeat)
    print(header())
    print(f"mindeye2 (synthetic, {'tiny' if args.tiny else f'fraction {args.fraction}'}; "
          f"{sizes['sessions']} sessions x {sizes['trials']} trials): {summary.trials} trials x "
          f"{summary.voxels['nsd/subj01']} voxels, bare read {nbytes / 2**20:.0f} MiB")
    print(f"  bare read (h5py + tarfile) : {t_bare:7.2f} s")
    print(f"  nf ingest                  : {t_ingest:7.2f} s")
    print(f"  ratio ingest/bare          : {t_ingest / t_bare:.2f}x")
    print(f"  peak RSS after ingest      : {rss_ingest:.0f} MiB")
    print(f"  peak RSS after bare read   : {peak_rss_mib():.0f} MiB")
    assert np.isfinite(t_ingest / t_bare)


if __name__ == "__main__":
    main()
