"""Brain-Diffuser array ingest time vs. a bare ``np.load`` of the same files: the ratio
ingest / bare read, measured in one run, and the peak memory.

Size: the real subj01 files hold 8859 train and 982 test rows of 15724 nsdgeneral voxels,
float64 (1.24 GB of fMRI), plus images of 425 px (38 GB of float64). This benchmark writes
fMRI files of the real shape (the voxel count scaled by ``--fraction``, default 1.0), an
``nsd_expdesign.mat`` of the real design (40 sessions of 750 trials in 12 runs of 63/62, 1000
shared images, each image shown at most 3 times) whose first 37 sessions hold exactly 8859
train and 982 test images, captions of the real shape, and **smaller images** (``--image-size``,
default 32 px instead of 425: the image arrays are read for the stimulus fingerprints, and
425 px float64 arrays would need 38 GB of disk). ``--tiny`` runs the small synthetic tree of
``nf synth brain-diffuser`` instead, to check that the script works.

Run: ``python benchmarks/bench_ingest_brain_diffuser.py [--fraction F] [--image-size N]
[--tiny]``. Prints the date, the commit, the machine and the measured ratio. The files are
written once under ``$NF_BENCH_DIR`` (default ``benchmarks/_work``) and reused.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import WORK, report_ratio, timed  # noqa: E402
from bench_ingest_bold5000_r2 import header  # noqa: E402

import nfstore  # noqa: E402
from nfstore.community import brain_diffuser_files as bdf  # noqa: E402

REAL = {"train": 8859, "test": 982, "voxels": 15724, "sessions": 37}
RUNS = (63, 62) * 6  # trials per run, 12 runs = 750 trials per session
ROW_BLOCK = 1024


def real_design(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """An expdesign whose first 37 sessions show exactly 8859 train and 982 test images.

    Returns ``masterordering`` (1, 30000), ``subjectim`` (8, 10000), ``sharedix`` (1, 1000)
    and ``stimpattern`` (40, 12, 75), 1-based as in NSD's file.
    """
    n_prefix = REAL["sessions"] * sum(RUNS)
    test = rng.choice(1000, REAL["test"], replace=False)  # list positions 0..999
    train = 1000 + rng.choice(9000, REAL["train"], replace=False)
    images = np.concatenate([test, train])
    extra = n_prefix - images.size  # second and third showings
    reps = np.concatenate([images, rng.permutation(np.repeat(images, 2))[:extra]])
    prefix = rng.permutation(reps)
    unseen = np.setdiff1d(np.arange(10000), images)
    rest = rng.permutation(np.concatenate([unseen, unseen, images])[:3 * sum(RUNS)])
    order = np.concatenate([prefix, rest])[:40 * sum(RUNS)] + 1
    subjectim = np.stack([rng.permutation(73000)[:10000] + 1 for _ in range(8)])
    subjectim[:, :1000] = subjectim[0, :1000]  # the shared images lead every list
    pattern = np.zeros((40, 12, 75))
    for r, n in enumerate(RUNS):
        pattern[:, r, 1:n + 1] = 1
    return {"masterordering": order[None, :].astype(np.float64),
            "subjectim": subjectim.astype(np.float64),
            "sharedix": subjectim[0, :1000][None, :].astype(np.float64),
            "stimpattern": pattern}


def write_tree(out: Path, fraction: float, image_size: int) -> dict[str, int]:
    """Real-shape Brain-Diffuser files for subj01 (random values), written in row blocks."""
    import scipy.io

    rng = np.random.default_rng(0)
    n_vox = max(1, round(fraction * REAL["voxels"]))
    (out / bdf.EXPDESIGN).parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(out / bdf.EXPDESIGN, real_design(rng))
    bdf.subject_dir(out, 1).mkdir(parents=True, exist_ok=True)
    for split in bdf.SPLITS:
        n = REAL[split]
        fmri = np.lib.format.open_memmap(bdf.array_path(out, 1, split, "fmri"), mode="w+",
                                         dtype=np.float64, shape=(n, n_vox))
        stim = np.lib.format.open_memmap(bdf.array_path(out, 1, split, "stim"), mode="w+",
                                         dtype=np.float64,
                                         shape=(n, image_size, image_size, 3))
        for a in range(0, n, ROW_BLOCK):
            b = min(n, a + ROW_BLOCK)
            fmri[a:b] = np.rint(rng.normal(0, 300, (b - a, n_vox)))
            stim[a:b] = rng.integers(0, 256, (b - a, image_size, image_size, 3))
        fmri.flush()
        stim.flush()
        del fmri, stim
        caps = [[f"image {r} caption {k}" for k in range(5)] for r in range(n)]
        bdf.write_array(bdf.array_path(out, 1, split, "cap"), bdf.caption_array(caps))
    return {"voxels": n_vox, "image_size": image_size}


def tree(fraction: float, image_size: int, tiny: bool) -> tuple[Path, str]:
    """The benchmark tree (built once) and a description of its size."""
    if tiny:
        from nfstore.synth import synthesize

        out = WORK / "brain_diffuser_tiny"
        if not bdf.array_path(out, 1, "test", "cap").is_file():
            synthesize("brain-diffuser", out, overwrite=True, subjects=(1,))
        return out, "tiny synthetic tree"
    out = WORK / f"brain_diffuser_{fraction:g}_{image_size}px"
    if not bdf.array_path(out, 1, "test", "cap").is_file():
        shutil.rmtree(out, ignore_errors=True)
        write_tree(out, fraction, image_size)
    return out, f"real row counts, voxel fraction {fraction:g}, {image_size} px images"


def bare_read(raw: Path) -> int:
    """Load every array whole, as Brain-Diffuser's scripts do (``np.load``)."""
    total = 0
    for split in bdf.SPLITS:
        for kind in ("fmri", "stim", "cap"):
            total += np.load(bdf.array_path(raw, 1, split, kind)).nbytes
    return total


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=1.0,
                    help="fraction of the real 15724 voxels (default 1.0)")
    ap.add_argument("--image-size", type=int, default=32,
                    help="image side in pixels (real: 425; default 32)")
    ap.add_argument("--tiny", action="store_true", help="a small tree, to check the script")
    args = ap.parse_args(argv)
    raw, what = tree(args.fraction, args.image_size, args.tiny)
    store = WORK / "ingest_brain_diffuser.zarr"

    def ingest() -> nfstore.IngestSummary:
        shutil.rmtree(store, ignore_errors=True)
        return nfstore.ingest("brain-diffuser", raw, store, subjects=[1])

    t_bare, nbytes = timed(lambda: bare_read(raw), repeat=3 if args.tiny else 1)
    t_ingest, summary = timed(ingest, repeat=3 if args.tiny else 1)
    print(header())
    print(f"brain-diffuser ({what}): {summary.trials} rows x {summary.voxels['nsd/subj01']} "
          f"voxels, bare read {nbytes / 2**20:.0f} MiB")
    report_ratio("bare read (np.load)", t_bare, t_ingest)
    assert np.isfinite(t_ingest / t_bare)


if __name__ == "__main__":
    main()
