"""The nf command line: parsing, output and one-line errors (click's CliRunner)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from nf.main import _register, cli

import nfstore


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    _register()
    return CliRunner()


def test_synth_ingest_info_validate_query(runner: CliRunner, tmp_path: Path) -> None:
    raw, store = tmp_path / "raw", tmp_path / "s.zarr"
    r = runner.invoke(cli, ["synth", "nsd", str(raw), "--subjects", "1", "3", "--sessions", "2",
                            "--trials-per-session", "30", "--images-per-subject", "40",
                            "--shared", "5", "--image-size", "16", "--grid", "12,14,12"])
    assert r.exit_code == 0, r.output
    assert "2 subject(s), 120 trials" in r.output
    r = runner.invoke(cli, ["ingest", "nsd", str(raw), "--store", str(store), "--subjects", "3",
                            "--sessions", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "ingested 1 nsd subject(s) (nsd/subj03): 30 trials" in r.output
    r = runner.invoke(cli, ["info", str(store)])
    assert r.exit_code == 0 and "nsd/subj03" in r.output and "sessions" in r.output
    r = runner.invoke(cli, ["validate", str(store)])
    assert r.exit_code == 0 and "valid (schema version 1; 1 subjects)" in r.output
    out = tmp_path / "q.npy"
    r = runner.invoke(cli, ["query", str(store), "nsd/subj03", "--roi", "V1", "V2", "--split",
                            "train", "--out", str(out)])
    assert r.exit_code == 0, r.output
    want = nfstore.open_store(store).betas("nsd/subj03", roi=["V1", "V2"], split="train")
    np.testing.assert_array_equal(np.load(out), want.values)


def test_synth_refuses_non_empty_folder(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    r = runner.invoke(cli, ["synth", "nsd", str(tmp_path / "x")])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [f"Error: {tmp_path / 'x'}: folder exists and is not "
                                             "empty; pass --overwrite to replace it"]


@pytest.mark.parametrize("args, message", [
    (["query", "{store}", "nsd/subj07", "--out", "{tmp}/q.npy"], "'nsd/subj07' is not in"),
    (["query", "{store}", "nsd/subj01", "--out", "{tmp}/q.txt"], "--out: expected a file ending"),
    (["query", "{store}", "nsd/subj01", "--roi", "FOO", "--out", "{tmp}/q.npy"],
     "--roi: ['FOO'] not available"),
    (["ingest", "nsd", "{tmp}/nowhere", "--store", "{tmp}/n.zarr"], "nowhere: missing folder"),
    (["ingest", "nsd", "{raw}", "--store", "{tmp}/n.zarr", "--sessions", "3-1"],
     "--sessions: expected increasing"),
    (["ingest", "nsd", "{raw}", "--store", "{tmp}/n.zarr", "--sessions", "9"],
     "expected betas files for the sessions asked for [9]"),
    (["ingest", "nsd", "{raw}", "--store", "{tmp}/n.zarr", "--subjects", "x"],
     "--subjects: expected NSD subjects like 1 or subj01; got 'x'"),
    (["info", "{tmp}/none.zarr"], "expected a NeuroFusion store"),
    (["augment", "{store}", "nsd/subj01", "--pool", "novel", "--n", "50", "--noise-scale", "nan"],
     "--noise-scale: expected a finite number >= 0; found nan"),
    (["augment", "{store}", "nsd/subj01", "--pool", "novel", "--fraction", "inf"],
     "fraction: expected a finite number > 0; found inf"),
    (["synth", "nsd", "{tmp}/o", "--sessions", "12", "--trials-per-session", "200"],
     "sessions x trials_per_session: expected at most 3 x images_per_subject = 300 trials"),
    (["train", "{store}", "--set", 'subjects=["nsd/subj01"]', "dropout=1.5"],
     "dropout: expected a finite number in [0, 1); found 1.5"),
    (["train", "{store}", "--set", 'subjects=["nsd/subj01"]', "epochs=2.5"],
     "epochs: expected an integer >= 1; found 2.5"),
    (["train", "{store}", "--config", "{tmp}/latin1.toml"],
     "--config: expected UTF-8 TOML; found byte 0xff at offset 0 of "),
])
def test_user_errors_are_one_line(runner: CliRunner, nsd_raw: Path, nsd_store_ro: Path,
                                  tmp_path: Path, args: list[str], message: str) -> None:
    args = [a.format(store=nsd_store_ro, tmp=tmp_path, raw=nsd_raw) for a in args]
    (tmp_path / "latin1.toml").write_bytes(b"\xff")
    r = runner.invoke(cli, args)
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_validate_lists_problems_and_fails(runner: CliRunner, nsd_store: Path) -> None:
    chunk = next(p for p in (nsd_store / "nsd/subj02/betas/c").rglob("*") if p.is_file())
    chunk.unlink()
    r = runner.invoke(cli, ["validate", str(nsd_store)])
    assert r.exit_code == 1 and "nsd/subj02/betas: expected" in r.output


def test_demo_runs(runner: CliRunner, tmp_path: Path) -> None:
    r = runner.invoke(cli, ["demo", "--workdir", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert "demo done" in r.output
    for key in ("nsd/subj02", "bold5000/CSI4", "god/sub-02", "things/sub-01"):
        assert key in r.output
    rel = float(re.search(r"nsd/subj01 +\d+ trials.*repeat reliability ([\d.]+)", r.output)[1])
    assert rel > 0.2  # the planted signal survives ingest and normalization
    overall = re.search(r"overall +([\d.]+) +([\d.]+) +([\d.]+)", r.output)
    assert overall and float(overall[2]) > 0.5  # top-5 brain->image, chance is about 0.4
    import json

    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert metrics["overall"]["top1_brain_to_image"] > 1.5 * metrics["overall"]["chance_top1"]
    # every dataset clearly above chance, and the decoder above its ridge row
    # (seeds 0-2: NSD 5.5-8x, BOLD5000 8-11.5x, GOD 12-14x chance; ridge 0.125-0.317 lower)
    for d, row in metrics["datasets"].items():
        assert row["top1_brain_to_image"] >= 3 * row["chance_top1"], (d, row)
        assert row["top1_brain_to_image"] > metrics["baseline"]["datasets"][d][
            "top1_brain_to_image"], d


def test_bold5000_and_god_from_the_cli(runner: CliRunner, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    r = runner.invoke(cli, ["synth", "bold5000", str(tmp_path / "b"), "--subjects", "2",
                            "--sessions", "2", "--set", "test_images=4", "images=20,20,10"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["ingest", "bold5000", str(tmp_path / "b"), "--store", str(store),
                            "--tr", "TR3", "--format", "h5", "--no-progress"])
    assert r.exit_code == 0 and "bold5000/CSI2" in r.output, r.output
    assert nfstore.open_store(store).attrs("bold5000/CSI2")["tr"] == "TR3"
    r = runner.invoke(cli, ["synth", "god", str(tmp_path / "g"), "--subjects", "5",
                            "--set", "legacy_names=true"])
    assert r.exit_code == 0, r.output
    (tmp_path / "g" / "images").rename(tmp_path / "imgs")
    r = runner.invoke(cli, ["ingest", "god", str(tmp_path / "g"), "--store", str(store),
                            "--images", str(tmp_path / "imgs"), "--no-progress"])
    assert r.exit_code == 0 and "god/sub-05" in r.output, r.output
    r = runner.invoke(cli, ["info", str(store)])
    assert "bold5000/CSI2" in r.output and "god/sub-05" in r.output


@pytest.mark.parametrize("args, message", [
    (["ingest", "nsd", "{tmp}", "--store", "{tmp}/s.zarr", "--tr", "TR3"],
     "--tr: not an option of nsd"),
    (["ingest", "god", "{tmp}", "--store", "{tmp}/s.zarr", "--format", "mat"],
     "--format: not an option of god"),
    (["synth", "god", "{tmp}/x", "--sessions", "3"], "--sessions: not a setting of the god"),
    (["synth", "god", "{tmp}/x", "--set", "legacy_names=maybe"],
     "--set: expected legacy_names=<bool>; found legacy_names='maybe'"),
    (["synth", "nsd", "{tmp}/x", "--set", "foo=1"], "--set: expected KEY=VALUE with KEY one of"),
])
def test_dataset_option_errors(runner: CliRunner, tmp_path: Path, args: list[str],
                               message: str) -> None:
    r = runner.invoke(cli, [a.format(tmp=tmp_path) for a in args])
    assert r.exit_code == 1 and message in r.output and len(r.output.strip().splitlines()) == 1, \
        r.output


def test_embed_from_the_cli(runner: CliRunner, nsd_store: Path, tmp_path: Path) -> None:
    from PIL import Image

    from nfstore.tiny import write_tiny_encoder

    weights = write_tiny_encoder(tmp_path / "enc")["open_clip"]
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(3):
        Image.new("RGB", (30, 20), (i * 60, 10, 200)).save(pool / f"im{i}.png")
    r = runner.invoke(cli, ["embed", str(nsd_store), "--weights", str(weights), "--pool",
                            str(pool), "--pool-name", "novel", "--workers", "0",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "registered 3 images" in r.output and "embedded 3 images" in r.output
    store = nfstore.open_store(nsd_store)
    assert store.embeddings("ip-adapter-sdxl").sizes["stimulus"] == 3
    r = runner.invoke(cli, ["embed", str(nsd_store), "--weights", str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "--weights" in r.output and "expected a Hugging Face image encoder folder" in r.output


def test_augment_from_the_cli(runner: CliRunner, tmp_path: Path) -> None:
    from PIL import Image

    from nfstore.tiny import write_tiny_encoder

    raw, store = tmp_path / "raw", tmp_path / "s.zarr"
    assert runner.invoke(cli, ["synth", "god", str(raw), "--subjects", "1"]).exit_code == 0
    assert runner.invoke(cli, ["ingest", "god", str(raw), "--store", str(store),
                               "--no-progress"]).exit_code == 0
    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(pool / f"{i}.png")
    weights = write_tiny_encoder(tmp_path / "enc")["hf"]
    r = runner.invoke(cli, ["embed", str(store), "--weights", str(weights), "--workers", "0",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["embed", str(store), "--weights", str(weights), "--pool", str(pool),
                            "--pool-name", "imnet", "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    png = tmp_path / "diag.png"
    r = runner.invoke(cli, ["augment", str(store), "god/sub-01", "--pool", "imnet", "--n", "20",
                            "--alphas", "10", "100", "1000", "--cv", "3", "--noise", "lowrank",
                            "--rank", "2", "--plot", str(png), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "per-voxel CV correlation" in r.output and "synthesized 20 trials" in r.output
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    r = runner.invoke(cli, ["info", str(store)])
    assert "god/sub-01: synthetic set 'imnet-lowrank', 20 trials" in r.output
    r = runner.invoke(cli, ["augment", str(store), "god/sub-01", "--pool", "imnet", "--n", "5",
                            "--alpha", "3", "--alphas", "1", "2"])
    assert r.exit_code == 1 and "--alpha / --alphas: give one of them" in r.output


def test_train_finetune_evaluate_from_the_cli(runner: CliRunner, tmp_path: Path,
                                               train_store_ro: Path) -> None:
    import json

    run = tmp_path / "run"
    r = runner.invoke(cli, ["train", str(train_store_ro), "--set", f"output_dir={run}",
                            'subjects=["nsd/subj01","nsd/subj02"]', "epochs=2", "batch_size=16",
                            "adapter_dim=32", "width=32", "--no-progress"])
    assert r.exit_code == 0 and "trained 2 epochs" in r.output, r.output
    cfg = json.loads((run / "best" / "config.json").read_text())["train_config"]
    assert cfg["epochs"] == 2 and cfg["subjects"] == ["nsd/subj01", "nsd/subj02"]
    r = runner.invoke(cli, ["finetune", str(train_store_ro), "--checkpoint", str(run / "best"),
                            "--subjects", "god/sub-01", "--fraction", "0.25", "--set",
                            "epochs=1", "--no-progress"])
    assert r.exit_code == 0, r.output
    tuned = run / "finetune-god_sub-01" / "best"
    out = tmp_path / "metrics.json"
    r = runner.invoke(cli, ["evaluate", str(train_store_ro), "--checkpoint", str(tuned),
                            "--out", str(out)])
    assert r.exit_code == 0 and "god/sub-01" in r.output and "overall" in r.output, r.output
    assert set(json.loads(out.read_text())["subjects"]) == {"nsd/subj01", "nsd/subj02",
                                                           "god/sub-01"}
    r = runner.invoke(cli, ["train", str(train_store_ro), "--set", "subjects=[\"nsd/subj09\"]",
                            f"output_dir={tmp_path / 'x'}"])
    assert r.exit_code == 1 and "subjects: ['nsd/subj09'] not in" in r.output
    r = runner.invoke(cli, ["train", str(train_store_ro), "--set", "lr_max=3"])
    assert r.exit_code == 1 and "unknown config keys ['lr_max']; valid keys:" in r.output
    r = runner.invoke(cli, ["evaluate", str(train_store_ro), "--checkpoint", str(tmp_path)])
    assert r.exit_code == 1 and "expected model.safetensors, config.json" in r.output
