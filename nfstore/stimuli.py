"""Stimulus tables and lazy access to stimulus pixels in the raw dataset files."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import dask.array as da
import numpy as np

from nfstore import copies, identity
from nfstore.errors import MissingFileError, QueryError, ReaderError
from nfstore.readers.base import StimulusTable


def read_brick_rows(rows: np.ndarray, path: str, key: str | None = None) -> np.ndarray:
    """Pixels (n, H, W, 3) uint8 of ``rows`` of an image brick, in the given order
    (:mod:`nfstore.bricks`; ``key`` is ignored: the format is found from the file)."""
    from nfstore.bricks import read_brick_rows as read

    return read(rows, path)


def brick_shape(path: Path, key: str | None = None) -> tuple[int, ...]:
    """(N, H, W, 3) of an image brick (:mod:`nfstore.bricks`)."""
    from nfstore.bricks import brick_shape as shape

    return shape(path)


def _read_positions(pos: np.ndarray, paths: tuple[str, ...], index: np.ndarray,
                    size: tuple[int, int] | None) -> np.ndarray:
    """Pixels (n, H, W, 3) uint8 of stimuli ``pos`` (rows of ``paths`` / ``index``): brick rows
    read per brick, image files one by one (alpha composited, :mod:`nfstore.imagefile`), each
    resized to ``size`` when it has another size."""
    from PIL import Image

    from nfstore.bricks import Brick
    from nfstore.imagefile import open_rgb

    out: list[np.ndarray | None] = [None] * len(pos)
    by_brick: dict[str, list[int]] = {}
    for k, p in enumerate(pos.tolist()):
        if index[p] >= 0:
            by_brick.setdefault(paths[p], []).append(k)
        else:
            out[k] = np.asarray(open_rgb(paths[p]))
    for path, ks in by_brick.items():
        with Brick(path) as brick:
            for k, px in zip(ks, brick.rows(index[pos[ks]])):
                out[k] = px
    if size is not None:
        for k, px in enumerate(out):
            assert px is not None
            if px.shape[:2] != tuple(size):
                out[k] = np.asarray(Image.fromarray(px).resize(
                    (size[1], size[0]), Image.Resampling.BICUBIC))
    return np.stack(out)  # type: ignore[arg-type]


def _image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file, or the one-line error of a file PIL cannot read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ReaderError(f"{path}: expected an image PIL can decode; found "
                          f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"
                          ) from None


def lazy_pixels(files: np.ndarray, index: np.ndarray, raw_root: Path,
                size: tuple[int, int] | None = None, chunk: int = 64) -> da.Array:
    """Dask array (n, H, W, 3) uint8 of stimulus pixels; nothing is read until computed.

    Parameters
    ----------
    files : array of str, shape (n,)
        Files relative to ``raw_root`` (or absolute: rows another source of the dataset wrote).
    index : int array of shape (n,)
        Row in an image brick (:mod:`nfstore.bricks`), or -1 for one-image files (JPEG, PNG).
    size : (height, width), optional
        Resize one-image files to this size; required when their sizes differ. Rows of
        bricks of one size keep that size; bricks of several sizes (or bricks and files) are
        all resized to ``size``.
    """
    n = files.size
    if n == 0:
        raise QueryError("images: expected at least one stimulus; got none")
    if (files == "").any():
        raise QueryError(f"images: expected stimuli with pixels; found "
                         f"{int((files == '').sum())} without (their source holds no image "
                         f"of them, e.g. GOD imagery trials, which name only a category)")
    paths = tuple(str(raw_root / f) for f in files.tolist())
    index = np.asarray(index, dtype=np.int64)
    bricks = sorted({paths[i] for i in np.flatnonzero(index >= 0).tolist()})
    singles = [paths[i] for i in np.flatnonzero(index < 0).tolist()]
    missing = [p for p in singles if not Path(p).is_file()]
    if missing:
        raise MissingFileError(f"{missing[0]}: missing stimulus image ({len(missing)} missing)")
    sizes = {tuple(brick_shape(Path(b))[1:3]) for b in bricks}
    if bricks and not singles and len(sizes) == 1:
        size = sizes.pop()  # rows of one-size bricks keep their size
    elif size is None:
        sizes |= {_image_size(p) for p in singles}
        if len(sizes) > 1:
            raise QueryError(f"images: stimuli have different sizes {sorted(sizes)[:3]}; "
                             f"pass size=(height, width)")
        size = sizes.pop()
    rows = da.from_array(np.arange(n), chunks=chunk)
    read = functools.partial(_read_positions, paths=paths, index=index, size=size)
    return rows.map_blocks(read, dtype=np.uint8,
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

    ids = [str(i) for i in table.stimulus]
    files, index = [str(f) for f in table.file], [int(n) for n in table.index]
    ident = list(identity.identities(table.dataset, ids, table.coco_ids))
    prints = [identity.NO_FINGERPRINT] * len(ids)
    seen = {s: n for n, s in enumerate(ids)}
    if previous.is_dir():
        old = xr.open_zarr(str(previous), consolidated=False, zarr_format=3).load()
        cols = {c: old[c].values.tolist() for c in ("stimulus", "file", "index")}
        cols["file"] = _rebased(cols["file"], old.attrs.get("raw_root"), table.root)
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
                continue
            if i not in table.coco_ids and str(d).startswith("coco/"):
                ident[seen[i]] = d  # another source of the dataset named its COCO id
            if (files[seen[i]], index[seen[i]]) == (f, n) and _current(p, table.dataset):
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


def _rebased(files: list[str], old_root: str | None, root: Path) -> list[str]:
    """Files of a previous table's rows as seen from ``root``: absolute when that table was
    written from another folder (another source of the dataset, e.g. the MindEye2 bundle
    beside the NSD release), so that its rows keep their pixels."""
    if not old_root or Path(old_root).resolve() == Path(root).resolve():
        return files
    return [str(Path(old_root) / f) if f and not Path(f).is_absolute() else f for f in files]


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
