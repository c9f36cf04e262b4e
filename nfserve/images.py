"""PNG bytes for ``nf serve``: stimuli, reconstruction samples, ROI maps (cached in memory)."""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Any

import numpy as np

from nfserve.data import BadRequest, NotFound, View
from nfstore.names import RECON_GROUP

MAX_SIZE = 1024


def png(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def _size(size: int | None) -> int | None:
    if size is not None and not 16 <= size <= MAX_SIZE:
        raise BadRequest(f"size: expected 16..{MAX_SIZE} pixels; got {size}")
    return size


_OPENED: dict[str, Any] = {}  # location -> the Store the site opened (with its options)


def register(store: Any) -> None:
    """Remember the site's opened store, so the cached readers below reach it by location
    (a URL store keeps its storage options)."""
    _OPENED[store.location] = store


def opened(path: str) -> Any:
    """The opened store at ``path``: the one :func:`register` kept, else opened here once
    (one opened Store per served location, not one per image)."""
    if path not in _OPENED:
        import nfstore

        _OPENED[path] = nfstore.open_store(path)
    return _OPENED[path]


@lru_cache(maxsize=2048)
def _stimulus_png(path: str, sid: str, size: int | None) -> bytes:
    from PIL import Image

    img = np.asarray(opened(path).images([sid]).values[0])
    if size is not None:
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))
    return png(img)


def stimulus_png(view: View, sid: str, size: int | None) -> bytes:
    view.stimulus(sid)  # validated: known id
    return _stimulus_png(view.path, sid, _size(size))


@lru_cache(maxsize=4096)
def _recon_png(path: str, name: str, subject: str, row: int, sample: int, stamp: str
               ) -> bytes:

    arr = opened(path).group(f"{RECON_GROUP}/{name}/{subject}")["images"]
    if not (0 <= row < arr.shape[0] and 0 <= sample < arr.shape[1]):
        raise NotFound(f"row {row} / sample {sample} is not in set {name!r} ({subject}): it has "
                       f"{arr.shape[0]} rows and {arr.shape[1]} samples")
    return png(arr[row, sample])


def recon_png(view: View, name: str, subject: str, row: int, sample: int) -> bytes:
    view.recon(name, subject)
    stamp = view.store.stamp(f"{RECON_GROUP}/{name}/{subject}")
    return _recon_png(view.path, name, subject, row, sample, stamp)


@lru_cache(maxsize=64)
def _roi_png(path: str, subject: str, roi: str) -> bytes:
    """Three orthogonal slices through the ROI's centre in the subject's voxel grid, with the
    subject's left/right marked (the grid's first axis runs right -> left for NSD's
    func1pt8mm, as nibabel's affine says: the sign of affine[0, 0])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = opened(path)
    ds = st.dataset(subject)
    attrs = st.attrs(subject)
    shape = tuple(int(v) for v in attrs["volume_shape"])[:3]
    vol = np.zeros(shape, np.uint8)
    ijk = [ds[c].values for c in ("voxel_i", "voxel_j", "voxel_k")]
    vol[tuple(ijk)] = 1
    mask = ds["roi_mask"].sel(roi=roi).values
    vol[tuple(c[mask] for c in ijk)] = 2
    centre = [int(np.median(c[mask])) if mask.any() else s // 2 for c, s in zip(ijk, shape)]
    affine = np.asarray(attrs.get("affine") or np.eye(4))
    x_right = affine[0, 0] > 0  # +i goes towards the subject's right
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    cuts = ((vol[centre[0], :, :], "sagittal", None),
            (vol[:, centre[1], :], "coronal", x_right),
            (vol[:, :, centre[2]], "axial", x_right))
    for ax, (sl, title, right) in zip(axes, cuts):
        ax.imshow(sl.T, origin="lower", cmap="viridis", vmin=0, vmax=2, interpolation="nearest")
        ax.set_title(f"{title} ({roi})", fontsize=9)
        ax.set_axis_off()
        if right is not None:  # the image's left edge is i = 0
            ax.text(0.02, 0.02, "R" if not right else "L", transform=ax.transAxes, color="w")
            ax.text(0.95, 0.02, "L" if not right else "R", transform=ax.transAxes, color="w")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def roi_png(view: View, key: str, roi: str) -> bytes:
    if roi not in view.store.rois(key):
        raise NotFound(f"ROI {roi[:60]!r} is not defined for {key}")
    if not view.store.attrs(key).get("volume_shape"):
        raise NotFound(f"{key} has no voxel grid to draw")
    return _roi_png(view.path, key, roi)
