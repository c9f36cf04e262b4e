"""Stimulus tables and lazy access to stimulus pixels in the raw dataset files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import dask.array as da
import numpy as np

from nfstore import copies, identity
from nfstore.errors import MissingFileError, QueryError, ReaderError
from nfstore.readers.base import StimulusTable


def read_brick_rows(rows: np.ndarray, path: str, key: str) -> np.ndarray:
    """Read rows of an (N, H, W, 3) HDF5 image brick in the given order."""
    import h5py

    order = np.argsort(rows, kind="stable")
    uniq, inverse = np.unique(rows[order], return_inverse=True)
    with h5py.File(path, "r") as f:
        block = f[key][uniq.tolist()]  # h5py needs increasing indices
    out = np.empty((rows.size, *block.shape[1:]), block.dtype)
    out[order] = block[inverse]
    return out


def _read_image_files(rows: np.ndarray, paths: tuple[str, ...], size: tuple[int, int] | None
                      ) -> np.ndarray:
    """Pixels (n, H, W, 3) uint8 of image files (alpha composited, :mod:`nfstore.imagefile`)."""
    from PIL import Image

    from nfstore.imagefile import open_rgb

    imgs = []
    for r in rows:
        im = open_rgb(paths[int(r)])
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
        imgs.append(np.asarray(im))
    return np.stack(imgs)


def brick_shape(path: Path, key: str = "imgBrick") -> tuple[int, ...]:
    import h5py

    if not path.is_file():
        raise MissingFileError(f"{path}: missing stimulus file; the store refers to it "
                               f"(was the raw dataset moved?)")
    with h5py.File(path, "r") as f:
        return tuple(f[key].shape)


def lazy_pixels(files: np.ndarray, index: np.ndarray, raw_root: Path,
                size: tuple[int, int] | None = None, chunk: int = 64) -> da.Array:
    """Dask array (n, H, W, 3) uint8 of stimulus pixels; nothing is read until computed.

    Parameters
    ----------
    files : array of str, shape (n,)
        Files relative to ``raw_root``.
    index : int array of shape (n,)
        Row in an HDF5 image brick, or -1 for one-image files (JPEG, PNG).
    size : (height, width), optional
        Resize one-image files to this size; required when their sizes differ.
    """
    n = files.size
    if n == 0:
        raise QueryError("images: expected at least one stimulus; got none")
    if (files == "").any():
        raise QueryError(f"images: {int((files == '').sum())} stimuli have no image (GOD imagery "
                         f"trials name only a category)")
    bricks = set(files[index >= 0].tolist())
    if bricks and (index < 0).any() or len(bricks) > 1:
        raise QueryError("images: expected stimuli of one dataset per call; got a mix")
    if bricks:
        path = raw_root / next(iter(bricks))
        shape = brick_shape(path)
        rows = da.from_array(index.astype(np.int64), chunks=chunk)
        return rows.map_blocks(read_brick_rows, str(path), "imgBrick", dtype=np.uint8,
                               new_axis=[1, 2, 3], chunks=(rows.chunks[0], *shape[1:]))
    paths = tuple(str(raw_root / f) for f in files.tolist())
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise MissingFileError(f"{missing[0]}: missing stimulus image ({len(missing)} missing)")
    if size is None:
        from PIL import Image

        sizes = set()
        for p in paths:
            try:
                with Image.open(p) as im:
                    sizes.add((im.size[1], im.size[0]))
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                raise ReaderError(f"{p}: expected an image PIL can decode; found "
                                  f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"
                                  ) from None
        if len(sizes) > 1:
            raise QueryError(f"images: stimuli have different sizes {sorted(sizes)[:3]}; "
                             f"pass size=(height, width)")
        size = sizes.pop()
    rows = da.from_array(np.arange(n), chunks=chunk)
    return rows.map_blocks(_read_image_files, paths, size, dtype=np.uint8,
                           new_axis=[1, 2, 3], chunks=(rows.chunks[0], *size, 3))


def _with_crops(table: str) -> bool:
    """Whether prints of ``table`` hash crop windows: datasets' stimuli may be held out."""
    from nfstore.names import dataset_names

    return table in dataset_names()


def _current(print_: str, table: str) -> bool:
    """Whether a stored print can be kept: made by this version, with the windows its table
    needs (legacy prints are recomputed)."""
    return copies.is_current(print_) and (not _with_crops(table) or copies.has_crops(print_))


def fingerprints_to_compute(store: str | os.PathLike[str], table: StimulusTable, ids: Sequence[str],
                            errors: list[str] | None = None) -> dict[str, str]:
    """Fingerprints of the stimuli ``ids`` of ``table`` that the store's current table lacks
    for the same file and row (or holds from an earlier version): stimulus id -> fingerprint
    (so they can be computed while something else runs, and handed to
    :func:`commit_stimulus_table`). ``errors`` receives one line per unreadable image file."""
    import xarray as xr

    from nfstore.names import STIMULI_GROUP

    have: dict[str, tuple[str, int, str]] = {}
    previous = Path(store) / STIMULI_GROUP / table.dataset
    if previous.is_dir():
        old = xr.open_zarr(str(previous), consolidated=False, zarr_format=3).load()
        if "fingerprint" in old:
            have = {i: (f, int(n), p) for i, f, n, p in zip(
                old["stimulus"].values.tolist(), old["file"].values.tolist(),
                old["index"].values.tolist(), old["fingerprint"].values.tolist())}
    want = set(ids)
    todo = [(i, str(f), int(n)) for i, f, n in zip(table.stimulus, table.file, table.index)
            if i in want and f and not (i in have and have[i][:2] == (f, int(n))
                                        and _current(have[i][2], table.dataset))]
    prints = identity.fingerprint_files([(f, n) for _, f, n in todo], Path(table.root),
                                        crops=_with_crops(table.dataset), errors=errors)
    return {i: p for (i, _, _), p in zip(todo, prints) if p}


def commit_stimulus_table(store: str | os.PathLike[str], table: StimulusTable,
                          referenced: Sequence[str] = (),
                          fingerprint_ids: Sequence[str] | None = None,
                          known: dict[str, str] | None = None,
                          errors: list[str] | None = None) -> None:
    """Replace ``/stimuli/<table.dataset>`` (staged, then committed, in a transaction on
    ``store``: joins the caller's, e.g. the ingest's).

    Rows: ``table``, the rows of the previous table it does not list, and the ``referenced``
    ids found in neither (no pixels: empty ``file``). Every row gets its ``identity`` and a
    ``fingerprint`` (:mod:`nfstore.copies`): kept from the previous table for the same file
    and row (unless made by an earlier version), computed for the stimuli in
    ``fingerprint_ids`` (default: every row with pixels), empty otherwise. Unreadable image
    files get none; ``errors`` receives one line per such file.
    """
    from nfstore.names import STIMULI_GROUP
    from nfstore.transaction import transaction

    key = f"{STIMULI_GROUP}/{table.dataset}"
    with transaction(store, f"nf ingest {table.dataset}") as tx:
        previous = tx.path(key)
        rows = _table_rows(previous, table, referenced, known)
        ids, files, index, prints = rows["stimulus"], rows["file"], rows["index"], rows["print"]
        want = set(ids if fingerprint_ids is None else fingerprint_ids)
        todo = [n for n, i in enumerate(ids) if i in want and files[n] and not prints[n]]
        for n, p in zip(todo, identity.fingerprint_files(
                [(files[n], int(index[n])) for n in todo], Path(table.root),
                crops=_with_crops(table.dataset), errors=errors)):
            prints[n] = p
        tx.discard(key)  # a table is written whole: nothing to resume
        staged, _, _ = tx.stage(key, create=False)
        _write_table(staged, table, rows)
        from nfstore.pixels import PIXELS

        if (previous / PIXELS).is_dir():  # the pixel cache moves with its table (rows by id)
            os.rename(previous / PIXELS, staged / PIXELS)
        tx.commit(key)


def _table_rows(previous: Path, table: StimulusTable, referenced: Sequence[str],
                known: dict[str, str] | None) -> dict[str, list]:
    """The columns of the new table (``stimulus``, ``file``, ``index``, ``identity``,
    ``print``: lists of one length), merged with the ``previous`` table's group if any (see
    :func:`commit_stimulus_table`); fingerprints not known yet are empty."""
    import xarray as xr

    ids = list(table.stimulus)
    files, index = list(table.file), list(table.index)
    ident = list(identity.identities(table.dataset, ids, table.coco_ids))
    prints = [identity.NO_FINGERPRINT] * len(ids)
    seen = {s: n for n, s in enumerate(ids)}
    if previous.is_dir():
        old = xr.open_zarr(str(previous), consolidated=False, zarr_format=3).load()
        cols = {c: old[c].values.tolist() for c in ("stimulus", "file", "index")}
        old_ident = old["identity"].values.tolist() if "identity" in old else [
            identity.identity_from_name(table.dataset, i) for i in cols["stimulus"]]
        old_print = old["fingerprint"].values.tolist() if "fingerprint" in old else [
            identity.NO_FINGERPRINT] * len(cols["stimulus"])
        for i, f, n, d, p in zip(cols["stimulus"], cols["file"], cols["index"], old_ident,
                                 old_print):
            if i not in seen:
                seen[i] = len(ids)
                ids.append(i), files.append(f), index.append(n), ident.append(d)
                prints.append(p if _current(p, table.dataset) else identity.NO_FINGERPRINT)
            elif (files[seen[i]], index[seen[i]]) == (f, n) and _current(p, table.dataset):
                prints[seen[i]] = p  # same pixels as before
    for i in referenced:
        if i not in seen:
            seen[i] = len(ids)
            ids.append(i), files.append(""), index.append(-1), prints.append("")
            ident.append(identity.identity_from_name(table.dataset, i))
    for n, i in enumerate(ids):  # computed beforehand (:func:`fingerprints_to_compute`)
        if known and i in known and not prints[n]:
            prints[n] = known[i]
    return {"stimulus": ids, "file": files, "index": index, "identity": ident,
            "print": prints}


def _write_table(staged: Path, table: StimulusTable, rows: dict[str, list]) -> None:
    """Write the table's columns (stimulus) and attributes as a zarr group at ``staged``."""
    import xarray as xr
    import zarr

    from nfstore._version import __version__

    ds = xr.Dataset(coords={
        "stimulus": ("stimulus", np.array(rows["stimulus"], dtype=object)),
        "file": ("stimulus", np.array(rows["file"], dtype=object)),
        "index": ("stimulus", np.array(rows["index"], dtype=np.int64)),
        "identity": ("stimulus", np.array(rows["identity"], dtype=object)),
        "fingerprint": ("stimulus", np.array(rows["print"], dtype=object))})
    ds.to_zarr(str(staged), mode="w", zarr_format=3, consolidated=False)
    zarr.open_group(str(staged), mode="r+").attrs.update(
        {"dataset": table.dataset, "raw_root": str(table.root), "nf_version": __version__,
         "fingerprint": f"nfstore.copies {copies.PREFIX} window hashes (63-bit DCT signs); "
                        f"copies within {copies.MAX_DISTANCE} bits"})
