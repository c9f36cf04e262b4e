"""The MindEye2 bundle: synthetic bundle, reader (``nf ingest mindeye2``), export
(``nf export mindeye2``), checked with the access patterns of MindEye2's own code (h5py
``f['betas'][:]``, tarfile + ``np.load`` of ``behav.npy``, ``images[sorted_unique_ids]``)."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import tarfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io
from click.testing import CliRunner
from PIL import Image

import nfstore
from nfstore.community import mindeye2_files as me2
from nfstore.readers import get_reader
from nfstore.readers.base import RawSubject, Reader
from nfstore.readers.mindeye2 import MindEye2Reader, trial_rows
from nfstore.synth import synthesize
from nfstore.testing import ReaderTests

SMALL = dict(subjects=(1, 2), sessions=3, trials_per_session=30, runs_per_session=3,
             images_per_subject=40, shared=8, image_size=32, grid=(12, 14, 12), seed=4)
FIELD_SHAPES = {"behav.npy": (1, 17), "future_behav.npy": (15, 17), "olds_behav.npy": (3, 17),
                "past_behav.npy": (15, 17)}


class TestMindEye2Contract(ReaderTests):
    reader_class = MindEye2Reader
    synth_settings = {**SMALL, "subjects": (1,)}

    def test_writes_nsd_subjects_with_release_ids(self, reader: Reader, raw_root: Path,
                                                  first: RawSubject) -> None:
        assert first.dataset == reader.store_dataset() == "nsd"
        assert all(re.fullmatch(r"nsd/\d{5}", s) for s in first.trials["stimulus"])
        table = reader.stimulus_table(raw_root)
        assert table.dataset == "nsd" and (table.file == me2.IMAGES).all()
        np.testing.assert_array_equal(table.index, [int(s[4:]) for s in table.stimulus])
        assert [b.label for b in first.blocks][:2] == ["session 1 rows 0-29",
                                                       "session 2 rows 30-59"]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("me2") / "bundle"
    synthesize("mindeye2", out, **SMALL)
    return out


@pytest.fixture(scope="module")
def release_store(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both subjects ingested from the NSD release tree the bundle was made from."""
    path = tmp_path_factory.mktemp("me2") / "release.zarr"
    nfstore.ingest("nsd", bundle / "nsd", path)
    return path


@pytest.fixture
def bundle_copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def _behav_of(tar: Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Samples of a tar read as MindEye2 reads them (all four fields)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with tarfile.open(tar) as t:
        for m in t:
            key, _, field = m.name.partition(".")
            out.setdefault(key, {})[field] = np.load(io.BytesIO(t.extractfile(m).read()),
                                                     allow_pickle=False)
    return list(out.items())


def _tree_hash(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _zscore_betas(nsd: Path, sub: int) -> tuple[np.ndarray, pd.DataFrame]:
    """MindEye2's pipeline recomputed: nsdgeneral == 1 voxels, train-trial z-score."""
    name = f"subj{sub:02d}"
    general = np.asarray(nib.load(nsd / f"nsddata/ppdata/{name}/func1pt8mm/roi/nsdgeneral.nii.gz")
                         .dataobj) == 1
    resp = pd.read_csv(nsd / f"nsddata/ppdata/{name}/behav/responses.tsv", sep="\t")
    beta_dir = nsd / f"nsddata_betas/ppdata/{name}/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    x = np.concatenate([np.asarray(nib.load(beta_dir / f"betas_session{s:02d}.nii.gz").dataobj)
                        [general].T for s in sorted(resp["SESSION"].unique())]).astype(float)
    shared = scipy.io.loadmat(nsd / "nsddata/experiments/nsd/nsd_expdesign.mat")["sharedix"]
    train = ~np.isin(resp["73KID"].to_numpy(), shared.ravel())
    return (x - x[train].mean(0)) / x[train].std(0), resp.assign(test=~train)


# ---------------------------------------------------------------------------- the bundle
def test_synthetic_bundle_is_mindeye2s_pipeline(bundle: Path) -> None:
    want, resp = _zscore_betas(bundle / "nsd", 1)
    with h5py.File(bundle / "betas_all_subj01_fp32_renorm.hdf5", "r") as f:
        assert f["betas"].dtype == np.float32 and f["betas"].chunks is None
        got = f["betas"][:]
    np.testing.assert_allclose(got, want, atol=2e-5)
    wds = bundle / "wds/subj01"
    assert sorted(p.name for p in (wds / "train").iterdir()) == ["0.tar", "1.tar", "2.tar"]
    rows, keys = {}, []
    for tar in [wds / f"train/{s}.tar" for s in range(3)]:
        for key, fields in _behav_of(tar):
            keys.append(key)
            assert {k: v.shape for k, v in fields.items()} == FIELD_SHAPES
            rows[int(fields["behav.npy"][0, 5])] = fields
    assert keys == [f"sample{n:09d}" for n in range(len(keys))]  # counted on across tars
    new_test = {int(f["behav.npy"][0, 5]): f for _, f in _behav_of(wds / "new_test/0.tar")}
    old_test = {int(f["behav.npy"][0, 5]) for _, f in _behav_of(wds / "test/0.tar")}
    assert sorted(new_test) == np.flatnonzero(resp["test"]).tolist()
    assert old_test == {r for r in new_test if resp["SESSION"][r] <= 2}  # last session left out
    rows.update(new_test)
    assert sorted(rows) == list(range(len(resp)))
    for r, fields in rows.items():
        b = fields["behav.npy"][0]
        assert b[0] == resp["73KID"][r] - 1 and b[1] == 1 and b[2] == resp["SESSION"][r]
        assert (b[3], b[4], b[6]) == (resp["RUN"][r], resp["TRIAL"][r], int(resp["TIME"][r]))
        assert b[16] == resp["test"][r] and b[11] == -1  # ISOLDCURRENT: not in this tree
        prev = r - 1 if r > 0 and resp["SESSION"][r - 1] == resp["SESSION"][r] else None
        past0 = fields["past_behav.npy"][0]
        assert (past0 == -1).all() if prev is None else past0[5] == prev
        others = [t for t in np.flatnonzero(resp["73KID"] == resp["73KID"][r]) if t != r]
        olds = fields["olds_behav.npy"]
        assert olds[:len(others), 5].tolist() == others and (olds[len(others):] == -1).all()


def test_tar_members_are_webdataset_tarwriters(bundle: Path) -> None:
    with tarfile.open(bundle / "wds/subj01/train/0.tar") as t:
        members = t.getmembers()
    assert [m.name.split(".", 1)[1] for m in members[:4]] == sorted(FIELD_SHAPES)
    assert all(re.fullmatch(r"sample\d{9}\.[a-z_]+\.npy", m.name) for m in members)
    assert {(m.mode, m.uname, m.gname) for m in members} == {(0o444, "bigdata", "bigdata")}


def test_images_are_the_brick_resized(bundle: Path) -> None:
    with h5py.File(bundle / "nsd/nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "r") as f:
        brick = f["imgBrick"]
        ids = np.array([3, int(pd.read_csv(bundle / "nsd/nsddata/ppdata/subj01/behav/"
                                           "responses.tsv", sep="\t")["73KID"][0]) - 1])
        with h5py.File(bundle / me2.IMAGES, "r") as g:
            assert g["images"].shape == (brick.shape[0], 3, 224, 224)
            assert g["images"].chunks == (1, 3, 224, 224)
            got = g["images"][np.sort(ids)]  # MindEye2: images[sorted unique ids]
        want = np.asarray(Image.fromarray(brick[ids.max()]).resize((224, 224), Image.BICUBIC))
    assert got.dtype == np.float16 and 0 <= got.min() and got.max() <= 1
    np.testing.assert_array_equal(np.round(got[1].astype(np.float32) * 255).transpose(1, 2, 0),
                                  want)


# ---------------------------------------------------------------------------- ingest
def test_ingest_keeps_values_and_matches_the_release_reader(bundle: Path, release_store: Path,
                                                           tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    nfstore.ingest("mindeye2", bundle, path, subjects=["2"])
    st, rel = nfstore.open_store(path), nfstore.open_store(release_store)
    x, y = st.betas("nsd/subj02"), rel.betas("nsd/subj02")
    with h5py.File(bundle / "betas_all_subj02_fp32_renorm.hdf5", "r") as f:
        np.testing.assert_array_equal(x.values, f["betas"][:])
    for coord in ("stimulus", "split", "session", "run", "repeat"):
        np.testing.assert_array_equal(x[coord].values, y[coord].values, err_msg=coord)
    norm = st.attrs("nsd/subj02")["normalization"]
    assert norm["method"] == "none" and "train" in norm["as_provided"]
    assert st.rois("nsd/subj02") == ["nsdgeneral"]
    assert (x["voxel_i"].values == -1).all()


def test_rois_option_recovers_grid_and_rois(bundle: Path, release_store: Path,
                                            tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    nfstore.ingest("mindeye2", bundle, path, subjects=["1"], options={"rois": str(bundle / "nsd")})
    st, rel = nfstore.open_store(path), nfstore.open_store(release_store)
    general = np.asarray(nib.load(bundle / "nsd/nsddata/ppdata/subj01/func1pt8mm/roi/"
                                  "nsdgeneral.nii.gz").dataobj)
    ds = st.dataset("nsd/subj01")
    ijk = np.stack([ds[c].values for c in ("voxel_i", "voxel_j", "voxel_k")], 1)
    np.testing.assert_array_equal(ijk, np.argwhere(general == 1))
    assert st.rois("nsd/subj01") == rel.rois("nsd/subj01")
    v1 = rel.dataset("nsd/subj01")
    v1 = v1.isel(voxel=v1["roi_mask"].sel(roi="V1").values)
    got = ds.isel(voxel=ds["roi_mask"].sel(roi="V1").values)
    assert sorted(zip(got.voxel_i.values, got.voxel_j.values, got.voxel_k.values)) == sorted(
        zip(v1.voxel_i.values, v1.voxel_j.values, v1.voxel_k.values))


def test_same_picture_is_one_identity_across_sources(bundle_copy: Path, tmp_path: Path) -> None:
    """NSD-release subj01 and MindEye2 subj02 of one tree: one identity per picture, and a
    picture subj02 trains on that subj01 holds out is leakage."""
    from nfstore.leakage import find_leakage

    wds = bundle_copy / "wds/subj02"
    tars = me2.subject_tars(bundle_copy, 2)
    behav = trial_rows(tars, bundle_copy / me2.betas_name(2), 90)
    leaked = behav[behav[:, 16] == 1][0, 0]
    behav[behav[:, 0] == leaked, 16] = 0  # subj02 now trains on a shared picture
    shutil.rmtree(wds)
    me2.write_tars(wds, behav, np.ones(len(behav), bool))
    path = tmp_path / "s.zarr"
    nfstore.ingest("nsd", bundle_copy / "nsd", path, subjects=["1"])
    before = nfstore.open_store(path).identity_table().set_index("stimulus")["identity"]
    nfstore.ingest("mindeye2", bundle_copy, path, subjects=["2"])
    st = nfstore.open_store(path)
    table = st.identity_table()
    assert table["stimulus"].is_unique and set(table["table"]) == {"nsd"}
    ident = table.set_index("stimulus")["identity"]
    assert (ident[before.index] == before).all()  # the release's coco identities kept
    sid = f"nsd/{int(leaked):05d}"
    report = find_leakage(st)
    assert sid in report.excluded()
    assert any(d.held_out == sid and "train:nsd/subj02" in d.uses for d in report.duplicates)


# ---------------------------------------------------------------------------- bad inputs
def _extra_row(b: Path) -> str:
    path = b / "betas_all_subj01_fp32_renorm.hdf5"
    with h5py.File(path, "r") as f:
        x = f["betas"][:]
    with h5py.File(path, "w") as f:
        f["betas"] = np.concatenate([x, x[:1]])
    return f"{path}: expected 90 rows"


def _missing_field(b: Path) -> str:
    path = b / "wds/subj01/train/1.tar"
    with tarfile.open(path) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    drop = next(m.name for m, _ in members if m.name.endswith(".past_behav.npy"))
    with tarfile.open(path, "w") as t:
        for m, data in members:
            if m.name != drop:
                t.addfile(m, io.BytesIO(data))
    return f"{path}: expected fields"


def _missing_images(b: Path) -> str:
    (b / me2.IMAGES).unlink()
    return f"{b / me2.IMAGES}: missing file"


def _no_test_tars(b: Path) -> str:
    shutil.rmtree(b / "wds/subj01/new_test")
    shutil.rmtree(b / "wds/subj01/test")
    return f"{b / 'betas_all_subj01_fp32_renorm.hdf5'}: expected 66 rows"


def _missing_tars(b: Path) -> str:
    shutil.rmtree(b / "wds/subj01")
    return f"{b / 'wds/subj01'}: missing webdataset tars"


def _wrong_rois(b: Path) -> str:
    return "nsdgeneral.nii.gz: expected"


@pytest.mark.parametrize("damage", [_extra_row, _missing_field, _missing_images, _no_test_tars,
                                    _missing_tars, _wrong_rois],
                         ids=lambda f: f.__name__.strip("_"))
def test_bad_inputs_fail_in_one_line_and_leave_the_store(bundle_copy: Path, release_store: Path,
                                                         tmp_path: Path, damage) -> None:
    from nf.main import _register, cli

    store = tmp_path / "s.zarr"
    shutil.copytree(release_store, store)
    message = damage(bundle_copy)
    args = ["ingest", "mindeye2", str(bundle_copy), "--store", str(store), "--subjects", "1",
            "--overwrite", "--no-progress"]
    if damage is _wrong_rois:  # subject 2's grid has another nsdgeneral count
        args += ["--option", f"rois={bundle_copy / 'nsd/nsddata/ppdata/subj02/func1pt8mm/roi'}"]
    before = _tree_hash(store)
    _register()
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.output
    assert _tree_hash(store) == before


def test_trial_rows_dedupe_and_conflicts(bundle_copy: Path) -> None:
    tars = me2.subject_tars(bundle_copy, 1)
    betas = bundle_copy / me2.betas_name(1)
    behav = trial_rows(tars, betas, 90)
    assert np.isfinite(behav).all() and (behav[:, 5] == np.arange(90)).all()
    old = tars[-1]  # test/0.tar repeats rows of new_test/0.tar
    assert old.parent.name == "test" and len(me2.read_behav(old)) > 0
    rows = me2.read_behav(old)
    rows[:, 11] = 7  # another behavioural value: the new_test row is kept
    me2.write_tar(old, 0, (rows, *me2.context_arrays(rows)))
    np.testing.assert_array_equal(trial_rows(tars, betas, 90), behav)
    rows[0, 2] += 1  # the same betas row in another session
    me2.write_tar(old, 0, (rows, *me2.context_arrays(rows)))
    with pytest.raises(nfstore.NFError, match=r"/test/0.tar: expected betas row \d+ to have "
                                              r"the image, session, run and test flag"):
        trial_rows(tars, betas, 90)


def test_reader_registry_and_subject_names(bundle: Path) -> None:
    reader = get_reader("mindeye2")
    assert reader.store_dataset() == "nsd" and reader.normalization == "none"
    assert reader.list_subjects(bundle) == ["subj01", "subj02"]
    assert reader.subject_name("2") == "subj02"


def test_blocks_split_sessions_and_read_the_same_rows(bundle: Path) -> None:
    reader = MindEye2Reader()
    raw = reader.open_subject(bundle, "1", reader.parse_options({"block_trials": "20"}))
    assert [(b.start, b.stop) for b in raw.blocks] == [(0, 20), (20, 30), (30, 50), (50, 60),
                                                       (60, 80), (80, 90)]
    with h5py.File(bundle / "betas_all_subj01_fp32_renorm.hdf5", "r") as f:
        np.testing.assert_array_equal(np.concatenate([b.load() for b in raw.blocks]),
                                      f["betas"][:])
