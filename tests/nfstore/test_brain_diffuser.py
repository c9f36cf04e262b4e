"""Brain-Diffuser's prepared NSD arrays: the reader against the synthetic NSD tree they were
made from, normalization against a direct numpy computation (as vdvae_regression.py does),
export and round trips, and the refused inputs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nfstore
from nfstore.community import brain_diffuser_files as bdf
from nfstore.community import column_order
from nfstore.community.brain_diffuser import export_subject
from nfstore.errors import OptionError, StoreError
from nfstore.readers.brain_diffuser import BrainDiffuserReader
from nfstore.synth import synthesize
from nfstore.testing import ReaderTests

SUB = "nsd/subj01"


class TestBrainDiffuserContract(ReaderTests):
    reader_class = BrainDiffuserReader
    synth_settings = {"subjects": (1,), "sessions": 3, "array_sessions": 2}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic Brain-Diffuser data folder (subj01, subj02; arrays from 3 of 4 sessions),
    which is also the NSD release tree they were made from. Read-only."""
    out = tmp_path_factory.mktemp("raw") / "bd"
    synthesize("brain-diffuser", out, seed=4)
    return out


@pytest.fixture(scope="module")
def store(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "s.zarr"
    nfstore.ingest("brain-diffuser", raw, path)
    return path


def _files(raw: Path, split: str, kind: str, number: int = 1) -> np.ndarray:
    return np.load(bdf.array_path(raw, number, split, kind), allow_pickle=False)


def _hash(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_ids_values_and_rois_match_the_nsd_tree(raw: Path, tmp_path: Path) -> None:
    """Ids, repeat counts and raw values equal the first-appearance averages of the NSD
    release trials (sessions 1-3) ingested by the NSD reader; with ``rois`` the voxel grid
    indices and ROI masks equal NSD's."""
    nsd_path, path = tmp_path / "nsd.zarr", tmp_path / "s.zarr"
    nfstore.ingest("nsd", raw, nsd_path, subjects=[1], normalization="none",
                   options={"sessions": "1-3"})
    nsd_st = nfstore.open_store(nsd_path)
    nsd = nsd_st.betas(SUB).load()
    nfstore.ingest("brain-diffuser", raw, path, subjects=[1], normalization="none",
                   options={"rois": str(raw)})
    st = nfstore.open_store(path)
    bd = st.betas(SUB).load()
    key = {tuple(v) for v in zip(*(nsd[c].values for c in ("voxel_i", "voxel_j", "voxel_k")))}
    ijk = list(zip(*(bd[c].values for c in ("voxel_i", "voxel_j", "voxel_k"))))
    assert ijk == sorted(ijk) and set(ijk) == key  # C order over the same voxels
    order = pd.Index(list(zip(*(nsd[c].values for c in ("voxel_i", "voxel_j", "voxel_k"))))
                     ).get_indexer(ijk)
    assert sorted(st.rois(SUB)) == sorted(nsd_st.rois(SUB)) and len(st.rois(SUB)) > 5
    nsd_ds, bd_ds = nsd_st.dataset(SUB), st.dataset(SUB)
    nsd_rois = dict(zip(nsd_ds["roi"].values, nsd_ds["roi_mask"].values[:, order]))
    for name, mask in zip(bd_ds["roi"].values, bd_ds["roi_mask"].values):
        np.testing.assert_array_equal(mask, nsd_rois[name], err_msg=name)
    for split in ("train", "test"):
        trials = nsd.isel(trial=np.flatnonzero(nsd["split"].values == split))
        stim = trials["stimulus"].values
        ids = list(dict.fromkeys(stim))  # first appearance
        rows = bd.isel(trial=np.flatnonzero(bd["split"].values == split))
        assert rows["stimulus"].values.tolist() == ids
        counts = pd.Series(stim).value_counts()
        assert rows["n_repeats"].values.tolist() == [int(counts[i]) for i in ids]
        assert (rows["repeat"].values == 0).all()
        x = trials.values[:, order] * np.float32(300)  # NSD stores int16 / 300
        want = np.stack([x[stim == i].mean(0) for i in ids])
        np.testing.assert_allclose(rows.values, want, rtol=1e-5, atol=1e-3)
        first = [int(np.flatnonzero(stim == i)[0]) for i in ids]
        assert rows["session"].values.tolist() == trials["session"].values[first].tolist()
        assert rows["run"].values.tolist() == trials["run"].values[first].tolist()
    assert int(bd["n_repeats"].sum()) == 3 * 60  # every trial of the 3 sessions, once


def test_default_normalization_is_brain_diffusers(store: Path, raw: Path) -> None:
    """/300, then z-score per voxel with the train rows' mean and std (ddof=1)."""
    st = nfstore.open_store(store)
    train, test = _files(raw, "train", "fmri") / 300, _files(raw, "test", "fmri") / 300
    mean, scale = np.mean(train, 0), np.std(train, 0, ddof=1)
    want = np.concatenate([(train - mean) / scale, (test - mean) / scale])
    got = st.betas(SUB)
    np.testing.assert_allclose(got.values, want, atol=2e-5)
    assert got["split"].values.tolist() == ["train"] * len(train) + ["test"] * len(test)
    attrs = st.attrs(SUB)
    norm = attrs["normalization"]
    assert (norm["ddof"], norm["peer_scale"], norm["statistics_from"]) == (1, "1/300", "train")
    assert attrs["rows"] == "repeat-average" and attrs["sessions"] == [1, 2, 3]
    assert st.rois(SUB) == ["nsdgeneral"] and (got["voxel_i"].values == -1).all()


def test_captions_and_stimulus_table(store: Path, raw: Path) -> None:
    st = nfstore.open_store(store)
    ds = st.dataset(SUB)
    caps = np.concatenate([_files(raw, "train", "cap"), _files(raw, "test", "cap")])
    got = np.stack([ds[f"caption_{k}"].values for k in range(1, 6)], axis=1)
    assert got.tolist() == caps.tolist() and (caps == "").any()
    table = st.stimuli("nsd")
    assert set(ds["stimulus"].values) <= set(table["stimulus"].values)
    pos = pd.Index(table["stimulus"].values).get_indexer(ds["stimulus"].values[:5])
    import h5py

    with h5py.File(raw / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "r") as f:
        brick = f["imgBrick"]
        for p, sid in zip(pos, ds["stimulus"].values[:5]):
            pixels = np.load(raw / table["file"].values[p], mmap_mode="r")[
                table["index"].values[p]]
            np.testing.assert_array_equal(pixels.astype(np.uint8), brick[int(sid[4:])])


def test_sessions_are_the_smallest_fitting_prefix(raw: Path) -> None:
    design = bdf.read_design(raw / bdf.EXPDESIGN, 2)
    rows = bdf.design_rows(design, 3)
    n = (rows["train"].nsd_ids.size, rows["test"].nsd_ids.size)
    assert bdf.find_sessions(design, *n, Path("f.npy")) == 3
    assert len(_files(raw, "train", "fmri", 2)) == n[0]
    with pytest.raises(nfstore.NFError, match=r"^f\.npy: expected row counts of a prefix"):
        bdf.find_sessions(design, n[0] - 1, n[1], Path("f.npy"))


def test_round_trip_export_then_ingest(store: Path, raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    summary = export_subject(store, SUB, out, size=32)
    assert "\n" not in str(summary) and "71 train" in str(summary)
    for split in ("train", "test"):
        for kind, dtype in (("fmri", np.float64), ("stim", np.float64), ("cap", None)):
            arr = _files(out, split, kind)
            assert dtype is None or arr.dtype == dtype
        assert _files(out, split, "cap").tolist() == _files(raw, split, "cap").tolist()
        assert _files(out, split, "stim").shape[1:] == (32, 32, 3)
    with pytest.raises(StoreError, match="pass --overwrite"):
        export_subject(store, SUB, out, size=32)
    back = tmp_path / "back.zarr"
    nfstore.ingest("brain-diffuser", out, back, normalization="none",
                   options={"expdesign": str(raw / bdf.EXPDESIGN)})
    a, b = nfstore.open_store(store).betas(SUB), nfstore.open_store(back).betas(SUB)
    np.testing.assert_allclose(b.values, a.values, atol=1e-6)
    for c in ("stimulus", "split", "n_repeats"):
        assert b[c].values.tolist() == a[c].values.tolist(), c


def test_nsd_release_subject_exports_in_brain_diffusers_order(raw: Path, tmp_path: Path
                                                              ) -> None:
    """An NSD-release subject (sessions 1-3) exported and read back by the brain-diffuser
    reader: the ids, splits and repeat counts of the design prefix, columns in C order (the
    NSD reader sorts voxels by visual ROI), values the per-image means."""
    path, back = tmp_path / "nsd.zarr", tmp_path / "back.zarr"
    nfstore.ingest("nsd", raw, path, subjects=[1], options={"sessions": "1-3"})
    export_subject(path, SUB, tmp_path / "data", size=8)
    nfstore.ingest("brain-diffuser", tmp_path / "data", back, normalization="none",
                   options={"expdesign": str(raw / bdf.EXPDESIGN), "rois": str(raw)})
    nsd = nfstore.open_store(path).betas(SUB).load()
    got = nfstore.open_store(back).betas(SUB).load()
    ijk = ("voxel_i", "voxel_j", "voxel_k")
    order = pd.Index(list(zip(*(nsd[c].values for c in ijk)))).get_indexer(
        list(zip(*(got[c].values for c in ijk))))
    assert (order >= 0).all() and (np.diff(order) != 1).any()  # reordered columns
    for split in ("train", "test"):
        trials = nsd.isel(trial=np.flatnonzero(nsd["split"].values == split))
        stim = trials["stimulus"].values
        ids = list(dict.fromkeys(stim))
        rows = got.isel(trial=np.flatnonzero(got["split"].values == split))
        assert rows["stimulus"].values.tolist() == ids
        assert rows["n_repeats"].values.tolist() == [int((stim == i).sum()) for i in ids]
        want = np.stack([trials.values[stim == i].astype(np.float64).mean(0) for i in ids])
        np.testing.assert_allclose(rows.values, want[:, order], atol=1e-6)


@pytest.mark.parametrize("dataset, subject", [("god", "sub-01"), ("bold5000", "CSI1")])
def test_export_god_and_bold5000_subjects(dataset: str, subject: str,
                                          request: pytest.FixtureRequest, tmp_path: Path
                                          ) -> None:
    """Imagery (GOD) left out, one row per image (the mean of its trials) in first-trial
    order, images resized to ``size``, no captions; every file loads without pickle."""
    raw = request.getfixturevalue("god_raw" if dataset == "god" else "bold_raw")
    path = tmp_path / "g.zarr"
    nfstore.ingest(dataset, raw, path, subjects=[subject])
    st = nfstore.open_store(path)
    out = tmp_path / "data"
    key = f"{dataset}/{subject}"
    summary = export_subject(path, key, out, size=16, number=7 if dataset == "god" else None)
    n = summary.number
    assert n == (7 if dataset == "god" else 1)
    x = st.betas(key).load()
    columns = column_order(st.dataset(key))
    for split in ("train", "test"):
        rows = x.isel(trial=np.flatnonzero(x["split"].values == split))
        stim = rows["stimulus"].values
        ids = list(dict.fromkeys(stim))
        want = np.stack([rows.values[stim == i].astype(np.float64).mean(0) for i in ids])
        np.testing.assert_allclose(_files(out, split, "fmri", n), want[:, columns], atol=1e-6)
        caps = _files(out, split, "cap", n)
        assert caps.shape == (len(ids), 5) and (caps == "").all()
        pixels = _files(out, split, "stim", n)
        assert pixels.shape == (len(ids), 16, 16, 3) and pixels.dtype == np.float64
        np.testing.assert_array_equal(pixels[:3].astype(np.uint8),
                                      st.images(ids[:3], size=(16, 16)).values)
    assert dataset != "god" or "imagery" in set(x["split"].values)


@pytest.mark.parametrize("damage, message", [
    ("stim", "nsd_test_stim_sub1.npy: expected"),
    ("expdesign", "expdesign: expected NSD's nsd_expdesign.mat"),
    ("flag", "--expdesign: expected NSD's nsd_expdesign.mat at /nowhere/nsd_expdesign.mat"),
    ("rows", "nsd_train_fmriavg_nsdgeneral_sub1.npy: expected row counts"),
])
def test_bad_inputs_fail_cleanly(raw: Path, store: Path, tmp_path: Path, damage: str,
                                 message: str) -> None:
    """One line naming the file, non-zero exit, the store byte-identical."""
    from click.testing import CliRunner
    from nf.main import _register, cli

    bad = Path(shutil.copytree(raw / "processed_data", tmp_path / "bd/processed_data")).parent
    shutil.copytree(raw / "nsddata/experiments", bad / "nsddata/experiments")
    if damage == "stim":
        np.save(bdf.array_path(bad, 1, "test", "stim"), _files(raw, "test", "stim")[:-1])
    elif damage == "expdesign":
        (bad / bdf.EXPDESIGN).unlink()
    else:
        for kind in ("fmri", "stim", "cap"):
            np.save(bdf.array_path(bad, 1, "train", kind), _files(raw, "train", kind)[:-1])
    s = Path(shutil.copytree(store, tmp_path / "s.zarr"))
    before = _hash(s)
    _register()
    flag = ["--expdesign", "/nowhere/nsd_expdesign.mat"] if damage == "flag" else []
    res = CliRunner().invoke(cli, ["ingest", "brain-diffuser", str(bad), "--store", str(s),
                                   "--subjects", "1", "--overwrite", "--no-progress", *flag])
    assert res.exit_code != 0 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    assert _hash(s) == before


def test_options_are_checked(raw: Path) -> None:
    reader = BrainDiffuserReader()
    with pytest.raises(OptionError, match=r"^sessions: expected 1\.\.4"):
        reader.open_subject(raw, "subj01", reader.parse_options({"sessions": "9"}))
    with pytest.raises(nfstore.NFError, match=r"expected \d+ train and \d+ test rows"):
        reader.open_subject(raw, "subj01", reader.parse_options({"sessions": "2"}))
    with pytest.raises(OptionError, match=r"^number: expected"):
        export_subject("unused", "nsd/subj01", "x", number=0)


def test_design_without_stimpattern_has_the_real_session_sizes(tmp_path: Path) -> None:
    """750 trials per session in 12 runs of 63/62; test iff masterordering <= len(sharedix)."""
    import scipy.io

    rng = np.random.default_rng(0)
    order = rng.integers(1, 101, 1500)
    subjectim = np.stack([rng.permutation(500)[:100] + 1 for _ in range(8)])
    scipy.io.savemat(tmp_path / "d.mat", {"masterordering": order[None].astype(float),
                                          "subjectim": subjectim.astype(float),
                                          "sharedix": subjectim[0, :10][None].astype(float)})
    d = bdf.read_design(tmp_path / "d.mat", 3)
    assert d.session_stops.tolist() == [750, 1500]
    assert np.bincount(d.run[:750])[1:].tolist() == [63, 62] * 6
    np.testing.assert_array_equal(d.nsd_ids, subjectim[2, order - 1] - 1)
    np.testing.assert_array_equal(d.test, order <= 10)


def test_without_stim_files_the_nsd_brick_rows_stay(raw: Path, tmp_path: Path) -> None:
    """Arrays without their stim files: the ingest lists no pixels of its own, and the images
    of a store's NSD-release table (imgBrick rows) stay and serve the subject's ids."""
    bad = tmp_path / "bd"
    shutil.copytree(raw / "processed_data", bad / "processed_data",
                    ignore=shutil.ignore_patterns("*_stim_*"))
    table = BrainDiffuserReader().stimulus_table(
        bad, BrainDiffuserReader().parse_options({"expdesign": str(raw / bdf.EXPDESIGN)}))
    assert table.stimulus.size == 0
    path = tmp_path / "s.zarr"
    nfstore.ingest("nsd", raw, path, subjects=[2])
    nfstore.ingest("brain-diffuser", bad, path, subjects=[1],
                   options={"expdesign": str(raw / bdf.EXPDESIGN)})
    st = nfstore.open_store(path)
    ids = st.dataset(SUB)["stimulus"].values[:4]
    import h5py

    with h5py.File(raw / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "r") as f:
        want = np.stack([f["imgBrick"][int(i[4:])] for i in ids])
    np.testing.assert_array_equal(st.images(ids).values, want)


def test_averages_of_averages_weigh_each_row_by_its_repeats(store: Path) -> None:
    """Rows that are repeat averages are never counted as single trials: averaging repeats
    keeps each row's n_repeats, and two rows of one image weigh by their counts."""
    import xarray as xr

    from nfstore._query import average_repeats_of

    st = nfstore.open_store(store)
    rows = st.betas(SUB, split="test")
    avg = st.betas(SUB, split="test", average_repeats=True)
    ds = st.dataset(SUB)
    want = dict(zip(ds["stimulus"].values.tolist(), ds["n_repeats"].values.tolist()))
    assert avg["n_repeats"].values.tolist() == [want[s] for s in avg["stimulus"].values]
    assert max(want.values()) > 1  # the synthetic design repeats images
    np.testing.assert_allclose(avg.values, rows.sortby("stimulus").values, atol=1e-6)
    two = xr.DataArray(np.array([[1.0], [4.0]], np.float32), dims=("trial", "voxel"),
                       coords={"stimulus": ("trial", ["nsd/00007"] * 2),
                               "n_repeats": ("trial", [2, 1])})
    out = average_repeats_of(two)
    assert out.values.tolist() == [[2.0]] and out["n_repeats"].values.tolist() == [3]
