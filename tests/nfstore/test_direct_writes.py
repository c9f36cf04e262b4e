"""Writes to a versioned store URL without a local copy of the store (moto's S3 server on
127.0.0.1): a work branch per command, resume after SIGKILL at any point (block writes, the
move of ``main``), a store re-created at the same URL, two racing writers, local disk use."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nfstore
from nfstore import branches, direct, versioned
from nfstore.errors import StoreError

ROOT = Path(__file__).parents[2]


def _env(s3: dict[str, Any], tmp: Path) -> dict[str, str]:
    """A fresh machine: its own empty home and work folders, credentials in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_", "NF_"))}
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    return {**env, "FSSPEC_S3_ENDPOINT_URL": s3["endpoint"], "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": s3["endpoint"], "HOME": str(tmp / "home"),
            "NF_WORKDIR": str(tmp / "work")}


@pytest.fixture
def url(s3: dict[str, Any]) -> str:
    return f"s3://{s3['bucket']}/direct-{uuid.uuid4().hex[:10]}/nf.zarr"


@pytest.fixture
def env(s3: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    import fsspec.config

    e = _env(s3, tmp_path)
    for k, v in e.items():
        if k.startswith(("AWS_", "NF_", "FSSPEC_")):
            monkeypatch.setenv(k, v)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3["endpoint"]})
    return e


KILL = textwrap.dedent("""
    import os, signal, sys
    import icechunk
    import nfstore
    from nfstore import branches, direct

    where = sys.argv[3]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def on_block(key, label):
        if where == "block" and key == "nsd/subj02" and label == "session 2":
            die()  # kill -9 while the blocks of the second subject are written

    mark, reset = branches.mark_done, icechunk.Repository.reset_branch

    def marked(repo, branch):
        if where == "before-done":
            die()  # every subject committed on the branch; main not moved
        mark(repo, branch)
        if where == "after-done":
            die()

    def moved(self, *a, **k):
        reset(self, *a, **k)
        if where == "after-reset":
            die()  # main moved; the branch not yet deleted

    real, uploads = direct.transfer, []

    async def cut(src, dst, keys, gone, on_key, progress, label, **k):
        if where == "upload" and label == "upload" and any("subj02/betas/c" in x for x in keys):
            uploads.append(1)
            if len(uploads) == 3:  # half of a resume point's objects sent, then kill -9
                await real(src, dst, keys[:len(keys) // 2], [], on_key, progress, label)
                die()
        return await real(src, dst, keys, gone, on_key, progress, label, **k)

    direct.transfer = cut
    branches.mark_done = marked
    icechunk.Repository.reset_branch = moved
    nfstore.ingest("nsd", sys.argv[1], sys.argv[2], on_block=on_block)
""")


@pytest.mark.parametrize("where", ["block", "upload", "before-done", "after-done",
                                   "after-reset"])
def test_an_ingest_killed_anywhere_finishes_when_rerun(where: str, url: str, env: dict[str, str],
                                                      nsd_raw: Path, god_raw: Path,
                                                      nsd_store_ro: Path) -> None:
    nfstore.ingest("god", god_raw, url)
    before = nfstore.open_store(url)
    proc = subprocess.run([sys.executable, "-c", KILL, str(nsd_raw), url, where], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-1500:]
    now = nfstore.open_store(url)
    if where == "after-reset":  # main moved before the kill: readers see the whole ingest
        assert now.subjects() == ["nsd/subj01", "nsd/subj02", "god/sub-01", "god/sub-02"]
    else:  # readers see the previous snapshot, never a part of the ingest
        assert now.version == before.version
        assert now.subjects() == ["god/sub-01", "god/sub-02"]
    listed = branches.listing(url)
    assert [b["command"] for b in listed] == ["nf ingest nsd"]
    summary = nfstore.ingest("nsd", nsd_raw, url)  # the same command again: it finishes
    if where in ("block", "upload"):
        # subj01 was committed on the work branch before the kill: kept, not written again
        assert summary.resumed == ["nsd/subj02"] and summary.subjects == ["nsd/subj02"]
        assert summary.skipped == ["nsd/subj01"]
    after = nfstore.open_store(url)
    assert after.subjects() == ["nsd/subj01", "nsd/subj02", "god/sub-01", "god/sub-02"]
    local = nfstore.open_store(nsd_store_ro)
    for subject in ("nsd/subj01", "nsd/subj02"):
        np.testing.assert_array_equal(after.betas(subject).values, local.betas(subject).values)
    assert after.stimuli("nsd").equals(local.stimuli("nsd"))
    assert branches.listing(url) == []  # the finished command's branch is gone
    assert not any(Path(env["NF_WORKDIR"]).rglob("*.zarr"))  # and its scratch folder
    assert [h["message"] for h in versioned.log(url)[:2]] == ["nf ingest nsd", "nf ingest god"]


def test_a_store_recreated_at_the_same_url_ingests_again(url: str, env: dict[str, str],
                                                        s3: dict[str, Any], god_raw: Path,
                                                        tmp_path: Path) -> None:
    nfstore.ingest("god", god_raw, url)
    # what the previous implementation left: a half-synced working copy of the old store
    stale = direct.workdir(url) / "nf.zarr"
    stale.mkdir(parents=True)
    (stale / "zarr.json").write_text("{}")
    s3["fs"].rm(url[len("s3://"):], recursive=True)  # the store is deleted and re-made
    summary = nfstore.ingest("god", god_raw, url)
    assert summary.subjects == ["god/sub-01", "god/sub-02"]
    st = nfstore.open_store(url)
    nfstore.ingest("god", god_raw, tmp_path / "local.zarr")
    np.testing.assert_array_equal(
        st.betas("god/sub-01").values,
        nfstore.open_store(tmp_path / "local.zarr").betas("god/sub-01").values)
    assert len(versioned.log(url)) == 2  # a new history: the initial snapshot and the ingest


def test_two_writers_of_different_keys_both_land(url: str, env: dict[str, str],
                                                 nsd_store_ro: Path, tmp_path: Path) -> None:
    """A writer that finishes after another one published (main moved under it) applies its
    changes on top; an overlapping change is refused in one line and publishes nothing."""
    import zarr

    from nfstore import transaction

    versioned.push(nsd_store_ro, url, message="base")

    def put(tx: Any, key: str, value: float) -> None:
        staged, _, _ = tx.stage(key)
        zarr.open_group(str(staged), mode="r+").create_array(
            "x", shape=(3,), dtype="float32", fill_value=0.0)[:] = value
        tx.commit(key)

    def elsewhere(command: str, key: str, value: float) -> None:
        """Another machine (its own work folder; a thread has a context of its own, so its
        transaction does not join this one) writes ``key`` and publishes."""
        import threading

        errors: list[BaseException] = []

        def run() -> None:
            try:
                with transaction(url, command) as tx:
                    put(tx, key, value)
            except BaseException as err:  # noqa: BLE001 (reported to the test)
                errors.append(err)

        os.environ["NF_WORKDIR"] = str(tmp_path / "other")
        try:
            thread = threading.Thread(target=run)
            thread.start()
            thread.join()
        finally:
            os.environ["NF_WORKDIR"] = env["NF_WORKDIR"]
        assert errors == []

    with transaction(url, "nf first") as first:
        put(first, "contract/a", 1.0)
        elsewhere("nf second", "contract/b", 2.0)  # main moves under the first writer
    st = nfstore.open_store(url, check=False)
    assert float(st.group("contract/a")["x"][0]) == 1.0
    assert float(st.group("contract/b")["x"][0]) == 2.0
    assert st.subjects() == ["nsd/subj01", "nsd/subj02"]
    assert [h["message"] for h in versioned.log(url)[:3]] == ["nf first", "nf second", "base"]
    with pytest.raises(StoreError, match="overlap another writer's; found both changed "
                       "/contract/a") as err:
        with transaction(url, "nf third") as third:
            put(third, "contract/a", 3.0)
            elsewhere("nf fourth", "contract/a", 4.0)
    assert "\n" not in str(err.value)
    assert float(nfstore.open_store(url, check=False).group("contract/a")["x"][0]) == 4.0
    assert branches.listing(url) == []


def test_embedding_on_a_fresh_machine_keeps_little_on_its_disk(
        url: str, env: dict[str, str], s3: dict[str, Any], nsd_store_ro: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``nf embed URL --model pixels`` on a machine with nothing local: the scratch folder
    never holds more than a quarter of the store's bytes, and nothing stays after."""
    from click.testing import CliRunner
    from nf.main import _register, cli

    versioned.push(nsd_store_ro, url, message="base")
    store_bytes = s3["fs"].du(url[len("s3://"):])
    peak = [0]
    real = direct.RemoteWork.checkpoint

    def measured(self: Any, *a: Any, **k: Any) -> Any:
        used = sum(f.stat().st_size for f in Path(env["NF_WORKDIR"]).rglob("*") if f.is_file())
        peak[0] = max(peak[0], used)
        return real(self, *a, **k)

    monkeypatch.setattr(direct.RemoteWork, "checkpoint", measured)
    _register()
    res = CliRunner().invoke(cli, ["embed", url, "--model", "pixels", "--size", "8",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert 0 < peak[0] <= store_bytes / 4, (peak[0], store_bytes)
    left = [f for f in Path(env["NF_WORKDIR"]).rglob("*") if f.is_file()]
    assert left == []
    st = nfstore.open_store(url)
    assert "pixels" in " ".join(st.embedding_models())
    assert versioned.log(url)[0]["message"].startswith("nf embed")


def test_branch_names_and_identity() -> None:
    assert branches.slug("nf ingest nsd") == "ingest-nsd"
    assert branches.slug("nf embed --model pixels") == "embed-model-pixels"


def test_log_branches_and_gc_reclaim_abandoned_work(url: str, env: dict[str, str],
                                                    nsd_store_ro: Path) -> None:
    """A killed write's branch is listed by ``nf log --branches``; ``nf gc`` removes it and
    the objects only it referenced; the store reads as before."""
    import zarr
    from click.testing import CliRunner
    from nf.main import _register, cli

    from nfstore import transaction

    versioned.push(nsd_store_ro, url, message="base")
    with pytest.raises(KeyboardInterrupt):
        with transaction(url, "nf contract") as tx:
            staged, _, _ = tx.stage("contract/x", identity={"seed": 1})
            zarr.open_group(str(staged), mode="r+").create_array(
                "x", shape=(64,), dtype="float64", fill_value=0.0)[:] = 1.5
            tx.save("contract/x", {"identity": {"seed": 1}, "rows_done": 64})
            raise KeyboardInterrupt
    [branch] = branches.listing(url)
    assert branch["command"] == "nf contract" and branch["staged"] == ["contract/x"]
    assert not branch["done"] and branch["base"] == versioned.log(url)[0]["snapshot"]
    _register()
    out = CliRunner().invoke(cli, ["log", url, "--branches"])
    assert out.exit_code == 0 and branch["branch"] in out.output
    assert "nf contract" in out.output and "in progress: contract/x" in out.output
    info = CliRunner().invoke(cli, ["info", url]).output
    assert f"nf contract: unfinished on work branch {branch['branch']} (contract/x)" in info
    assert f"local disk for {url}: " in info
    assert "would" not in CliRunner().invoke(cli, ["gc", url, "--dry-run"]).output
    kept = CliRunner().invoke(cli, ["gc", url, "--dry-run", "--older-than-days", "0"])
    assert f"removed abandoned work branches: {branch['branch']}" in kept.output
    assert branches.listing(url) == [branch]  # a dry run removes nothing
    summary = branches.gc(url, older_than_days=0)
    assert summary.branches == [branch["branch"]] and summary.objects > 0
    assert branches.listing(url) == []
    st = nfstore.open_store(url)
    np.testing.assert_array_equal(st.betas("nsd/subj01").values,
                                  nfstore.open_store(nsd_store_ro).betas("nsd/subj01").values)
    with transaction(url, "nf contract") as tx:  # nothing left to resume
        assert tx.stage("contract/x", identity={"seed": 1})[2] is False
        tx.discard("contract/x")


def test_cluster_workers_write_forks_of_the_work_branch(url: str, env: dict[str, str],
                                                        nsd_raw: Path, nsd_store_ro: Path,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--scheduler`` on a URL: two worker processes, each with empty home, temporary and
    work folders of their own, write their blocks into forks of the work branch's session;
    the driver merges and commits them. No betas chunk passes through a local folder."""
    from distributed import LocalCluster

    folders = {k: tmp_path / f"worker-{k.lower()}" for k in ("HOME", "TMPDIR", "NF_WORKDIR")}
    for f in folders.values():
        f.mkdir()
    seen: list[str] = []
    real = direct.RemoteWork.checkpoint

    def watched(self: Any, *a: Any, **k: Any) -> Any:
        seen.extend(str(p) for p in self.root.rglob("*") if "/betas/c/" in str(p))
        return real(self, *a, **k)

    monkeypatch.setattr(direct.RemoteWork, "checkpoint", watched)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, local_directory=str(tmp_path / "dask"),
                      env={k: str(v) for k, v in folders.items()}) as cluster:
        summary = nfstore.ingest("nsd", nsd_raw, url, scheduler=cluster.scheduler_address)
    assert summary.subjects == ["nsd/subj01", "nsd/subj02"] and seen == []
    st, local = nfstore.open_store(url), nfstore.open_store(nsd_store_ro)
    for subject in summary.subjects:
        np.testing.assert_array_equal(st.betas(subject).values, local.betas(subject).values)
    assert not any(f.is_file() for f in folders["NF_WORKDIR"].rglob("*"))
    assert branches.listing(url) == []


def test_a_replaced_key_keeps_what_the_writer_moves_into_it(url: str, env: dict[str, str],
                                                            nsd_store_ro: Path) -> None:
    """What re-ingesting a subject does to its synthetic sets, on a URL: the old version's
    sub-group is brought into the scratch folder (``tx.path``), moved into the staged
    group, and lands in the new version with its values; appends to an existing group
    (``require_group``) keep the rows written before."""
    import zarr

    from nfstore import transaction

    versioned.push(nsd_store_ro, url, message="base")
    with transaction(url, "nf contract") as tx:
        staged, _, _ = tx.stage("contract/k")
        g = zarr.open_group(str(staged), mode="r+")
        g.create_array("x", shape=(2,), dtype="int64", fill_value=0)[:] = [1, 2]
        g.create_group("synthetic").create_array(
            "s", shape=(6,), chunks=(2,), dtype="float32", fill_value=0.0)[:] = np.arange(6)
        tx.commit("contract/k")
        cache = tx.require_group("contract/cache")
        cache.create_array("rows", shape=(2,), chunks=(1,), dtype="int64", fill_value=0)[:] = 7
    with transaction(url, "nf contract again") as tx:
        old = tx.path("contract/k/synthetic")
        assert float(zarr.open_array(str(old / "s"), mode="r")[5]) == 5.0  # brought in
        staged, _, _ = tx.stage("contract/k")
        zarr.open_group(str(staged), mode="r+").create_array(
            "x", shape=(2,), dtype="int64", fill_value=0)[:] = [3, 4]
        os.rename(old, staged / "synthetic")
        tx.commit("contract/k")
        cache = tx.require_group("contract/cache")
        cache["rows"].resize((3,))
        cache["rows"][2] = 8
    st = nfstore.open_store(url, check=False)
    assert st.group("contract/k")["x"][:].tolist() == [3, 4]
    assert st.group("contract/k/synthetic")["s"][:].tolist() == list(range(6))
    assert st.group("contract/cache")["rows"][:].tolist() == [7, 7, 8]
    assert st.subjects() == ["nsd/subj01", "nsd/subj02"]
