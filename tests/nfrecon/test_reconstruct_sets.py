"""Reconstruction sets as units: a finished set is kept, replaced only with ``overwrite``; a
staged set resumes only with the same settings and weights; the true embeddings without a
decoded set; options checked before anything loads; failed writes leave the store valid."""

from __future__ import annotations

import errno
import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import nfstore
from nfrecon import reconstruct as R
from nfrecon.decode import decode_ridge
from nfrecon.pipeline import ReconConfig, weights_checksums
from nfrecon.reconstruct import SetExistsError, read_reconstructions, reconstruct
from nfrecon.tiny import write_tiny_models
from tests.conftest import tree_state

CFG = ReconConfig(steps=2, size=32, batch=1)
SUBJ = "nsd/subj01"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def models_b(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Other weights (another seed) in the same layouts."""
    return write_tiny_models(tmp_path_factory.mktemp("models_b"), seed=1)


@pytest.fixture
def store(train_store_ro: Path, tmp_path: Path) -> Path:
    path = Path(shutil.copytree(train_store_ro, tmp_path / "nf.zarr"))
    decode_ridge(path, SUBJ, "ridge")
    return path


class Stop(Exception):
    """Raised from ``on_row``: the run stops with rows staged (as a kill leaves them)."""


def _stop_after(n: int):  # noqa: ANN202
    def on_row(done: int) -> None:
        if done >= n:
            raise Stop
    return on_row


def _no_load(*args: object, **kwargs: object) -> None:
    raise AssertionError("the pipeline was loaded")


def _run(store: Path, models: dict[str, Path], name: str, cfg: ReconConfig = CFG,
         **kw: object) -> R.ReconSummary:
    return reconstruct(store, "ridge", models["sdxl"], models["ip_adapter"], name, cfg,
                       subjects=[SUBJ], limit=kw.pop("limit", 4), **kw)  # type: ignore[arg-type]


def _images(store: Path, name: str) -> np.ndarray:
    return np.asarray(read_reconstructions(store, name, SUBJ)["images"])


def test_a_rerun_with_the_same_settings_does_nothing(store: Path, models: dict[str, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _run(store, models, "r")
    before = tree_state(store)
    monkeypatch.setattr(R, "load_pipeline", _no_load)
    s = _run(store, models, "r")
    assert s.images == 0 and s.subjects == [] and s.kept == [SUBJ]
    assert "nothing to do" in s.line()
    assert tree_state(store) == before  # not one chunk file rewritten


def test_other_settings_need_overwrite_which_replaces_only_a_complete_set(
        store: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _run(store, models, "r")
    old, before = _images(store, "r"), tree_state(store)
    with monkeypatch.context() as m:
        m.setattr(R, "load_pipeline", _no_load)  # refused before anything loads
        with pytest.raises(SetExistsError) as err:
            _run(store, models, "r", replace(CFG, steps=3))
    text = str(err.value)
    assert "overwrite=True" in text and "params.steps: 2 -> 3" in text and "\n" not in text
    assert tree_state(store) == before
    with pytest.raises(Stop):  # an overwrite stopped half-way: the old set stays as it was
        _run(store, models, "r", replace(CFG, steps=3), overwrite=True, on_row=_stop_after(2))
    np.testing.assert_array_equal(_images(store, "r"), old)
    assert read_reconstructions(store, "r", SUBJ)["attrs"]["params"]["steps"] == 2
    s = _run(store, models, "r", replace(CFG, steps=3), overwrite=True)
    assert s.resumed == 2 and s.images == 2
    _run(store, models, "ref3", replace(CFG, steps=3))
    np.testing.assert_array_equal(_images(store, "r"), _images(store, "ref3"))
    assert read_reconstructions(store, "r", SUBJ)["attrs"]["params"]["steps"] == 3


def test_the_cli_names_overwrite(store: Path, models: dict[str, Path]) -> None:
    from click.testing import CliRunner
    from nf.main import _register, cli

    _register()
    args = ["reconstruct", str(store), "--decoded", "ridge", "--sdxl", str(models["sdxl"]),
            "--ip-adapter", str(models["ip_adapter"]), "--size", "32", "--limit", "2",
            "--subjects", SUBJ, "--no-progress", "--name", "c"]
    assert CliRunner().invoke(cli, args + ["--steps", "2"]).exit_code == 0
    res = CliRunner().invoke(cli, args + ["--steps", "3"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "--overwrite to replace it" in res.output and "overwrite=True" not in res.output
    res = CliRunner().invoke(cli, args + ["--steps", "3", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert read_reconstructions(store, "c", SUBJ)["attrs"]["params"]["steps"] == 3


def test_a_staged_set_never_resumes_with_other_weights(store: Path, models: dict[str, Path],
                                                       models_b: dict[str, Path]) -> None:
    with pytest.raises(Stop):
        _run(store, models, "mix", on_row=_stop_after(2))
    s = _run(store, models_b, "mix")
    assert s.resumed == 0 and s.restarted == 2 and s.images == 4
    _run(store, models_b, "ref-b")
    np.testing.assert_array_equal(_images(store, "mix"), _images(store, "ref-b"))
    attrs = read_reconstructions(store, "mix", SUBJ)["attrs"]
    assert attrs["weights_sha256"] == weights_checksums(models_b["sdxl"], models_b["ip_adapter"])
    assert attrs["weights_sha256"] != weights_checksums(models["sdxl"], models["ip_adapter"])
    # the same weights resume as before
    with pytest.raises(Stop):
        _run(store, models, "same", on_row=_stop_after(2))
    assert _run(store, models, "same").resumed == 2


def test_true_embeddings_without_a_decoded_set(store: Path, models: dict[str, Path]) -> None:
    from click.testing import CliRunner
    from nf.main import _register, cli

    _register()
    res = CliRunner().invoke(cli, [
        "reconstruct", str(store), "--from-embeddings", "--sdxl", str(models["sdxl"]),
        "--ip-adapter", str(models["ip_adapter"]), "--steps", "2", "--size", "32", "--limit",
        "3", "--subjects", SUBJ, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "reconstructed 3 images into /reconstructions/oracle" in res.output
    st = nfstore.open_store(store)
    ds = st.dataset(SUBJ)
    test = np.unique(ds.stimulus.values[ds.split.values == "test"])
    r = read_reconstructions(store, "oracle", SUBJ)
    assert list(r["stimulus"]) == list(test[:3])
    emb = np.asarray(st.embeddings("ip-adapter-sdxl", stimuli=test[:3]).values, np.float32)
    assert r["attrs"]["decoded_sha256"] == hashlib.sha256(emb.tobytes()).hexdigest()
    assert r["attrs"]["source"] == "true embeddings (oracle)" and r["attrs"]["decoded"] is None
    s = reconstruct(store, None, models["sdxl"], models["ip_adapter"], "all", CFG,
                    from_embeddings=True, limit=1)  # every subject of the store
    assert s.subjects == st.subjects() and len(s.subjects) == 3
    with pytest.raises(nfstore.OptionError, match="decoded: expected a decoded set"):
        reconstruct(store, None, models["sdxl"], models["ip_adapter"], "x", CFG)
    res = CliRunner().invoke(cli, ["reconstruct", str(store), "--sdxl", str(models["sdxl"]),
                                   "--ip-adapter", str(models["ip_adapter"])])
    assert res.exit_code == 1 and "--decoded: expected a decoded set" in res.output


BAD = [("guidance", float("inf"), "guidance: expected a finite number in [0, 100]; found inf"),
       ("guidance", float("nan"), "guidance: expected a finite number in [0, 100]; found nan"),
       ("ip_scale", float("nan"), "ip_scale: expected a finite number in [0, 10]; found nan"),
       ("size", 100000, "size: expected a multiple of 8 in [8, 4096] (pixels); found 100000"),
       ("size", 36, "size: expected a multiple of 8"),
       ("steps", 10**6, "steps: expected an integer in [1, 1000]; found 1000000"),
       ("strength", float("nan"), "strength: expected a number in (0, 1]; found nan"),
       ("blend", float("inf"), "blend: expected a weight in [0, 1); found inf"),
       ("seed", -1, "seed: expected an integer in [0, 4294967295]; found -1"),
       ("steps", 2.5, "steps: expected an integer in [1, 1000]; found 2.5")]


@pytest.mark.parametrize(("field", "value", "message"), BAD)
def test_options_out_of_range_are_refused_before_anything_loads(
        store: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, field: str,
        value: object, message: str) -> None:
    before = tree_state(store)
    monkeypatch.setattr(R, "load_pipeline", _no_load)
    monkeypatch.setattr(R, "weights_checksums", _no_load)
    with pytest.raises(nfstore.OptionError) as err:
        _run(store, models, "bad", replace(CFG, **{field: value}))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert tree_state(store) == before


@pytest.mark.parametrize("args", [["--guidance", "inf"], ["--guidance", "nan"],
                                  ["--ip-scale", "nan"], ["--size", "100000"]])
def test_cli_options_out_of_range(store: Path, models: dict[str, Path], args: list[str]
                                  ) -> None:
    from click.testing import CliRunner
    from nf.main import _register, cli

    _register()
    before = tree_state(store)
    res = CliRunner().invoke(cli, ["reconstruct", str(store), "--decoded", "ridge", "--sdxl",
                                   str(models["sdxl"]), "--ip-adapter",
                                   str(models["ip_adapter"]), "--no-progress"] + args)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.startswith(f"Error: {args[0]}: expected ")  # the flag, not the field
    assert res.output.count("\n") == 1 and tree_state(store) == before


def test_decode_ridge_alphas_must_be_finite_and_positive(store: Path) -> None:
    from click.testing import CliRunner
    from nf.main import _register, cli

    _register()
    before = tree_state(store)
    for alphas in (["nan"], ["1", "inf"], ["-1"], ["0"]):
        res = CliRunner().invoke(cli, ["decode-ridge", str(store), SUBJ, "--name", "x",
                                       "--alphas", *alphas])
        assert res.exit_code == 1 and "--alphas: expected finite numbers > 0" in res.output
    res = CliRunner().invoke(cli, ["decode-ridge", str(store), SUBJ, "--name", "x",
                                   "--image-size", "100000"])
    assert res.exit_code == 1 and "--image-size: expected at most 4096" in res.output
    assert tree_state(store) == before


def test_a_full_disk_leaves_the_set_staged_and_resumable(store: Path, models: dict[str, Path],
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    import zarr

    from nfstore.schema import validate_store

    write = zarr.Array.__setitem__
    calls = {"images": 0}

    def full(self: zarr.Array, sel: object, value: object) -> None:
        if str(self.name).rstrip("/").split("/")[-1] == "images":
            calls["images"] += 1
            if calls["images"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        write(self, sel, value)

    with monkeypatch.context() as m:
        m.setattr(zarr.Array, "__setitem__", full)
        with pytest.raises(OSError, match="No space left"):
            _run(store, models, "full")
    assert not (store / "reconstructions/full").exists()
    assert validate_store(nfstore.open_store(store)) == []
    with monkeypatch.context() as m:  # the disk fills when the complete set is renamed
        m.setattr(nfstore._layout, "commit", _full_disk)
        with pytest.raises(OSError, match="No space left"):
            _run(store, models, "full")
    assert not (store / "reconstructions/full/nsd/subj01").exists()  # not half-committed
    assert validate_store(nfstore.open_store(store)) == []
    s = _run(store, models, "full")
    assert s.resumed == 4 and s.images == 0  # every row was kept staged
    _run(store, models, "ref")
    np.testing.assert_array_equal(_images(store, "full"), _images(store, "ref"))


def _full_disk(*args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")
