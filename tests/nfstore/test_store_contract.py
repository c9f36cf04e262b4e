"""The write-path contract (:mod:`tests.nfstore.store_contract`) for a local folder and for a
versioned store on S3 (moto), plus what ``staged_writes`` makes of the staged names."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import zarr

import nfstore
from nfstore import transaction, versioned
from nfstore.errors import SchemaError, StoreError
from nfstore.transaction import key_of_staged, staged_name
from tests.nfstore.store_contract import KEY, StoreContract, value_at, write


class TestLocalStore(StoreContract):
    @pytest.fixture
    def location(self, tmp_path: Path) -> str:
        path = tmp_path / "nf.zarr"
        nfstore.open_store(path, mode="a")
        return str(path)

    def test_open_store_mode_a_creates(self, tmp_path: Path) -> None:
        new = tmp_path / "new" / "nf.zarr"
        with pytest.raises(SchemaError, match="expected a NeuroFusion store; found nothing"):
            with transaction(new, "nf contract"):
                pass
        assert nfstore.open_store(new, mode="a").subjects() == []
        with nfstore.open_store(new, mode="a").transaction("nf contract") as tx:
            write(tx.stage(KEY)[0], 1.0)
            tx.commit(KEY)
        assert value_at(nfstore.open_store(new), KEY) == 1.0

    def test_a_writer_holding_the_lock_directly_is_refused(self, location: str) -> None:
        from nfstore import _layout  # the lock alone, as another process would hold it

        with _layout.writing(Path(location), "nf other"):
            with pytest.raises(StoreError, match=f"process {os.getpid()}, nf other"):
                with transaction(location, "nf contract"):
                    pass
        with transaction(location, "nf contract") as tx:  # free again
            write(tx.stage(KEY)[0], 2.0)
            tx.commit(KEY)
        assert value_at(nfstore.open_store(location), KEY) == 2.0


class TestVersionedStore(StoreContract):
    published_at_end = True

    @pytest.fixture
    def opts(self, s3: dict[str, Any]) -> dict[str, Any]:
        return s3["options"]

    @pytest.fixture
    def location(self, s3: dict[str, Any], tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> str:
        monkeypatch.setenv("NF_WORKDIR", str(tmp_path / "work"))
        seed = tmp_path / "seed.zarr"
        nfstore.open_store(seed, mode="a")
        url = f"s3://{s3['bucket']}/contract-{uuid.uuid4().hex[:12]}/nf.zarr"
        versioned.push(seed, url, s3["options"], message="first")
        return url

    def test_a_second_writer_is_refused_before_it_opens_a_branch(
            self, location: str, opts: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        import threading

        from nfstore import direct

        pulls: list[str] = []
        real = direct.RemoteWork

        def counted(url: str, *a: Any, **k: Any) -> Any:
            pulls.append(url)
            return real(url, *a, **k)

        monkeypatch.setattr(direct, "RemoteWork", counted)
        errors: list[BaseException] = []

        def second() -> None:  # a thread has a context of its own: it does not join
            try:
                with transaction(location, "nf second", storage_options=opts):
                    pass
            except StoreError as err:
                errors.append(err)

        with transaction(location, "nf first", storage_options=opts):
            thread = threading.Thread(target=second)
            thread.start()
            thread.join()
        assert len(pulls) == 1 and len(errors) == 1  # the second never made a branch
        assert "another writer holds the store (process" in str(errors[0])

    def test_a_transaction_on_a_new_url_makes_a_versioned_store(
            self, s3: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("NF_WORKDIR", str(tmp_path / "work"))
        url = f"s3://{s3['bucket']}/contract-new-{uuid.uuid4().hex[:12]}/nf.zarr"
        with transaction(url, "nf contract", storage_options=s3["options"]) as tx:
            write(tx.stage(KEY)[0], 1.0)
            tx.commit(KEY)
        store = nfstore.open_store(url, storage_options=s3["options"])
        assert value_at(store, KEY) == 1.0 and store.version is not None
        assert versioned.log(url, s3["options"])[0]["message"] == "nf contract"


# -------------------------------------------------------------------- staged names
@pytest.mark.parametrize("key", [KEY, "nsd/subj01", "stimuli/nsd", "a b/c%d"])
def test_staged_name_is_one_quoted_component(key: str) -> None:
    assert "/" not in staged_name(key) and key_of_staged(staged_name(key)) == key


@pytest.mark.parametrize("key, what, progress", [
    ("decoded/rr/nsd/subj01", "decoded set 'rr'", "staged"),
    ("reconstructions/rr/nsd/subj01", "reconstruction set 'rr'", "staged"),
    ("reconstructions/rr/nsd/subj01/metrics", "metrics of a reconstruction set", "staged"),
    ("embeddings/ip-adapter-sdxl", "embedding cache 'ip-adapter-sdxl'", "staged"),
    ("stimuli/novel", "stimulus table 'novel'", "staged"),
    ("nsd/subj01/synthetic/syn", "synthetic set 'syn'", "staged"),
    ("nsd/subj01", "ingest", "2 blocks written"),
])
def test_staged_writes_are_named_by_their_key(tmp_path: Path, key: str, what: str,
                                              progress: str) -> None:
    path = tmp_path / "nf.zarr"
    nfstore.open_store(path, mode="a")
    with transaction(path, "nf contract") as tx:
        tx.stage(key)
        if progress != "staged":
            tx.save(key, {"identity": {}, "blocks_done": [0, 1]})
    staged = nfstore.open_store(path).staged_writes()
    assert list(staged) == [key] and staged[key][0] == what and staged[key][2] == progress
    assert nfstore.open_store(path).incomplete() == {key: progress}


def test_names_staged_by_earlier_versions_are_still_listed(tmp_path: Path) -> None:
    path = tmp_path / "nf.zarr"
    nfstore.open_store(path, mode="a")
    staging = path / "_staging"
    for name in ("reconstructions.rr.nsd.subj01", "decoded.demo.nsd.subj02",
                 "nsd/subj01.synthetic.syn", "embeddings.m", "stimuli/novel", "nsd/subj02"):
        zarr.open_group(str(staging / name), mode="w", zarr_format=3)
    (staging / "nsd" / "subj02.json").write_text(json.dumps({"blocks_done": [3]}))
    staged = nfstore.open_store(path).staged_writes()
    assert {k: v[0] for k, v in staged.items()} == {
        "reconstructions/rr/nsd/subj01": "reconstruction set 'rr'",
        "decoded/demo/nsd/subj02": "decoded set 'demo'",
        "nsd/subj01/synthetic/syn": "synthetic set 'syn'",
        "embeddings/m": "embedding cache 'm'", "stimuli/novel": "stimulus table 'novel'",
        "nsd/subj02": "ingest"}
    assert staged["nsd/subj02"][2] == "1 blocks written"
