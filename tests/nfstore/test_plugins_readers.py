"""Reader plugins: the contract suite on every built-in reader, the registry (entry points,
broken plugins, unknown names), and a third-party reader installed as a separate package
(``nfstore.readers`` entry point) going through ingest, validate, info, query and serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import nfstore
from nfstore import readers
from nfstore.readers import BOLD5000Reader, GODReader, NSDReader
from nfstore.testing import ReaderTests

ROOT = Path(__file__).resolve().parents[2]
NF = ROOT / ".venv" / "bin" / "nf"


class TestNSDReader(ReaderTests):
    reader_class = NSDReader
    synth_settings = {"subjects": (1,), "sessions": 2, "trials_per_session": 30,
                      "runs_per_session": 2, "images_per_subject": 40, "shared": 8,
                      "grid": (12, 14, 12), "image_size": 16}


class TestBOLD5000Reader(ReaderTests):
    reader_class = BOLD5000Reader
    synth_settings = {"subjects": (1,), "sessions": 2, "images": (12, 10, 10),
                      "test_images": 4, "image_size": 16}


class TestGODReader(ReaderTests):
    reader_class = GODReader
    synth_settings = {"subjects": (1,), "train_categories": 6, "test_images": 4,
                      "image_size": 16}


# --------------------------------------------------------------------------- registry


def test_builtins_come_first_and_derive_everything() -> None:
    from nfstore.names import DATASETS, dataset_names
    from nfstore.normalize import default_normalization
    from nfstore.schema import load_schema
    from nfstore.synth import synth_names

    builtin = [cls.name for cls in readers.BUILTIN]
    assert builtin == ["nsd", "bold5000", "god", "things", "mindeye2", "brain-diffuser"]
    assert readers.reader_names()[:len(builtin)] == builtin
    # the readers of prepared NSD formats write the nsd group: no dataset of their own
    assert DATASETS == dataset_names() == tuple(readers.dataset_groups())
    assert dataset_names()[:4] == ("nsd", "bold5000", "god", "things")
    assert "mindeye2" not in dataset_names() and "brain-diffuser" not in dataset_names()
    assert [readers.get_reader(n).store_dataset() for n in builtin[4:]] == ["nsd", "nsd"]
    assert [default_normalization(d) for d in builtin] == [
        cls.normalization for cls in readers.BUILTIN]
    assert [default_normalization(d) for d in builtin[:4]] == [
        "session-train", "session-train", "run", "session-train"]
    pattern = load_schema()["properties"]["subjects"]["propertyNames"]["pattern"]
    assert "nsd/(?:subj0[1-8])" in pattern and "god/(?:sub-0[1-5])" in pattern
    assert "things/(?:sub-" in pattern
    assert synth_names()[:len(builtin)] == builtin and synth_names()[-1] == "pool"


def test_an_unknown_dataset_is_one_line() -> None:
    with pytest.raises(nfstore.OptionError, match=r"^dataset: expected one of \['nsd', "
                       r"'bold5000', 'god', 'things'.*\]; found 'nope'$"):
        readers.get_reader("nope")


def _fake_entry_points(monkeypatch: pytest.MonkeyPatch, *eps: Any) -> None:
    monkeypatch.setattr(readers, "entry_points", lambda group: list(eps))
    readers.refresh()


def test_a_broken_plugin_warns_in_one_line_and_is_skipped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise ImportError("no module named 'missing_dep'")

    class Mirror(GODReader):
        name = "godmirror"

    class Clash(GODReader):
        name = "nsd"

    eps = [SimpleNamespace(name="broken", value="broken_pkg:Reader", load=boom),
           SimpleNamespace(name="notareader", value="x:y", load=lambda: dict),
           SimpleNamespace(name="clash", value="x:Clash", load=lambda: Clash),
           SimpleNamespace(name="godmirror", value="x:Mirror", load=lambda: Mirror)]
    _fake_entry_points(monkeypatch, *eps)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = readers.reader_names()
        assert names == [*(cls.name for cls in readers.BUILTIN), "godmirror"]
        messages = [str(w.message) for w in caught if w.category is readers.PluginWarning]
        assert len(messages) == 3 and all("\n" not in m for m in messages)
        assert "'broken' (broken_pkg:Reader): could not be loaded: ImportError" in messages[0]
        assert type(readers.get_reader("godmirror")) is Mirror
    finally:
        monkeypatch.undo()
        readers.refresh()


def test_option_text_is_converted_and_checked() -> None:
    nsd = readers.get_reader("nsd")
    assert nsd.parse_options({"sessions": "1-3,5"}).sessions == (1, 2, 3, 5)
    with pytest.raises(nfstore.OptionError, match=r"^format: expected one of \['auto', "):
        nsd.parse_options({"format": "mat"})
    god = readers.get_reader("god")
    assert god.parse_options({"block_rows": "64"}).block_rows == 64
    with pytest.raises(nfstore.OptionError, match=r"^block_rows: expected int; found 'x'"):
        god.parse_options({"block_rows": "x"})


# --------------------------------------------------------------------------- acceptance


def _install_plugin(site: Path) -> None:
    """A separate installed package: one module and its dist-info with the entry point."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "nf_godmirror.py").write_text(
        "from nfstore.readers import GODReader\n\n\n"
        "class Mirror(GODReader):\n    name = \"godmirror\"\n")
    info = site / "nf_godmirror-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nf-godmirror\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[nfstore.readers]\ngodmirror = nf_godmirror:Mirror\n")


def _nf(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(NF), *args], env=env, cwd=cwd, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


SERVE_CHECK = """
import json, sys
from fastapi.testclient import TestClient
from nfserve.app import ServeConfig, create_app
client = TestClient(create_app(ServeConfig(sys.argv[1])), base_url="http://127.0.0.1")
out = {p: [client.get(p).status_code, "godmirror/sub-01" in client.get(p).text]
       for p in ("/", "/api/overview", "/subject/godmirror/sub-01",
                 "/api/subject/godmirror/sub-01")}
out["pools"] = client.get("/api/overview").json()["pools"]
print(json.dumps(out))
"""


def test_an_installed_plugin_reader_goes_through_every_command(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install_plugin(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    raw, store = tmp_path / "raw", tmp_path / "s.zarr"
    _nf(["synth", "god", str(raw), "--subjects", "1", "--set", "train_categories=6",
         "test_images=4", "image_size=16"], env, tmp_path)
    out = _nf(["ingest", "godmirror", str(raw), "--store", str(store), "--no-progress"], env,
              tmp_path).stdout
    assert "godmirror/sub-01" in out
    _nf(["ingest", "god", str(raw), "--store", str(store), "--no-progress"], env, tmp_path)
    assert "valid" in _nf(["validate", str(store)], env, tmp_path).stdout
    info = _nf(["info", str(store)], env, tmp_path).stdout
    assert "godmirror/sub-01" in info and "god/sub-01" in info
    _nf(["query", str(store), "godmirror/sub-01", "--out", str(tmp_path / "m.npy")], env,
        tmp_path)
    _nf(["query", str(store), "god/sub-01", "--out", str(tmp_path / "g.npy")], env, tmp_path)
    mirror, god = np.load(tmp_path / "m.npy"), np.load(tmp_path / "g.npy")
    assert mirror.shape == god.shape and mirror.size > 0
    np.testing.assert_array_equal(mirror, god)
    served = subprocess.run([sys.executable, "-c", SERVE_CHECK, str(store)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr
    pages = json.loads(served.stdout.strip().splitlines()[-1])
    assert pages.pop("pools") == []  # godmirror is a dataset, not a pool
    assert all(page == [200, True] for page in pages.values()), pages
    # the plugin is not importable in this process: nothing leaked into the registry
    assert "godmirror" not in readers.reader_names()
    builtin = [cls.name for cls in readers.BUILTIN]
    assert json.loads(json.dumps(readers.reader_names()))[:len(builtin)] == builtin


def test_nf_ingest_takes_reader_options_as_key_value(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from nf.main import _register, cli

    _register()
    raw, store = tmp_path / "raw", tmp_path / "s.zarr"
    runner = CliRunner()
    r = runner.invoke(cli, ["synth", "god", str(raw), "--subjects", "1", "--set",
                            "train_categories=6", "test_images=4", "image_size=16"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["ingest", "god", str(raw), "--store", str(store), "--option",
                            "block_rows=8", "--no-progress"])
    assert r.exit_code == 0, r.output
    blocks = nfstore.open_store(store).attrs("god/sub-01")
    assert blocks["dataset"] == "god" and blocks["reader"] == "nfstore.readers.god.GODReader"
    for args, message in ((["--option", "nope=1"], "Error: nope: not an option of god; valid: "
                           "block_rows, images"),
                          (["--option", "block_rows"], "Error: --option: expected KEY=VALUE; "
                           "found 'block_rows'"),
                          (["--tr", "TR3"], "Error: --tr: not an option of god")):
        r = runner.invoke(cli, ["ingest", "god", str(raw), "--store", str(tmp_path / "x.zarr"),
                                *args])
        assert r.exit_code == 1 and r.output.strip().splitlines() == [
            r.output.strip()] and r.output.startswith(message), r.output
