"""Real inputs nobody here wrote: Debian packages' photographs and NIfTI files, scikit-image's
bundled images, nibabel's, scipy's and h5py's test files.

Debian packages are fetched with ``apt-get download`` (Debian's registry is the one network
this project's machines reach) and unpacked with ``dpkg-deb -x`` into a cache folder
(``NF_TEST_CACHE``, default ``~/.cache/neurofusion-tests``), once per machine. A test that needs
one fails when ``apt-get`` cannot fetch it (``make test`` runs where Debian's tools are).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PHOTO_PACKAGES = ("mate-backgrounds", "lomiri-wallpapers")
NIFTI_PACKAGE = "mricron-data"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def cache_dir() -> Path:
    root = os.environ.get("NF_TEST_CACHE") or Path.home() / ".cache" / "neurofusion-tests"
    path = Path(root) / "debian"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _unavailable(reason: str) -> None:
    pytest.fail(reason)  # never a skip: a test without its real input has tested nothing


def debian_package(name: str) -> Path:
    """Folder holding the unpacked files of Debian package ``name`` (fetched once, cached).

    Returns
    -------
    Path
        The unpacked root (``<root>/usr/share/...``).
    """
    root = cache_dir()
    out = root / name
    if (out / ".complete").exists():
        return out
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        _unavailable(f"Debian package {name}: apt-get/dpkg-deb not available")
    work = root / f".{name}.download"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    cmd = ["apt-get", "download", name]
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if done.returncode != 0:  # the package lists may be missing on a fresh machine
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    debs = sorted(work.glob("*.deb"))
    if done.returncode != 0 or not debs:
        _unavailable(f"apt-get download {name} failed: {done.stderr.strip()[-300:]}")
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(out)], check=True)
    (out / ".complete").write_text(debs[0].name)
    shutil.rmtree(work, ignore_errors=True)
    return out


def debian_photos() -> list[Path]:
    """Every photograph / wallpaper file (JPEG, PNG) of :data:`PHOTO_PACKAGES`, sorted."""
    files: list[Path] = []
    for name in PHOTO_PACKAGES:
        root = debian_package(name)
        files += [p for p in sorted(root.rglob("*")) if p.suffix.lower() in PHOTO_SUFFIXES]
    return files


def mricron_templates() -> list[Path]:
    """The real NIfTI volumes (``.nii.gz``) shipped by Debian's ``mricron-data``, sorted."""
    root = debian_package(NIFTI_PACKAGE)
    return sorted((root / "usr" / "share" / "mricron" / "templates").glob("*.nii.gz"))


def skimage_photos() -> dict[str, object]:
    """scikit-image's bundled real photographs as uint8 arrays, by name (RGB or gray)."""
    from skimage import data

    names = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "camera",
             "cat", "immunohistochemistry", "hubble_deep_field", "retina", "page", "moon",
             "coins", "text", "brick", "grass", "gravel", "colorwheel")
    out: dict[str, object] = {}
    for n in names:
        fn = getattr(data, n, None)
        if fn is None:
            continue
        try:
            out[n] = fn()
        except Exception:  # a bundled image that needs pooch (a download) is left out
            continue
    return out


def nibabel_test_files() -> Path:
    """nibabel's bundled test data folder (real headers: NIfTI-1, NIfTI-2, big-endian, ...)."""
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data"
