"""The nfrecon writers on the store's one write path (:func:`nfstore.transaction`): decoded
sets, reconstruction sets (a staged set's progress file is the resume point), per-image
metrics; and ``nf metrics`` end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

import nfstore
from nfrecon.decoded import check_name, write_decoded
from nfrecon.reconstruct import ReconOptions, create_group, read_reconstructions
from nfstore.transaction import staged_name

SUBJ = "nsd/subj01"


@pytest.fixture
def store(train_store_ro: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(train_store_ro, tmp_path / "nf.zarr"))


def _rows(n: int) -> tuple[np.ndarray, ...]:
    stim = np.array([f"nsd/{i:05d}" for i in range(n)], dtype=object)
    return (np.arange(n * 4, dtype=np.float32).reshape(n, 4), stim,
            np.full(n, "test", dtype=object), np.ones(n, bool), np.ones(n, np.int64))


def test_write_decoded_in_a_transaction(store: Path) -> None:
    with nfstore.transaction(store, "test") as tx:
        write_decoded(tx, "d", SUBJ, *_rows(3), {"decoder": "test"})
        assert tx.committed == [f"decoded/d/{SUBJ}"]
    d = nfstore.open_store(store).decoded("d", SUBJ)
    assert d.shape == (3, 4) and d.attrs["decoder"] == "test" and d.attrs["subject"] == SUBJ
    assert not list((store / "_staging").glob(staged_name(f"decoded/d/{SUBJ}") + "*"))
    with nfstore.transaction(store, "again") as tx:  # a second write replaces the rows
        write_decoded(tx, "d", SUBJ, *_rows(2), {})
    assert nfstore.open_store(store).decoded("d", SUBJ).shape == (2, 4)


def test_write_decoded_errors_name_the_parameter(store: Path) -> None:
    emb, *rest = _rows(2)
    emb[1, 0] = np.nan
    with nfstore.transaction(store, "test") as tx:
        with pytest.raises(nfstore.OptionError, match=r"^embedding: expected finite values"):
            write_decoded(tx, "d", SUBJ, emb, *rest, {})
    assert "d" not in nfstore.open_store(store).decoded_sets()
    with pytest.raises(nfstore.OptionError, match=r"^name: expected letters, digits"):
        check_name("a b")
    with pytest.raises(nfstore.OptionError, match=r"^init: expected letters"):
        check_name("a/b", "init")


def test_reconstruction_options_name_their_defaults_and_parameters() -> None:
    from nfrecon.pipeline import ReconConfig

    assert ReconOptions("s", "i", decoded="ridge").set_name() == "ridge"
    assert ReconOptions("s", "i", decoded="ridge", from_embeddings=True).set_name() == \
        "ridge-oracle"
    assert ReconOptions("s", "i", from_embeddings=True).set_name() == "oracle"
    with pytest.raises(nfstore.OptionError, match=r"^decoded: expected a decoded set"):
        ReconOptions("s", "i").check(ReconConfig())
    with pytest.raises(nfstore.OptionError, match=r"^encoder: expected the image encoder"):
        ReconOptions("s", "i", decoded="r").check(ReconConfig(samples=2))
    with pytest.raises(nfstore.OptionError, match=r"^blend: blends with the images"):
        ReconOptions("s", "i", decoded="r").check(ReconConfig(blend=0.5))


def test_a_missing_set_names_the_parameter(store: Path) -> None:
    from nfrecon.reconstruct import recon_subjects

    with pytest.raises(nfstore.StoreError, match=r"^name: expected a reconstruction set"):
        read_reconstructions(store, "nope", SUBJ)
    with pytest.raises(nfstore.QueryError, match=r"name: expected a reconstruction set"):
        recon_subjects(store, "nope")


def _recon_set(store: Path, name: str) -> np.ndarray:
    """A reconstruction set of the subject's test stimuli: their own pictures plus noise."""
    st = nfstore.open_store(store)
    ds = st.dataset(SUBJ)
    stim = np.unique(ds.stimulus.values[ds.split.values == "test"]).astype(object)[:4]
    px = np.asarray(st.images(stim, size=(32, 32)).values)
    rng = np.random.default_rng(0)
    rec = np.clip(px.astype(int) + rng.integers(-30, 30, px.shape), 0, 255).astype(np.uint8)
    key = f"reconstructions/{name}/{SUBJ}"
    with st.transaction("test") as tx:
        staged, _, _ = tx.stage(key, create=False)
        assert staged.name == staged_name(key)
        g = create_group(staged, stim, 1, 32)
        g["images"][:] = rec[:, None]
        g["chosen"][:] = 0
        g.attrs["subject"] = SUBJ
        tx.commit(key)
    return rec


def test_nf_metrics_writes_the_per_image_values_and_its_outputs(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner
    from nf.main import _register, cli

    from nfrecon import metrics as M

    _recon_set(store, "r")
    # PixCorr and SSIM only: the feature networks are tested in test_metrics.py
    monkeypatch.setattr(M, "weight_paths", lambda folder, variant: {})
    monkeypatch.setattr(M, "load_networks", lambda paths, clip, device: [])
    _register()
    res = CliRunner().invoke(cli, ["metrics", str(store), "--reconstructions", "r", "--weights",
                                   str(tmp_path), "--clip", str(tmp_path), "--out",
                                   str(tmp_path / "m.json"), "--table", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    assert f"{SUBJ}: pixcorr " in res.output and "scored 4 images" in res.output
    assert "| pixcorr" not in res.output and "| NeuroFusion [nsd, mindeye2] |" in res.output
    assert (tmp_path / "m.json").is_file() and (tmp_path / "t/metrics_table.md").is_file()
    per = zarr.open_group(str(store / f"reconstructions/r/{SUBJ}/metrics/mindeye2"), mode="r")
    assert per["pixcorr"].shape == (4,) and per.attrs["variant"] == "mindeye2"
    res = CliRunner().invoke(cli, ["metrics", str(store), "--reconstructions", "nope",
                                   "--weights", str(tmp_path), "--clip", str(tmp_path)])
    assert res.exit_code == 1 and res.output.startswith("Error: --reconstructions: expected")
