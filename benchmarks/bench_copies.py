"""Copy detection (``nf leakage``'s fingerprints) on real photographs: recall per kind of copy,
precision, and the cost per pool image.

Held-out "test stimuli" are square crops (at a random place along the long side) of real
photos (Debian's mate-backgrounds and lomiri-wallpapers, scikit-image's photos), resized to
425 px as NSD's are. The pool, written as files, holds one planted copy per test stimulus and
kind of copy, plus distractors: the other photos (whole and cropped), illustrations,
face crops (scikit-image's astronaut and its LFW faces), text, blank and flat images. Every
pool file is fingerprinted from its file and matched against the test stimuli in one run, as
``nf embed --pool`` and ``nf leakage`` do.

Run: ``python benchmarks/bench_copies.py [N_TEST]`` (default 16).
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
# families of files that are one design (sizes or colours of one wallpaper): one of each
FAMILIES = ("Elephants", "Ubuntu-Mate", "MATE-Stripes", "lomiri-default", "warty-final")
TEST_PHOTOS = ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird",
               "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower", "Elephants",
               "GreenTraditional", "chelsea", "coffee", "rocket", "Float-into-MATE")
SIDE = 425
KINDS = ("jpeg_q20", "png", "grey", "resize_0.5", "resize_1.5", "brightness_+20%",
         "crop_centre_80-90%", "crop_corner_80-90%", "uncropped_original", "flip",
         "flip_uncropped", "rgba_opaque")


def photos() -> dict[str, Image.Image]:
    """Real photos and illustrations by name (RGB, long side at most 1024 px)."""
    import realdata

    from nfstore.imagefile import open_rgb

    out: dict[str, Image.Image] = {}
    families: set[str] = set()
    for path in realdata.debian_photos():
        fam = next((f for f in FAMILIES if path.name.startswith(f)), path.stem)
        if fam in families or fam == "warty-final" and "lomiri-default" in families:
            continue
        families.add(fam)
        im = open_rgb(path, draft=1024)
        im.thumbnail((1024, 1024), Image.Resampling.LANCZOS)
        out[path.stem] = im
    for name, a in realdata.skimage_photos().items():
        if name == "cat":  # the same photo as chelsea
            continue
        a = np.asarray(a)
        a = a[..., :3] if a.ndim == 3 else a
        if a.dtype != np.uint8:
            a = (255 * (a - a.min()) / max(float(np.ptp(a)), 1e-9)).astype(np.uint8)
        out[name] = Image.fromarray(a).convert("RGB")
    return out


def square_crop(im: Image.Image, t: float) -> Image.Image:
    """The square of side min(W, H) at fraction ``t`` along the long side."""
    s = min(im.size)
    x, y = round((im.width - s) * t), round((im.height - s) * t)
    return im.crop((x, y, x + s, y + s))


def crop(im: Image.Image, scale: float, ax: float, ay: float) -> Image.Image:
    w, h = round(im.width * scale), round(im.height * scale)
    x, y = round(ax * (im.width - w)), round(ay * (im.height - h))
    return im.crop((x, y, x + w, y + h))


def planted(test: Image.Image, original: Image.Image, rng: np.random.Generator
           ) -> dict[str, tuple[Image.Image, str]]:
    """Each kind of copy of one test stimulus: kind -> (image, file format)."""
    near = [rng.uniform(0, 0.1) for _ in range(2)]  # 0-10 % of the slack off the corner
    corner = (abs(rng.integers(0, 2) - near[0]), abs(rng.integers(0, 2) - near[1]))
    short = original.copy()
    short.thumbnail((10**6, 375 * max(original.size) // min(original.size)))
    flip = Image.Transpose.FLIP_LEFT_RIGHT
    return {
        "jpeg_q20": (test, "JPEG20"), "png": (test, "PNG"), "grey": (test.convert("L"), "JPEG"),
        "resize_0.5": (test.resize((SIDE // 2,) * 2, Image.Resampling.BICUBIC), "JPEG"),
        "resize_1.5": (test.resize((SIDE * 3 // 2,) * 2, Image.Resampling.BICUBIC), "JPEG"),
        "brightness_+20%": (ImageEnhance.Brightness(test).enhance(1.2), "JPEG"),
        "crop_centre_80-90%": (crop(test, rng.uniform(0.8, 0.9), 0.5, 0.5), "JPEG"),
        "crop_corner_80-90%": (crop(test, rng.uniform(0.8, 0.9), *corner), "JPEG"),
        "uncropped_original": (short, "JPEG"), "flip": (test.transpose(flip), "JPEG"),
        "flip_uncropped": (short.transpose(flip), "JPEG"),
        "rgba_opaque": (test.convert("RGBA"), "PNG"),
    }


def distractors(pics: dict[str, Image.Image], rng: np.random.Generator) -> list[Image.Image]:
    """Other photos (whole and in crops), illustrations, faces, text, blank and flat images."""
    from skimage import data

    out: list[Image.Image] = []
    for im in pics.values():
        out.append(im)
        for _ in range(5):
            out.append(crop(im, rng.uniform(0.3, 0.7), rng.uniform(0, 1), rng.uniform(0, 1)))
    astro = Image.fromarray(data.astronaut())
    for k in range(20):  # crops around the face at several sizes and places
        s = int(rng.integers(120, 260))
        cx, cy = int(rng.integers(200, 260)), int(rng.integers(90, 140))
        out.append(astro.crop((cx - s // 2, max(0, cy - s // 2), cx + s // 2,
                               max(0, cy - s // 2) + s)))
    faces = data.lfw_subset()
    for k in rng.choice(len(faces), 60, replace=False):
        out.append(Image.fromarray((faces[k] * 255).astype(np.uint8)).resize((100, 100)))
    for value in (0, 128, 255):
        out.append(Image.new("RGB", (300, 300), (value,) * 3))
    for k in range(8):  # flat colours with JPEG noise, plain gradients
        out.append(Image.new("RGB", (320, 240), tuple(int(v) for v in rng.integers(0, 256, 3))))
        ramp = np.linspace(rng.uniform(0, 120), rng.uniform(130, 255), 256)
        g = np.broadcast_to(ramp[:, None] if k % 2 else ramp[None, :], (256, 256))
        out.append(Image.fromarray(g.astype(np.uint8)).convert("RGB"))
    return out


def save(im: Image.Image, path: Path, fmt: str) -> Path:
    if fmt.startswith("JPEG"):
        path = path.with_suffix(".jpg")
        im.save(path, "JPEG", quality=int(fmt[4:] or 90))
    else:
        path = path.with_suffix(".png")
        im.save(path, "PNG")
    return path


def main() -> None:
    from nfstore import copies, identity

    n_test = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    rng = np.random.default_rng(0)
    pics = photos()
    names = [n for n in TEST_PHOTOS if n in pics][:n_test]
    tests = {n: square_crop(pics[n], rng.uniform(0, 1)).resize((SIDE, SIDE),
                                                                Image.Resampling.BICUBIC)
             for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        truth: list[tuple[str, str]] = []  # (test name or "", kind) per pool file
        files: list[str] = []
        for n in names:
            for kind, (im, fmt) in planted(tests[n], pics[n], rng).items():
                files.append(save(im, base / f"{len(files):04d}", fmt).name)
                truth.append((n, kind))
        others = {k: v for k, v in pics.items() if k not in names}
        for im in distractors(others, rng):
            files.append(save(im, base / f"{len(files):04d}", "JPEG").name)
            truth.append(("", "distractor"))
        held = [copies.fingerprint(np.asarray(tests[n]), crops=True) for n in names]
        t0 = time.perf_counter()
        prints = identity.fingerprint_files([(f, -1) for f in files], base, workers=1,
                                            crops=False)
        t_print = time.perf_counter() - t0
    pairs = copies.copy_pairs(held, prints)
    report(names, truth, pairs, t_print, len(files), match_seconds(held))


def match_seconds(held: list[str], n_pool: int = 200_000) -> float:
    """Seconds to match ``held`` against ``n_pool`` pool prints shaped like ImageNet's
    (500 x 375: the whole image and 18 slides; random hashes)."""
    from nfstore import copies

    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, (n_pool, 19), dtype=np.uint64).astype(">u8")
    pool = [f"{copies.PREFIX}{h[:1].tobytes().hex()}:{h[1:].tobytes().hex()}:" for h in hashes]
    t0 = time.perf_counter()
    copies.copy_pairs(held, pool)
    return time.perf_counter() - t0


def report(names: list[str], truth: list[tuple[str, str]], pairs: list[tuple[int, int]],
           t_print: float, n_pool: int, t_match: float, n_match: int = 200_000) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    print(f"bench_copies  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  commit {commit}  "
          f"{platform.processor() or platform.machine()}, {platform.python_version()}")
    print(f"{len(names)} test stimuli (425 px square crops of real photos); pool of {n_pool} "
          f"files ({sum(t[0] != '' for t in truth)} planted copies, "
          f"{sum(t[0] == '' for t in truth)} distractors)")
    found = {(names[i], j) for i, j in pairs}
    correct = sum(1 for name, j in found if truth[j][0] == name)
    wrong = [(name, j, truth[j]) for name, j in found if truth[j][0] != name]
    print(f"{'kind of copy':24s} recall")
    for kind in KINDS:
        rows = [j for j, t in enumerate(truth) if t[1] == kind]
        hit = sum(1 for j in rows if (truth[j][0], j) in found)
        print(f"{kind:24s} {hit / len(rows):.3f} ({hit}/{len(rows)})")
    planted = sum(1 for t in truth if t[0])
    print(f"{'all':24s} {correct / planted:.3f} ({correct}/{planted})")
    print(f"precision {correct / max(len(found), 1):.3f} ({correct} of {len(found)} reported "
          f"pairs; wrong: {wrong[:5]})")
    per_print = 1000 * t_print / n_pool
    per_match = 1000 * t_match / n_match / len(names) * 3000
    print(f"cost per pool image, one core: fingerprint {per_print:.2f} ms (decode + hashes); "
          f"match {per_match:.3f} ms against 3000 test stimuli (timed: {len(names)} test "
          f"stimuli x {n_match} ImageNet-shaped pool prints in {t_match:.1f} s)")
    print(f"ImageNet (1.2 M pool images) against 3000 test stimuli, one core: fingerprints "
          f"~{per_print * 1.2e6 / 3.6e6:.1f} h, matching ~{per_match * 1.2e6 / 6e4:.0f} min")


if __name__ == "__main__":
    main()
