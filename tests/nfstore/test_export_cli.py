"""``nf export mindeye2``: store subjects (NSD, GOD, BOLD5000 of both releases, THINGS) written
as MindEye2 bundles, read back with the access patterns of MindEye2's own code (h5py
``f['betas'][:]``, tarfile + ``np.load`` of ``behav.npy``, ``images[sorted_unique_ids]``) and
with ``nf ingest mindeye2``."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

import nfstore
from nfstore.community import EXPORT_FORMATS, export_subject
from nfstore.community import mindeye2_files as me2
from nfstore.synth import synthesize
from tests.nfstore.test_mindeye2 import SMALL, _behav_of

BOLD_SMALL = {"sessions": 2, "images": (15, 10, 10), "test_images": 5}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic bundle; its NSD tree in ``bundle/nsd`` holds the ROI files."""
    out = tmp_path_factory.mktemp("me2") / "bundle"
    synthesize("mindeye2", out, **{**SMALL, "subjects": (1,)})
    return out


@pytest.fixture(scope="module")
def release_store(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Subject 1 ingested from the NSD release tree."""
    path = tmp_path_factory.mktemp("me2") / "release.zarr"
    nfstore.ingest("nsd", bundle / "nsd", path)
    return path


def test_export_nsd_reads_like_mindeye2_and_round_trips(bundle: Path, release_store: Path,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "export"
    summary = export_subject("mindeye2", release_store, "nsd/subj01", out)
    assert "nsd/subj01" in str(summary) and "\n" not in str(summary)
    st = nfstore.open_store(release_store)
    ds = st.dataset("nsd/subj01")
    order = np.lexsort((ds.voxel_k.values, ds.voxel_j.values, ds.voxel_i.values))
    with h5py.File(out / "betas_all_subj01_fp32_renorm.hdf5", "r") as f:
        np.testing.assert_array_equal(f["betas"][:], ds.betas.values[:, order])
    behav = np.concatenate([[f["behav.npy"][0] for _, f in _behav_of(t)]
                            for t in me2.subject_tars(out, 1)])
    by_row = {int(b[5]): b for b in behav}
    ids = ds.stimulus.values
    assert sorted(by_row) == list(range(len(ids)))
    assert [f"nsd/{int(by_row[r][0]):05d}" for r in range(len(ids))] == list(ids)
    assert [by_row[r][16] == 1 for r in range(len(ids))] == list(ds.split.values == "test")
    uniq = np.unique([int(s[4:]) for s in ids])
    with h5py.File(out / me2.IMAGES, "r") as f:
        assert f["images"].shape == (73000, 3, 224, 224)
        px = f["images"][uniq]
    want = st.images([f"nsd/{uniq[-1]:05d}"]).values[0]
    want = np.asarray(Image.fromarray(want).resize((224, 224), Image.BICUBIC))
    np.testing.assert_array_equal(np.round(px[-1].astype(np.float32) * 255)
                                  .transpose(1, 2, 0), want)
    back = tmp_path / "back.zarr"
    nfstore.ingest("mindeye2", out, back, options={"rois": str(bundle / "nsd")})
    got = nfstore.open_store(back).dataset("nsd/subj01")
    np.testing.assert_allclose(got.betas.values, ds.betas.values[:, order], atol=1e-6)
    for coord in ("stimulus", "split", "session", "run", "repeat"):
        np.testing.assert_array_equal(got[coord].values, ds[coord].values, err_msg=coord)
    np.testing.assert_array_equal(got.voxel_i.values, ds.voxel_i.values[order])


@pytest.mark.parametrize("dataset,settings,options", [
    ("god", {"seed": 2}, {}), ("bold5000", {"seed": 5, **BOLD_SMALL}, {}),
    ("bold5000", {"seed": 5, "release": 2, **BOLD_SMALL}, {"release": 2}),
    ("things", {"seed": 3}, {})],
    ids=["god", "bold5000-r1", "bold5000-r2", "things"])
def test_export_other_datasets_round_trip(dataset: str, settings: dict, options: dict,
                                          tmp_path: Path) -> None:
    synthesize(dataset, tmp_path / "raw", subjects=(1,), **settings)
    nfstore.ingest(dataset, tmp_path / "raw", tmp_path / "s.zarr", options=options)
    st = nfstore.open_store(tmp_path / "s.zarr")
    subject = st.subjects()[0]
    out = tmp_path / "export"
    export_subject("mindeye2", st, subject, out)
    ds = st.dataset(subject)
    keep = ds.split.values != "imagery"
    assert dataset != "god" or (~keep).any()  # GOD's imagery trials are left out
    ijk = [ds[c].values for c in ("voxel_i", "voxel_j", "voxel_k")]
    order = np.lexsort(ijk[::-1]) if all((a >= 0).all() for a in ijk) else np.arange(
        ds.sizes["voxel"])
    want = ds.betas.values[keep][:, order]
    with h5py.File(out / "betas_all_subj01_fp32_renorm.hdf5", "r") as f:
        np.testing.assert_array_equal(f["betas"][:], want)
    ids = ds.stimulus.values[keep]
    uniq = np.unique(ids)
    behav = {int(f["behav.npy"][0, 5]): f["behav.npy"][0]
             for t in me2.subject_tars(out, 1) for _, f in _behav_of(t)}
    assert [uniq[int(behav[r][0])] for r in range(len(ids))] == list(ids)
    assert {behav[r][1] for r in behav} == {1.0}
    listed = pd.read_csv(out / "stimuli_subj01.tsv", sep="\t")
    assert listed["stimulus"].tolist() == list(uniq) and listed["index"].tolist() == list(
        range(len(uniq)))
    with h5py.File(out / me2.IMAGES, "r") as f:
        assert f["images"].shape == (len(uniq), 3, 224, 224)
        first = np.round(f["images"][[0, len(uniq) - 1]][0].astype(np.float32) * 255)
    src = st.images([uniq[0]]).values[0]
    want_px = np.asarray(Image.fromarray(src).resize((224, 224), Image.BICUBIC))
    np.testing.assert_array_equal(first.transpose(1, 2, 0), want_px)
    back = tmp_path / "back.zarr"
    nfstore.ingest("mindeye2", out, back)
    got = nfstore.open_store(back).dataset("nsd/subj01")
    np.testing.assert_allclose(got.betas.values, want, atol=1e-6)
    for coord in ("split", "session", "run"):
        np.testing.assert_array_equal(got[coord].values, ds[coord].values[keep], err_msg=coord)
    assert [uniq[int(s[4:])] for s in got.stimulus.values] == list(ids)


def test_export_is_atomic_and_needs_overwrite(release_store: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(nfstore.NFError, match=r"^out: expected a path that does not exist"):
        export_subject("mindeye2", release_store, "nsd/subj01", out)

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(me2, "write_images", broken)
    with pytest.raises(OSError, match="disk gone"):
        export_subject("mindeye2", release_store, "nsd/subj01", out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    monkeypatch.undo()
    export_subject("mindeye2", release_store, "nsd/subj01", out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / me2.IMAGES).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_cli_synth_ingest_export(tmp_path: Path) -> None:
    from nf.commands_export import FORMATS
    from nf.main import _register, cli

    assert sorted(FORMATS) == sorted(EXPORT_FORMATS)
    _register()
    runner = CliRunner()
    raw, store = tmp_path / "raw", tmp_path / "s.zarr"
    r = runner.invoke(cli, ["synth", "mindeye2", str(raw), "--subjects", "3", "--sessions", "2",
                            "--trials-per-session", "20", "--images-per-subject", "30",
                            "--shared", "4", "--image-size", "16", "--grid", "10,12,10"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["ingest", "mindeye2", str(raw), "--store", str(store),
                            "--option", f"rois={raw / 'nsd'}", "--no-progress"])
    assert r.exit_code == 0 and "nsd/subj03" in r.output, r.output
    r = runner.invoke(cli, ["export", "mindeye2", str(store), "nsd/subj03", str(tmp_path / "e")])
    assert r.exit_code == 0 and "(MindEye2 subj03): 40 trials" in r.output, r.output
    r = runner.invoke(cli, ["export", "mindeye2", str(store), "nsd/subj03", str(tmp_path / "e")])
    assert r.exit_code == 1 and "OUT: expected a path that does not exist" in r.output
