"""A store that changes underneath training, evaluation or prediction is noticed: training
stops, resuming and using the checkpoint are refused (unless explicitly allowed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from nf.main import _register, cli

import nfstore
from nfrecon.decode import predict
from nfstore.augment import AugmentConfig, augment
from nftrain.evaluate import evaluate
from nftrain.train import train
from tests.conftest import tree_state


def _reingest_when_last_exists(store: Path, raw: Path, out: Path):  # noqa: ANN202
    """An ``on_step`` that re-ingests nsd/subj01 without normalization (another process's
    ``nf ingest --overwrite --normalization none``) once the first epoch's ``last/`` exists."""
    done = []

    def on_step(step: int) -> None:
        if not done and (out / "last").is_dir():
            nfstore.ingest("nsd", raw, store, subjects=["1"], overwrite=True,
                           normalization="none")
            done.append(step)
    return on_step, done


@pytest.fixture
def swapped(train_store: Path, train_store_ro: Path, small_cfg) -> dict:
    """A run stopped by a re-ingest in its second epoch, and what it left."""
    cfg = small_cfg(subjects=["nsd/subj01", "god/sub-01"], epochs=3)
    out = Path(cfg.output_dir)
    before = nfstore.open_store(train_store).attrs("nsd/subj01")["ingest_fingerprint"]
    on_step, done = _reingest_when_last_exists(train_store, train_store_ro.parent / "nsd", out)
    with pytest.raises(nfstore.StoreError) as err:
        train(train_store, cfg, on_step=on_step)
    after = nfstore.open_store(train_store).attrs("nsd/subj01")["ingest_fingerprint"]
    return dict(store=train_store, cfg=cfg, out=out, error=str(err.value), before=before,
                after=after, done=done)


def test_training_stops_when_a_subject_is_ingested_again(swapped: dict) -> None:
    text, out = swapped["error"], swapped["out"]
    assert swapped["done"] and swapped["before"] != swapped["after"]
    assert text.startswith(f"{swapped['store']}: changed while training (nsd/subj01: ingest "
                           f"{swapped['before'][:12]} then, {swapped['after'][:12]} now); "
                           f"stopped "), text
    assert "start a new run with another output_dir" in text and "\n" not in text
    for name in ("best", "last"):  # what was saved is of the data before, and says so
        meta = json.loads((out / name / "config.json").read_text())
        assert meta["store_fingerprint"]["nsd/subj01"] == swapped["before"]
    assert json.loads((out / "last" / "state.json").read_text())["epoch"] == 1
    assert not list(out.glob(".*"))  # no checkpoint half-written aside


def test_resume_evaluate_and_predict_refuse_the_changed_store(swapped: dict) -> None:
    store, out = swapped["store"], swapped["out"]
    with pytest.raises(nfstore.StoreError, match=r"^resume: .*last was trained on other data "
                       r"than .* holds now \(nsd/subj01: ingest \w+ then, \w+ now\); start a "
                       r"new run with another output_dir$"):
        train(store, swapped["cfg"], resume=True)
    refusal = (rf"^ckpt: {out / 'best'} was trained on other data than {store} holds now "
               rf"\(nsd/subj01: ingest {swapped['before'][:12]} then, {swapped['after'][:12]} "
               rf"now; re-ingested or re-embedded since\); train again on the store as it is, "
               rf"or pass allow_store_change \(`--allow-store-change`\) to use the checkpoint "
               rf"anyway$")
    with pytest.raises(nfstore.StoreError, match=refusal):
        evaluate(store, out / "best")
    before = tree_state(store)
    with pytest.raises(nfstore.StoreError, match=refusal):
        predict(store, out / "best", "p")
    assert tree_state(store) == before
    # an unchanged subject of the same checkpoint is still usable
    assert set(evaluate(store, out / "best", subjects=["god/sub-01"])["subjects"]) == {
        "god/sub-01"}
    m = evaluate(store, out / "best", allow_store_change=True)
    assert m["store_changed"] == {"nsd/subj01": [swapped["before"], swapped["after"]]}
    predict(store, out / "best", "p", allow_store_change=True)
    attrs = nfstore.open_store(store).decoded("p", "nsd/subj01").attrs
    assert attrs["store_changed_since_training"] == {"nsd/subj01": [swapped["before"],
                                                                    swapped["after"]]}
    assert attrs["trained_store_fingerprint"]["nsd/subj01"] == swapped["before"]


def test_nf_evaluate_refuses_in_one_line_and_allows_on_request(swapped: dict) -> None:
    _register()
    args = ["evaluate", str(swapped["store"]), "--checkpoint", str(swapped["out"] / "best")]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert r.output.startswith("Error: --checkpoint: ") and "--allow-store-change" in r.output
    r = CliRunner().invoke(cli, [*args, "--allow-store-change"])
    assert r.exit_code == 0, r.output
    assert "nsd/subj01" in r.output


def test_nf_predict_refuses_in_one_line_and_allows_on_request(swapped: dict) -> None:
    _register()
    args = ["predict", str(swapped["store"]), "--checkpoint", str(swapped["out"] / "best"),
            "--name", "after"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert "--allow-store-change" in r.output
    assert "after" not in nfstore.open_store(swapped["store"]).decoded_sets()
    r = CliRunner().invoke(cli, [*args, "--allow-store-change"])
    assert r.exit_code == 0, r.output
    assert "after" in nfstore.open_store(swapped["store"]).decoded_sets()


def test_training_stops_when_its_synthetic_set_is_rewritten(train_store: Path,
                                                            small_cfg) -> None:
    cfg = small_cfg(subjects=["nsd/subj01"], synthetic=["syn"], epochs=2)
    done = []

    def on_step(step: int) -> None:
        if not done:
            augment(train_store, "nsd/subj01", AugmentConfig(pool="novel", n=40, alpha=10.0,
                                                             name="syn", seed=5),
                    overwrite=True)
            done.append(step)

    with pytest.raises(nfstore.StoreError, match=r": changed while training \(nsd/subj01/"
                       r"synthetic/syn rewritten\); stopped before saving "):
        train(train_store, cfg, on_step=on_step)
    assert not (Path(cfg.output_dir) / "last").exists()


def test_an_unchanged_store_trains_resumes_and_evaluates(train_store: Path, small_cfg) -> None:
    cfg = small_cfg(subjects=["nsd/subj01"], epochs=1)
    train(train_store, cfg)
    more = small_cfg(subjects=["nsd/subj01"], epochs=1)
    with pytest.raises(nfstore.StoreError, match="a run is already there"):
        train(train_store, more)
    m = evaluate(train_store, Path(cfg.output_dir) / "best")
    assert "store_changed" not in m and set(m["subjects"]) == {"nsd/subj01"}
