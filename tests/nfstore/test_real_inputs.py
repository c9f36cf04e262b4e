"""Real NIfTI files (nibabel's test data, Debian's mricron templates) read by the ingest's fast
path exactly as nibabel reads them, and NSD trees whose files are NIfTI-2."""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import nfstore
from nfstore import _io
from tests.realdata import mricron_templates, nibabel_test_files

NSD_SUBJ01 = ("nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR",
              "nsddata/ppdata/subj01/func1pt8mm/roi")


def _gz(name: str, out: Path) -> Path:
    """An uncompressed real NIfTI file of nibabel's test data, gzipped byte for byte."""
    dst = out / f"{name}.gz"
    dst.write_bytes(gzip.compress((nibabel_test_files() / name).read_bytes()))
    return dst


def _real(name: str) -> Callable[[Path], Path]:
    return lambda out: nibabel_test_files() / name


def _scaled(name: str, slope: float, inter: float) -> Callable[[Path], Path]:
    """A real file byte for byte, but for scl_slope / scl_inter set in its header."""
    def build(out: Path) -> Path:
        src = nibabel_test_files() / name
        raw = src.read_bytes()
        raw = gzip.decompress(raw) if name.endswith(".gz") else raw
        header = type(nib.load(src).header).from_fileobj(io.BytesIO(raw))
        header["scl_slope"], header["scl_inter"] = slope, inter
        block = header.binaryblock
        dst = out / f"scaled-{name.split('.')[0]}.nii.gz"
        dst.write_bytes(gzip.compress(block + raw[len(block):]))
        return dst
    return build


def _big_endian_nifti2(out: Path) -> Path:
    """The real NIfTI-2 example, big-endian float32 (header and data)."""
    img = nib.load(nibabel_test_files() / "example_nifti2.nii.gz")
    header = img.header.as_byteswapped(">")
    header.set_data_dtype(">f4")
    data = np.asanyarray(img.dataobj).astype(np.float32) / 7
    dst = out / "big-endian-nifti2.nii.gz"
    nib.save(nib.Nifti2Image(data, img.affine, header), dst)
    return dst


FILES: dict[str, Callable[[Path], Path]] = {
    "example_nifti2": _real("example_nifti2.nii.gz"),
    "example4d": _real("example4d.nii.gz"),
    "standard": _real("standard.nii.gz"),
    "anatomical-big-endian-int16": lambda out: _gz("anatomical.nii", out),
    "reoriented-big-endian-float32": lambda out: _gz("reoriented_anat_moved.nii", out),
    "functional": lambda out: _gz("functional.nii", out),
    "nifti2-scaled": _scaled("example_nifti2.nii.gz", 0.25, -3.0),
    "nifti1-big-endian-scaled": _scaled("anatomical.nii", 2.0, 10.0),
    "nifti2-big-endian-float": _big_endian_nifti2,
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_fast_path_reads_as_nibabel(name: str, tmp_path: Path) -> None:
    pytest.importorskip("isal")  # the fast path exists only with ISA-L
    path = FILES[name](tmp_path)
    ref = nib.load(path)
    fast = _io._inflated(path, ref)
    assert fast is not ref and type(fast) is type(ref)  # the ISA-L path was taken
    want = np.asanyarray(ref.dataobj)
    got = _io.nifti_data(path)
    assert got.dtype == want.dtype and got.shape == want.shape
    if "scaled" in name:  # slope and intercept applied, as nibabel does
        assert got.dtype.kind == "f" and (ref.dataobj.slope, ref.dataobj.inter) != (1, 0)
        assert (fast.dataobj.slope, fast.dataobj.inter) == (ref.dataobj.slope, ref.dataobj.inter)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(fast.affine, ref.affine)
    assert fast.header.get_slope_inter() == ref.header.get_slope_inter()
    assert fast.header.get_data_dtype() == ref.header.get_data_dtype()
    np.testing.assert_array_equal(fast.get_fdata(), ref.get_fdata())


def test_fast_path_reads_mricron_templates_as_nibabel() -> None:
    templates = mricron_templates()
    assert len(templates) >= 10
    for path in templates:
        ref = nib.load(path)
        want = np.asanyarray(ref.dataobj)
        got = _io.nifti_data(path)
        assert got.dtype == want.dtype, path.name
        np.testing.assert_array_equal(got, want, err_msg=path.name)


def _as_nifti2(path: Path) -> None:
    img = nib.load(path)
    nib.save(nib.Nifti2Image.from_image(img), path)
    assert isinstance(nib.load(path), nib.Nifti2Image)


def test_nifti2_nsd_tree_ingests_as_nifti1(raw_copy: Path, nsd_store_ro: Path,
                                           tmp_path: Path) -> None:
    for folder in NSD_SUBJ01:
        for path in sorted((raw_copy / folder).glob("*.nii.gz")):
            _as_nifti2(path)
    store = tmp_path / "n2.zarr"
    nfstore.ingest("nsd", raw_copy, store, subjects=["1"])
    got, want = nfstore.open_store(store), nfstore.open_store(nsd_store_ro)
    np.testing.assert_array_equal(got.betas("nsd/subj01").values,
                                  want.betas("nsd/subj01").values)
    a, b = got.dataset("nsd/subj01"), want.dataset("nsd/subj01")
    np.testing.assert_array_equal(a.roi_mask.values, b.roi_mask.values)
    assert a.roi.values.tolist() == b.roi.values.tolist()
    for key in ("affine", "volume_shape"):
        assert got.attrs("nsd/subj01")[key] == want.attrs("nsd/subj01")[key]
