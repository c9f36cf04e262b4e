"""Versioned stores on object storage (Icechunk on moto's S3 server, 127.0.0.1): nf push
publishes atomically, a push killed with SIGKILL leaves the previous version readable and
the new one invisible, nf log lists the history, rollback and older versions, checkpoints
name the version they trained on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nfstore
from nfstore import _transfer, versioned
from nfstore.errors import OptionError
from nfstore.schema import validate_store

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def repo(served: dict[str, Path], s3: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
         ) -> dict[str, Any]:
    local = Path(shutil.copytree(served["store"], tmp_path_factory.mktemp("ver") / "nf.zarr"))
    url = f"s3://{s3['bucket']}/versioned/nf.zarr"
    first = versioned.push(local, url, s3["options"], message="first")
    return {"local": local, "url": url, "first": first, "opts": s3["options"], **served}


def test_push_publishes_a_store_that_reads_like_the_folder(repo: dict[str, Any]) -> None:
    assert repo["first"].keys > 100 and repo["first"].bytes > 0
    loc = nfstore.open_store(repo["local"])
    rem = nfstore.open_store(repo["url"], storage_options=repo["opts"])
    assert rem.version == repo["first"].snapshot and loc.version is None
    assert rem.subjects() == loc.subjects()
    np.testing.assert_array_equal(rem.betas("nsd/subj01", roi="V1").values,
                                  loc.betas("nsd/subj01", roi="V1").values)
    np.testing.assert_array_equal(rem.decoded("ridge", "nsd/subj01").values,
                                  loc.decoded("ridge", "nsd/subj01").values)
    ids = loc.betas("god/sub-01", split="test").stimulus.values[:2]
    np.testing.assert_array_equal(rem.images(ids).values, loc.images(ids).values)
    assert validate_store(rem) == [] and rem.incomplete() == {}
    assert sorted(rem.keys("nsd/subj01/betas")) == sorted(nfstore.open_store(
        repo["local"]).keys("nsd/subj01/betas"))
    assert not rem.has("_staging")


def test_history_versions_and_rollback(repo: dict[str, Any], tmp_path: Path) -> None:
    from nfrecon.decode import decode_ridge

    local = Path(shutil.copytree(repo["local"], tmp_path / "nf.zarr"))
    base = set(nfstore.open_store(local).decoded_sets())  # the served store's sets
    assert "ridge" in base
    url = "s3://nf-test/history/nf.zarr"
    one = versioned.push(local, url, repo["opts"], message="one")
    decode_ridge(local, "nsd/subj02", "later")
    shutil.rmtree(local / "decoded" / "ridge")  # removed locally: removed by the next push
    two = versioned.push(local, url, repo["opts"], message="two")
    assert two.deleted > 0
    hist = versioned.log(url, repo["opts"])
    assert [h["snapshot"] for h in hist[:2]] == [two.snapshot, one.snapshot]
    assert [h["message"] for h in hist[:2]] == ["two", "one"]
    now = nfstore.open_store(url, storage_options=repo["opts"])
    assert now.decoded_sets() == sorted(base - {"ridge"} | {"later"})
    old = nfstore.open_store(url, storage_options=repo["opts"], version=one.snapshot)
    assert old.decoded_sets() == sorted(base) and old.version == one.snapshot
    versioned.rollback(url, one.snapshot, repo["opts"])
    assert nfstore.open_store(url, storage_options=repo["opts"]).decoded_sets() == sorted(base)
    with pytest.raises(OptionError, match="is not in the history"):
        versioned.rollback(url, "NOTASNAPSHOT", repo["opts"])
    with pytest.raises(nfstore.StoreError, match="no snapshot 'NOTASNAPSHOT'"):
        nfstore.open_store(url, storage_options=repo["opts"], version="NOTASNAPSHOT")


KILL = textwrap.dedent("""
    import json, os, signal, sys
    from nfstore import versioned

    def on_key(n):
        if n == int(sys.argv[4]):
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 half-way through the copy

    versioned.push(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), on_key=on_key)
""")


def test_a_push_killed_half_way_leaves_the_previous_version(repo: dict[str, Any],
                                                             tmp_path: Path) -> None:
    from nfrecon.decode import decode_ridge

    local = Path(shutil.copytree(repo["local"], tmp_path / "nf.zarr"))
    url = "s3://nf-test/killed/nf.zarr"
    before = versioned.push(local, url, repo["opts"])
    decode_ridge(local, "nsd/subj02", "newer")
    changed = sum(1 for f in (local / "decoded" / "newer").rglob("*") if f.is_file())
    assert changed >= 4  # the push sends only these (and the parents' metadata): kill inside
    proc = subprocess.run([sys.executable, "-c", KILL, str(local), url,
                           json.dumps(repo["opts"]), str(changed // 2)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    st = nfstore.open_store(url, storage_options=repo["opts"])
    assert st.version == before.snapshot  # the new version is invisible
    assert "newer" not in st.decoded_sets() and validate_store(st) == []
    np.testing.assert_array_equal(st.betas("nsd/subj02").values,
                                  nfstore.open_store(repo["local"]).betas("nsd/subj02").values)
    after = versioned.push(local, url, repo["opts"])  # the next push goes through
    assert "newer" in nfstore.open_store(url, storage_options=repo["opts"]).decoded_sets()
    assert after.snapshot != before.snapshot
    assert after.keys < before.keys / 4  # a copy still at main sends only what changed


def test_checkpoints_name_the_version_they_trained_on(repo: dict[str, Any],
                                                      tmp_path: Path) -> None:
    from nftrain.config import build
    from nftrain.train import train

    st = nfstore.open_store(repo["url"], storage_options=repo["opts"])
    run = train(st, build(dict(subjects=["nsd/subj01"], adapter_dim=16, width=16, depth=1,
                               batch_size=16, epochs=1, output_dir=str(tmp_path / "run"))))
    meta = json.loads((run.output_dir / "last" / "config.json").read_text())
    assert meta["store_version"] == st.version and meta["store"] == repo["url"]


def test_cli_push_log_rollback(repo: dict[str, Any], s3: dict[str, Any],
                               tmp_path: Path) -> None:
    opts = [f"--storage-option=endpoint_url={s3['endpoint']}", "--storage-option=key=testing",
            "--storage-option=secret=testing",
            "--storage-option=client_kwargs.region_name=us-east-1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}

    def nf(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nf", *args], capture_output=True,
                              text=True, env=env, timeout=300, cwd=ROOT)

    url = "s3://nf-test/cli/nf.zarr"
    p = nf("push", str(repo["local"]), url, "-m", "from the CLI", "--no-progress", *opts)
    assert p.returncode == 0 and "as snapshot" in p.stdout, p.stderr[-1500:]
    snap = p.stdout.split("as snapshot ")[1].split()[0]
    p = nf("log", url, *opts)
    assert p.returncode == 0 and p.stdout.startswith(f"{snap}  ") and "from the CLI" in p.stdout
    p = nf("info", url, *opts)
    assert p.returncode == 0 and "nsd/subj01" in p.stdout
    p = nf("rollback", url, "NOPE", *opts)
    assert p.returncode == 1 and "is not in the history" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = nf("push", str(repo["local"]), str(tmp_path / "elsewhere"))
    assert p.returncode == 1 and "versioned stores (nf push) live on s3:// URLs" in p.stderr


def _env(s3: dict[str, Any], workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    return {**env, "FSSPEC_S3_ENDPOINT_URL": s3["endpoint"], "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": s3["endpoint"], "NF_WORKDIR": str(workdir)}


def test_the_demo_pipeline_writes_and_reads_a_store_on_s3(nsd_raw: Path, god_raw: Path,
                                                          s3: dict[str, Any],
                                                          tmp_path: Path) -> None:
    """ingest, embed (with a pool), augment, train and evaluate with the store at an s3:// URL:
    every write publishes a snapshot, every read comes from the URL."""
    from nfstore.synth import _signal
    from nfstore.synth.images import write_images
    from nfstore.tiny import write_tiny_encoder

    url = "s3://nf-test/pipeline/nf.zarr"
    env = _env(s3, tmp_path / "work")
    enc = write_tiny_encoder(tmp_path / "enc")["hf"]
    rng = np.random.default_rng(0)
    write_images([tmp_path / "pool" / f"{i}.png" for i in range(50)],
                 _signal.render_images(_signal.latents(50, rng), 32, rng))

    def nf(*args: str) -> str:
        p = subprocess.run([sys.executable, "-m", "nf", *args], capture_output=True, text=True,
                           env=env, timeout=600, cwd=ROOT)
        assert p.returncode == 0, (args, p.stderr[-1500:])
        return p.stdout

    assert "main is snapshot" in nf("ingest", "nsd", str(nsd_raw), "--store", url, "--no-progress")
    nf("ingest", "god", str(god_raw), "--store", url, "--no-progress")
    nf("embed", url, "--weights", str(enc), "--workers", "0", "--no-progress")
    nf("embed", url, "--weights", str(enc), "--pool", str(tmp_path / "pool"), "--pool-name",
       "novel", "--workers", "0", "--no-progress")
    nf("augment", url, "nsd/subj01", "--pool", "novel", "--n", "30", "--alpha", "100")
    cfg = json.dumps(["nsd/subj01", "god/sub-01"])
    nf("train", url, "--config", str(ROOT / "nftrain/configs/demo-cpu.toml"), "--set",
       f"subjects={cfg}", "--set", "epochs=2", "--set", f"output_dir={tmp_path / 'run'}",
       "--no-progress")
    table = nf("evaluate", url, "--checkpoint", str(tmp_path / "run" / "best"))
    assert "nsd/subj01" in table and "god/sub-01" in table
    st = nfstore.open_store(url, storage_options=s3["options"])
    assert st.subjects() == ["nsd/subj01", "nsd/subj02", "god/sub-01", "god/sub-02"]
    assert st.embedding_models() == ["ip-adapter-sdxl"]
    assert st.synthetic_sets("nsd/subj01") != [] and validate_store(st) == []
    hist = versioned.log(url, s3["options"])
    assert [h["message"] for h in hist[:5]] == ["nf augment", "nf embed", "nf embed",
                                                "nf ingest", "nf ingest"]
    meta = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert meta["store_version"] == hist[0]["snapshot"]


KILL_WRITE = textwrap.dedent("""
    import os, signal, sys
    import nfstore
    from nfstore import versioned

    def on_block(key, label):
        if key == "nsd/subj02" and label == "session 2":
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 inside the write

    with versioned.publishing(sys.argv[2]) as work:
        nfstore.ingest("nsd", sys.argv[1], work, on_block=on_block)
""")


def test_a_write_killed_inside_publishes_nothing_and_resumes(nsd_raw: Path, god_raw: Path,
                                                             nsd_store_ro: Path,
                                                             s3: dict[str, Any],
                                                             tmp_path: Path) -> None:
    env = _env(s3, tmp_path / "work")
    url = "s3://nf-test/killed-write/nf.zarr"
    os.environ.update({k: v for k, v in env.items() if k.startswith(("AWS_", "NF_", "FSSPEC_"))})
    try:
        import fsspec.config

        fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = s3["endpoint"]
        with versioned.publishing(url) as work:
            nfstore.ingest("god", god_raw, work)
        before = nfstore.open_store(url)
        proc = subprocess.run([sys.executable, "-c", KILL_WRITE, str(nsd_raw), url], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == -9, proc.stderr[-1500:]
        now = nfstore.open_store(url)
        assert now.version == before.version
        assert now.subjects() == ["god/sub-01", "god/sub-02"]
        with versioned.publishing(url) as work:  # the same write again: it resumes
            # a write killed half-way can leave zarr's temporary file: never published
            (work / "_staging" / "nsd" / "subj02" / "betas" / "c" / "0").mkdir(
                parents=True, exist_ok=True)
            (work / "_staging/nsd/subj02/betas/c/0/9.0123abcd.partial").write_bytes(b"x")
            summary = nfstore.ingest("nsd", nsd_raw, work)
        assert summary.resumed == ["nsd/subj02"]
        after = nfstore.open_store(url)
        assert after.subjects() == ["nsd/subj01", "nsd/subj02", "god/sub-01", "god/sub-02"]
        np.testing.assert_array_equal(after.betas("nsd/subj02").values,
                                      nfstore.open_store(nsd_store_ro).betas("nsd/subj02").values)
        plain = "s3://nf-test/plain/nf.zarr"
        s3["fs"].put(str(nsd_store_ro), plain[5:], recursive=True)
        with pytest.raises(OptionError, match="holds a plain copy of a store"):
            with versioned.publishing(plain):
                pass
    finally:
        fsspec.config.conf.get("s3", {}).pop("endpoint_url", None)
        for k in env:
            if k.startswith(("AWS_", "NF_", "FSSPEC_")):
                os.environ.pop(k, None)


def test_a_working_copy_never_overwrites_a_newer_publication(repo: dict[str, Any],
                                                           tmp_path: Path) -> None:
    """Two writers on one URL: the one that publishes second, from an older base, is refused
    with a one-line error and the first one's snapshot stays."""
    import fsspec.config

    from nfrecon.decode import decode_ridge

    url = "s3://nf-test/two-writers/nf.zarr"
    base = versioned.push(repo["local"], url, repo["opts"], message="base")
    again = versioned.push(repo["local"], url, repo["opts"])  # the same content: no snapshot
    assert again.snapshot == base.snapshot and again.line().startswith("nothing changed")
    theirs = Path(shutil.copytree(repo["local"], tmp_path / "theirs.zarr"))
    decode_ridge(theirs, "nsd/subj02", "theirs")
    os.environ["NF_WORKDIR"] = str(tmp_path / "work")
    fsspec.config.conf.setdefault("s3", {}).update(repo["opts"])
    try:
        with pytest.raises(nfstore.StoreError, match="another writer published snapshot"):
            with versioned.publishing(url, repo["opts"]) as work:
                assert (work / "zarr.json").is_file()  # a copy of the base snapshot
                other = versioned.push(theirs, url, repo["opts"], message="other")
        assert versioned.log(url, repo["opts"])[0]["snapshot"] == other.snapshot
    finally:
        os.environ.pop("NF_WORKDIR", None)
        for k in repo["opts"]:
            fsspec.config.conf.get("s3", {}).pop(k, None)


def _objects(store: Any) -> dict[str, bytes]:
    """Every published object of a zarr store: key -> bytes."""
    import asyncio

    from zarr.core.buffer import default_buffer_prototype

    async def read() -> dict[str, bytes]:
        keys = [k async for k in store.list() if _transfer.published(k)]
        proto = default_buffer_prototype()
        return {k: (await store.get(k, proto)).to_bytes() for k in keys}
    return asyncio.run(read())


def test_a_working_copy_pulls_only_what_changed(repo: dict[str, Any], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """After another writer publishes, the working copy fetches the objects Icechunk's diff
    names (and restores the ones it changed itself), not the whole store, and ends equal to
    main object for object; after a rollback it is copied whole."""
    import zarr.storage

    from nfrecon.decode import decode_ridge

    url = "s3://nf-test/pull/nf.zarr"
    monkeypatch.setenv("NF_WORKDIR", str(tmp_path / "work"))
    base = versioned.push(repo["local"], url, repo["opts"], message="base")
    first = versioned.pull(url, repo["opts"])
    assert first.whole and first.keys == base.keys and first.snapshot == base.snapshot
    assert versioned.pull(url, repo["opts"]).keys == 0  # already at main
    work = versioned.working_copy(url)
    (work / "_staging").mkdir()
    (work / "_staging" / "in-progress").write_text("a killed run's staged block")
    stale = next(p for p in (work / "nsd/subj01/betas/c").rglob("*") if p.is_file())
    stale.write_bytes(b"committed here, never published")
    extra = work / "nsd/subj01/betas/c/999/0"  # written here only: main lacks it
    extra.parent.mkdir()
    extra.write_bytes(b"never published")

    monkeypatch.setenv("NF_WORKDIR", str(tmp_path / "theirs"))  # another writer's machine
    with versioned.publishing(url, repo["opts"]) as theirs:
        decode_ridge(theirs, "nsd/subj02", "theirs")
        shutil.rmtree(theirs / "decoded" / "ridge")
        removed = sum(1 for p in (repo["local"] / "decoded/ridge").rglob("*") if p.is_file())
        added = sum(1 for p in (theirs / "decoded" / "theirs").rglob("*") if p.is_file())
    other = versioned.log(url, repo["opts"])[0]
    monkeypatch.setenv("NF_WORKDIR", str(tmp_path / "work"))

    second = versioned.pull(url, repo["opts"])
    assert not second.whole and second.snapshot == other["snapshot"]
    assert added + 1 <= second.keys <= added + 3  # the new set, the restored chunk, a parent
    assert second.deleted == removed + 1 and not extra.exists()
    main = _objects(versioned.read_session(url, repo["opts"])[0])
    assert _objects(zarr.storage.LocalStore(str(work))) == main
    assert (work / "_staging" / "in-progress").is_file()  # writes in progress stay

    versioned.rollback(url, base.snapshot, repo["opts"])
    third = versioned.pull(url, repo["opts"])
    assert third.whole and third.snapshot == base.snapshot
    assert _objects(zarr.storage.LocalStore(str(work))) == _objects(
        versioned.read_session(url, repo["opts"])[0])
    assert "changes only" in second.line() and "copied whole" in third.line()


def test_a_python_writer_publishes_to_a_versioned_url(repo: dict[str, Any], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """No CLI: a library writer given the URL writes one transaction, published as one
    snapshot on top of the one it started from."""
    from nfstore.pixels import cache_pixels

    monkeypatch.setenv("NF_WORKDIR", str(tmp_path / "work"))
    url = repo["url"].replace("/versioned/", "/python-writer/")
    versioned.push(repo["local"], url, repo["opts"], message="first")
    assert not nfstore.open_store(url, storage_options=repo["opts"]).has("stimuli/god/pixels")
    cache_pixels(url, ["god"], pixel_size=16, storage_options=repo["opts"])
    history = versioned.log(url, repo["opts"])
    assert [h["message"] for h in history][1:] == ["first", "Repository initialized"]
    rem = nfstore.open_store(url, storage_options=repo["opts"])
    assert rem.version == history[0]["snapshot"] and rem.has("stimuli/god/pixels")
    ids = rem.betas("god/sub-01", split="test").stimulus.values[:2]
    np.testing.assert_array_equal(rem.images(ids, size=(16, 16)).values,
                                  nfstore.open_store(repo["local"]).images(
                                      ids, size=(16, 16)).values)
