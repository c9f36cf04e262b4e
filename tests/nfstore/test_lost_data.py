"""Stores that lost data: a chunk deleted or truncated under a folder or under a versioned
store on S3 (moto's server on 127.0.0.1) is named by ``nf validate`` and refused by every
reader with one line (never read as fill values); ``nf push`` repairs a versioned store from
a local copy before it commits; unreachable or missing buckets, read-only and uncreatable
store folders, staged sets and emptied ``_trash`` folders."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from nf.main import _register, cli

import nfstore
from nfstore import _layout, versioned
from nfstore._remote import DENSE_ATTR
from nfstore.errors import ChunkError, StoreError
from nfstore.schema import validate_store


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    _register()
    return CliRunner()


def _one_line_error(result: Any, *needles: str) -> str:
    """The CLI failed with one ``Error:`` line holding every needle and no traceback."""
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _second_chunk(store: Path, array: str = "nsd/subj01/betas") -> Path:
    return store / array / "c" / "1" / "0"


# ------------------------------------------------------------------ local folders
def test_a_deleted_chunk_is_an_error_for_every_reader(nsd_store: Path, runner: CliRunner,
                                                      tmp_path: Path) -> None:
    _second_chunk(nsd_store).unlink()
    st = nfstore.open_store(nsd_store)  # metadata only: opens
    with pytest.raises(ChunkError, match=r"nsd/subj01/betas: chunk \(1, 0\) "
                                         r"\(nsd/subj01/betas/c/1/0\).*found none") as err:
        st.betas("nsd/subj01").values  # noqa: B018
    assert err.value.key == "nsd/subj01/betas/c/1/0" and "nf validate" in str(err.value)
    # the trainer's reads: the zarr array from Store.betas_array, slabs and ROI columns
    arr = st.betas_array("nsd/subj01")
    with pytest.raises(ChunkError):
        arr[arr.chunks[0]:]
    with pytest.raises(ChunkError):
        arr.get_orthogonal_selection((slice(arr.chunks[0], None), np.array([0, 3])))
    np.testing.assert_array_equal(np.isfinite(arr[:arr.chunks[0]]), True)  # the rest reads
    out = tmp_path / "q.npy"
    r = runner.invoke(cli, ["query", str(nsd_store), "nsd/subj01", "--out", str(out)])
    _one_line_error(r, "nsd/subj01/betas: chunk (1, 0)", "nf validate")
    assert not out.exists()  # no NaN rows written


def test_a_lost_coordinate_chunk_is_an_error(nsd_store: Path) -> None:
    """Any array whose chunks were all written when it was put in place is marked so; its
    lost chunk is an error (here a small coordinate read when the subject is opened)."""
    meta = zarr.open_array(str(nsd_store / "nsd/subj01/session"), mode="r")
    assert meta.attrs[DENSE_ATTR] == meta.nchunks == 1
    (nsd_store / "nsd/subj01/session/c/0").unlink()
    with pytest.raises(ChunkError, match=r"nsd/subj01/session: chunk \(0,\)"):
        nfstore.open_store(nsd_store).dataset("nsd/subj01")
    problems = validate_store(nfstore.open_store(nsd_store))
    assert any("nsd/subj01/session: chunk (0,)" in p for p in problems), problems


def test_arrays_with_unwritten_chunks_are_not_marked(tmp_path: Path) -> None:
    """A chunk equal to the fill value is never written (zarr's default): such arrays keep
    reading fill values there."""
    g = zarr.open_group(str(tmp_path / "g"), mode="w", zarr_format=3)
    g.create_array("zeros", shape=(4,), chunks=(2,), dtype="int64")[:] = [0, 0, 1, 2]
    g.create_array("full", shape=(4,), chunks=(2,), dtype="int64")[:] = [1, 2, 3, 4]
    _layout.mark_dense(tmp_path / "g")
    assert DENSE_ATTR not in g["zeros"].attrs and g["full"].attrs[DENSE_ATTR] == 2


def test_a_truncated_chunk_is_named_by_validate_and_refused_by_readers(
        nsd_store: Path, runner: CliRunner, tmp_path: Path) -> None:
    chunk = _second_chunk(nsd_store, "nsd/subj02/betas")
    size = chunk.stat().st_size
    chunk.write_bytes(chunk.read_bytes()[:100])
    r = runner.invoke(cli, ["validate", str(nsd_store)])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert (f"nsd/subj02/betas: chunk (1, 0) (nsd/subj02/betas/c/1/0): expected {size} bytes"
            f" (its blosc header); found 100 (truncated or damaged)") in r.output, r.output
    with pytest.raises(ChunkError, match="found 100 \\(truncated"):
        nfstore.open_store(nsd_store).betas("nsd/subj02", roi="V1").values  # noqa: B018
    r = runner.invoke(cli, ["query", str(nsd_store), "nsd/subj02", "--out",
                            str(tmp_path / "q.nc")])
    _one_line_error(r, "nsd/subj02/betas: chunk (1, 0)", "truncated")


def test_a_damaged_coordinate_chunk_is_named(nsd_store: Path, runner: CliRunner,
                                             tmp_path: Path) -> None:
    """Small arrays are zstd-compressed (no size in their header): a damaged one fails to
    decode; readers say so in one line naming the group, ``nf validate`` names the chunk."""
    chunk = nsd_store / "nsd/subj01/split/c/0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    r = runner.invoke(cli, ["query", str(nsd_store), "nsd/subj01", "--out",
                            str(tmp_path / "q.npy")])
    _one_line_error(r, f"{nsd_store}/nsd/subj01: expected arrays whose chunks decode; found "
                       "RuntimeError: Zstd decompression error")
    problems = validate_store(nfstore.open_store(nsd_store))
    assert problems == [f"{nsd_store}/nsd/subj01/split: chunk (0,) (nsd/subj01/split/c/0): "
                        f"expected a chunk that decodes; found RuntimeError: Zstd "
                        f"decompression error: invalid input data"], problems


# ------------------------------------------------------------------ writers, layout
@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_store_is_a_one_line_error(nsd_store: Path, nsd_raw: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               code: int) -> None:
    real = os.open

    def refuse(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(_layout.LOCK_FILE):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(StoreError, match=f"{nsd_store}: expected a writable store folder; "
                                         f"found it read-only") as err:
        nfstore.ingest("nsd", nsd_raw, nsd_store, subjects=["1"], overwrite=True,
                       progress=False)
    assert "\n" not in str(err.value)


def test_an_uncreatable_store_folder_is_a_one_line_error(runner: CliRunner,
                                                         nsd_raw: Path) -> None:
    r = runner.invoke(cli, ["ingest", "nsd", str(nsd_raw), "--store", "/proc/self/x.zarr",
                            "--no-progress"])
    _one_line_error(r, "/proc/self/x.zarr: expected a folder that can be created")


def test_replacing_a_set_leaves_no_trash(nsd_store: Path) -> None:
    key = "decoded/ridge/nsd/subj01"
    for value in (1.0, 2.0):
        with nfstore.transaction(nsd_store, "nf test", check=False) as tx:
            staged, _, _ = tx.stage(key)
            g = zarr.open_group(str(staged), mode="r+")
            g.create_array("embedding", shape=(2, 3), dtype="float32")[:] = value
            tx.commit(key)
    assert not (nsd_store / "_trash").exists()
    assert zarr.open_array(str(nsd_store / key / "embedding"), mode="r")[0, 0] == 2.0


def test_info_names_a_staged_set_by_its_kind(nsd_store: Path, runner: CliRunner) -> None:
    for name in ("reconstructions.rr.nsd.subj01", "decoded.demo.nsd.subj02",
                 "nsd/subj01.synthetic.syn"):
        zarr.open_group(str(_layout.staging_path(nsd_store, name)), mode="w", zarr_format=3)
    staged = nfstore.open_store(nsd_store).staged_writes()
    assert set(staged) == {"reconstructions/rr/nsd/subj01", "decoded/demo/nsd/subj02",
                           "nsd/subj01/synthetic/syn"}
    r = runner.invoke(cli, ["info", str(nsd_store)])
    assert r.exit_code == 0, r.output
    assert ("reconstructions/rr/nsd/subj01: incomplete reconstruction set 'rr' (staged); "
            f"rerun `nf reconstruct {nsd_store} ... --name rr") in r.output
    assert "decoded/demo/nsd/subj02: incomplete decoded set 'demo'" in r.output
    assert f"incomplete synthetic set 'syn' (staged); rerun `nf augment {nsd_store} " \
           f"nsd/subj01 ... --name syn`" in r.output
    assert "ingest" not in r.output


# ------------------------------------------------------------------ versioned stores on S3
@pytest.fixture
def damaged(nsd_store: Path, s3: dict[str, Any], request: pytest.FixtureRequest
            ) -> dict[str, Any]:
    """A versioned store pushed from ``nsd_store``, then its largest chunk object (a betas
    chunk) deleted from the bucket."""
    url = f"s3://{s3['bucket']}/lost-{request.node.name[:40]}/nf.zarr"
    first = versioned.push(nsd_store, url, s3["options"], message="first")
    objects = s3["fs"].find(f"{url[5:]}/chunks")
    s3["fs"].rm(max(objects, key=s3["fs"].size))
    return {"url": url, "local": nsd_store, "first": first, "opts": s3["options"], **s3}


def _cli_options(s3: dict[str, Any]) -> list[str]:
    return [f"--storage-option=endpoint_url={s3['endpoint']}", "--storage-option=key=testing",
            "--storage-option=secret=testing",
            "--storage-option=client_kwargs.region_name=us-east-1"]


def test_a_lost_chunk_object_is_named_by_validate_and_readers(damaged: dict[str, Any],
                                                              runner: CliRunner) -> None:
    url = damaged["url"]
    st = nfstore.open_store(url, storage_options=damaged["opts"])
    problems = validate_store(st)
    lost = [p for p in problems if "NoSuchKey" in p]
    assert len(lost) == 1 and "/betas: chunk (" in lost[0], problems
    subject = lost[0].split(f"{url}/")[1].split("/betas")[0]
    with pytest.raises(ChunkError, match="NoSuchKey"):
        st.betas(subject).values  # noqa: B018
    try:
        r = runner.invoke(cli, ["validate", url, *_cli_options(damaged)])
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert f"{subject}/betas: chunk (" in r.output and "NoSuchKey" in r.output
    finally:
        import fsspec.config

        fsspec.config.conf.pop("s3", None)  # --storage-option configures the process


def test_push_repairs_lost_chunks_before_it_commits(damaged: dict[str, Any]) -> None:
    url, opts = damaged["url"], damaged["opts"]
    summary = versioned.push(damaged["local"], url, opts, message="repair")
    assert summary.repaired == 1 and summary.keys == 1, summary
    assert "1 lost chunks repaired" in summary.line()
    assert [s["message"] for s in versioned.log(url, opts)][:2] == ["repair", "first"]
    st = nfstore.open_store(url, storage_options=opts)
    assert validate_store(st) == []
    local = nfstore.open_store(damaged["local"])
    for subject in local.subjects():
        np.testing.assert_array_equal(st.betas(subject).values, local.betas(subject).values)


def test_a_push_that_cannot_repair_publishes_nothing(damaged: dict[str, Any],
                                                     tmp_path: Path) -> None:
    url, opts = damaged["url"], damaged["opts"]
    local = Path(shutil.copytree(damaged["local"], tmp_path / "copy.zarr"))
    for chunk in local.glob("nsd/*/betas/c/*/*"):  # the local copy has lost them too
        chunk.write_bytes(chunk.read_bytes()[:50])
    before = versioned.log(url, opts)
    with pytest.raises(StoreError, match=f"{url}: expected a snapshot that validates; found "
                                         f".*nothing was published") as err:
        versioned.push(local, url, opts, message="bad")
    assert "\n" not in str(err.value)
    assert versioned.log(url, opts) == before


def test_a_writer_on_a_damaged_store_repairs_it_or_stops_in_one_line(
        damaged: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, opts = damaged["url"], damaged["opts"]
    monkeypatch.setenv("NF_WORKDIR", str(tmp_path / "work"))
    with pytest.raises(StoreError, match="NoSuchKey.*no working copy can be made; repair "
                                         "with `nf push LOCAL") as err:
        with versioned.publishing(url, opts, message="nf embed"):
            pass  # a fresh working copy: the lost chunk cannot be pulled
    assert "\n" not in str(err.value)
    assert len(versioned.log(url, opts)) == 2  # nothing published
    # a working copy taken before the loss holds the chunk: its writer repairs the store
    work = versioned.working_copy(url)
    shutil.rmtree(work.parent)
    shutil.copytree(damaged["local"], work)
    versioned._write_sync(work, url, damaged["first"].snapshot)
    with versioned.publishing(url, opts, message="nf embed") as folder:
        from nfstore.lowlevel import embed_pixels

        embed_pixels(folder, size=8)
    assert versioned.log(url, opts)[0]["message"] == "nf embed"
    assert validate_store(nfstore.open_store(url, storage_options=opts)) == []


def test_missing_bucket_and_unreachable_endpoint_are_one_line(s3: dict[str, Any]) -> None:
    with pytest.raises(StoreError, match="s3://no-such-bucket/x.zarr: expected a versioned "
                                         ".*found NoSuchBucket"):
        versioned.log("s3://no-such-bucket/x.zarr", s3["options"])
    with pytest.raises(StoreError, match="s3://no-such-bucket/x.zarr: expected a reachable "
                                         "bucket; found NoSuchBucket"):
        nfstore.open_store("s3://no-such-bucket/x.zarr", storage_options=s3["options"])
    closed = {**s3["options"], "endpoint_url": "http://127.0.0.1:1",
              "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1}}
    with pytest.raises(StoreError, match="s3://nf-test/x.zarr: expected a reachable store; "
                                         "found EndpointConnectionError") as err:
        nfstore.open_store("s3://nf-test/x.zarr", storage_options=closed)
    assert "\n" not in str(err.value)


def test_embedding_arrays_written_before_the_mark_are_checked_too(tmp_path: Path) -> None:
    """An embedding cache written in place (no mark) reads its lost chunk as an error, not
    as zeros (its fill value)."""
    import zarr.storage

    from nfstore._remote import checked

    arr = zarr.open_group(str(tmp_path), mode="w", zarr_format=3).create_array(
        "embeddings/m/embedding", shape=(4, 2), chunks=(2, 2), dtype="float32")
    arr[:] = np.arange(8, dtype="float32").reshape(4, 2) + 1
    assert DENSE_ATTR not in arr.attrs
    (tmp_path / "embeddings/m/embedding/c/1/0").unlink()
    store = checked(zarr.storage.LocalStore(str(tmp_path), read_only=True), "loc")
    back = zarr.open_array(store, path="embeddings/m/embedding", mode="r")
    np.testing.assert_array_equal(back[:2], [[1, 2], [3, 4]])
    with pytest.raises(ChunkError, match=r"loc/embeddings/m/embedding: chunk \(1, 0\)"):
        back[2:]
