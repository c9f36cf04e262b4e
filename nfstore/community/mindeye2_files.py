"""The MindEye2 bundle's files, written and read exactly as MindEye2's own code does.

Layout (relative to the bundle root, MindEye2's ``data_path``)::

    betas_all_subj0N_fp32_renorm.hdf5   'betas' float32 (n_trials, n_voxels), row = global trial
    coco_images_224_float16.hdf5        'images' float16 (N, 3, 224, 224) in [0, 1], CHW
    wds/subj0N/train/{session-1}.tar    the session's non-test trials
    wds/subj0N/test/0.tar               the "old" test trials
    wds/subj0N/new_test/0.tar           every test trial

Each tar is what ``webdataset.TarWriter`` writes: one member per field named
``sample%09d.<field>.npy`` (fields in sorted order), bytes from ``numpy.lib.format.write_array``,
mode 0o444, user and group ``bigdata``. The four fields are ``behav`` (1, 17),
``past_behav`` (15, 17), ``future_behav`` (15, 17) and ``olds_behav`` (3, 17), float64, with -1
where a value does not apply (:data:`COLUMNS` names the 17 columns).
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from nfstore import _io
from nfstore.errors import MissingFileError, ReaderError

IMAGES = "coco_images_224_float16.hdf5"
IMAGE_SIZE = 224
COLUMNS = ("COCO IDX (73K)", "SUBJECT", "SESSION", "RUN", "TRIAL", "GLOBAL TRIAL", "TIME",
           "ISOLD", "ISCORRECT", "RT", "CHANGEMIND", "ISOLDCURRENT", "ISCORRECTCURRENT",
           "TOTAL1", "TOTAL2", "BUTTON", "IS_SHARED1000")
IMAGE, SUBJECT, SESSION, RUN, TRIAL, ROW = 0, 1, 2, 3, 4, 5
SHARED = 16
N_CONTEXT = 15  # rows of past_behav and future_behav
N_OLDS = 3  # rows of olds_behav
FIELDS = ("behav.npy", "future_behav.npy", "olds_behav.npy", "past_behav.npy")  # sorted
NSD_SESSIONS = (40, 40, 32, 30, 40, 32, 40, 30)  # MindEye2's nsessions_allsubj
RECENT_SESSIONS = 3  # sessions released in 2023, left out of the old test set
TEST_TARS = ("new_test", "test")  # new_test first: its rows win where both hold a trial
# uint8 value -> float16 value / 255, as float32 division then rounding to float16 gives it
_FLOAT16_OF_UINT8 = (np.arange(256, dtype=np.float32) / 255.0).astype(np.float16)


def betas_name(subject_no: int) -> str:
    """``betas_all_subj0N_fp32_renorm.hdf5``."""
    return f"betas_all_subj{subject_no:02d}_fp32_renorm.hdf5"


def wds_dir(subject_no: int) -> Path:
    """``wds/subj0N`` (relative to the bundle root)."""
    return Path("wds") / f"subj{subject_no:02d}"


def behav_matrix(n: int, columns: dict[int, np.ndarray]) -> np.ndarray:
    """The (n, 17) float64 behav rows, -1 where ``columns`` (column -> values (n,)) has none."""
    out = np.full((n, len(COLUMNS)), -1.0)
    for col, values in columns.items():
        v = np.asarray(values, dtype=np.float64)
        out[:, col] = np.where(np.isnan(v), -1.0, v)
    return out


def context_arrays(behav: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``past_behav``, ``future_behav`` and ``olds_behav`` of every trial.

    Parameters
    ----------
    behav : float64 array of shape (n, 17)
        Every trial of the subject in chronological order.

    Returns
    -------
    past, future : float64 arrays of shape (n, 15, 17)
        Row j-1: the trial j places earlier (later) in the same session; -1 beyond it.
    olds : float64 array of shape (n, 3, 17)
        The other trials of the same image (column 0), chronological, packed from row 0.
    """
    n = behav.shape[0]
    session = behav[:, SESSION]
    past = np.full((n, N_CONTEXT, behav.shape[1]), -1.0)
    future = np.full_like(past, -1.0)
    rows = np.arange(n)
    for j in range(1, N_CONTEXT + 1):
        for out, other in ((past, rows - j), (future, rows + j)):
            ok = (other >= 0) & (other < n)
            ok[ok] = session[other[ok]] == session[ok]
            out[ok, j - 1] = behav[other[ok]]
    olds = np.full((n, N_OLDS, behav.shape[1]), -1.0)
    order = np.argsort(behav[:, IMAGE], kind="stable")
    bounds = np.flatnonzero(np.diff(behav[order, IMAGE])) + 1
    for group in np.split(order, bounds):
        for t in group:
            others = group[group != t][:N_OLDS]
            olds[t, : others.size] = behav[others]
    return past, future, olds


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def write_tar(path: Path, first_key: int, arrays: tuple[np.ndarray, ...]) -> int:
    """Write one webdataset tar of samples ``sample%09d`` numbered from ``first_key``.

    Parameters
    ----------
    arrays : (behav (n, 17), past (n, 15, 17), future (n, 15, 17), olds (n, 3, 17))

    Returns
    -------
    next_key : int
    """
    behav, past, future, olds = arrays
    fields = {"behav.npy": behav[:, None, :], "future_behav.npy": future,
              "olds_behav.npy": olds, "past_behav.npy": past}
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for t in range(behav.shape[0]):
            key = f"sample{first_key + t:09d}"
            for field in FIELDS:  # TarWriter writes the fields in sorted order
                data = _npy_bytes(fields[field][t])
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size, info.mtime, info.mode = len(data), now, 0o444
                info.uname = info.gname = "bigdata"
                tar.addfile(info, io.BytesIO(data))
    return first_key + behav.shape[0]


def _samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, field -> bytes) of each sample of a tar, grouped as webdataset groups them."""
    key, fields, seen = None, {}, set()
    with _io.reading(path, "webdataset tar"), tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            base, _, field = name.partition(".")
            if base != key:
                if key is not None:
                    yield key, fields
                if base in seen:
                    raise ReaderError(f"{path}: expected the members of a sample next to each "
                                      f"other; found {base} split by other samples")
                key, fields = base, {}
                seen.add(base)
            if field == "behav.npy":
                fields[field] = tar.extractfile(member).read()  # type: ignore[union-attr]
            else:
                fields[field] = b""  # present; only behav is read
    if key is not None:
        yield key, fields


def read_behav(path: Path) -> np.ndarray:
    """The ``behav`` rows of a tar, (n_samples, 17) float64, after checking that every sample
    has the four fields MindEye2 reads (``to_tuple`` raises on a missing one)."""
    _io.require_file(path, "a webdataset tar of MindEye2 behav arrays")
    rows = []
    for key, fields in _samples(path):
        missing = [f for f in FIELDS if f not in fields]
        if missing:
            raise ReaderError(f"{path}: expected fields {list(FIELDS)} in every sample; "
                              f"{key} lacks {missing}")
        with _io.reading(path, f"the .npy member {key}.behav.npy"):
            a = np.load(io.BytesIO(fields["behav.npy"]), allow_pickle=False)
        if a.shape != (1, len(COLUMNS)) or a.dtype.kind not in "fiu":
            raise ReaderError(f"{path}: expected {key}.behav.npy of shape (1, 17) numbers; "
                              f"found {a.shape} {a.dtype}")
        rows.append(a[0])
    return np.array(rows, dtype=np.float64).reshape(-1, len(COLUMNS))


def subject_tars(root: Path, subject_no: int) -> list[Path]:
    """Every tar of a subject: ``train/*.tar`` (by number), then ``new_test/0.tar`` and
    ``test/0.tar`` where present."""
    base = root / wds_dir(subject_no)
    train = sorted((base / "train").glob("*.tar"),
                   key=lambda p: (0, int(p.stem)) if p.stem.isdigit() else (1, p.stem))
    tests = [base / kind / "0.tar" for kind in TEST_TARS if (base / kind / "0.tar").is_file()]
    if not train and not tests:
        raise MissingFileError(f"{base}: missing webdataset tars; expected train/0.tar ... and "
                               f"new_test/0.tar")
    return train + tests


def write_betas(path: Path, shape: tuple[int, int],
                blocks: Iterable[tuple[int, np.ndarray]]) -> None:
    """Write ``betas`` float32 of ``shape`` (contiguous, as the released files), block by block
    (``(first row, float32 (n, V))``)."""
    import h5py

    with h5py.File(path, "w") as f:
        d = f.create_dataset("betas", shape=shape, dtype=np.float32)
        for start, x in blocks:
            d[start:start + x.shape[0]] = x


def to_float16_chw(pixels: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 (H, W, 3) -> float16 (3, size, size) in [0, 1] (PIL bicubic resize)."""
    from PIL import Image

    pixels = np.asarray(pixels, np.uint8)
    if pixels.shape[:2] != (size, size):
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BICUBIC))
    return _FLOAT16_OF_UINT8[pixels].transpose(2, 0, 1)


def write_images(path: Path, n_rows: int, rows: np.ndarray,
                 pixels: Iterable[np.ndarray]) -> None:
    """Write ``images`` float16 (n_rows, 3, 224, 224), one image per chunk, only ``rows``
    (increasing) filled: the others hold the fill value 0 and take no space.

    Parameters
    ----------
    rows : int array of shape (n,)
    pixels : iterable of uint8 (H, W, 3), one per row of ``rows`` in the same order
    """
    import h5py

    with h5py.File(path, "w") as f:
        d = f.create_dataset("images", shape=(n_rows, 3, IMAGE_SIZE, IMAGE_SIZE),
                             dtype=np.float16, chunks=(1, 3, IMAGE_SIZE, IMAGE_SIZE),
                             fillvalue=0)
        for row, px in zip(rows.tolist(), pixels):
            d[row] = to_float16_chw(px)


def image_count(path: Path) -> int:
    """Number of rows of ``images`` after checking its shape (N, 3, H, W) and float dtype."""
    import h5py

    _io.require_file(path, "the MindEye2 images (coco_images_224_float16.hdf5)")
    with _io.reading(path, "HDF5"), h5py.File(path, "r") as f:
        if "images" not in f:
            raise ReaderError(f"{path}: expected dataset 'images'; found {sorted(f.keys())}")
        d = f["images"]
        if d.ndim != 4 or d.shape[1] != 3 or d.dtype.kind != "f":
            raise ReaderError(f"{path}: expected images of shape (N, 3, H, W) float16; "
                              f"found {d.shape} {d.dtype}")
        return int(d.shape[0])


def write_tars(base: Path, behav: np.ndarray, old_test: np.ndarray) -> dict[str, int]:
    """Write a subject's tars under ``base`` (``wds/subj0N``).

    Parameters
    ----------
    behav : float64 array of shape (n, 17)
        Every trial in chronological order; column 16 == 1 marks test trials.
    old_test : bool array of shape (n,)
        Test trials that also go to ``test/0.tar`` (every test trial goes to
        ``new_test/0.tar``).

    Returns
    -------
    counts : samples per split (``train``, ``test``, ``new_test``)

    ``train/{s-1}.tar`` is written for every session s from 1 to the last (empty when the
    session has no train trial), since MindEye2 opens ``{0..num_sessions-1}.tar``; sample keys
    count on across the train tars, and from 0 in each test tar.
    """
    arrays = (behav, *context_arrays(behav))
    test = behav[:, SHARED] == 1
    session = behav[:, SESSION].astype(np.int64)
    key = 0
    for s in range(1, int(session.max(initial=0)) + 1):
        pick = ~test & (session == s)
        key = write_tar(base / "train" / f"{s - 1}.tar", key, tuple(a[pick] for a in arrays))
    write_tar(base / "new_test" / "0.tar", 0, tuple(a[test] for a in arrays))
    write_tar(base / "test" / "0.tar", 0, tuple(a[test & old_test] for a in arrays))
    return {"train": int((~test).sum()), "test": int((test & old_test).sum()),
            "new_test": int(test.sum())}
