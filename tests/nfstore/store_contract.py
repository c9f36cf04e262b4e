"""The store's write-path contract, as zarr's ``StoreTests``: one base class of tests of
:func:`nfstore.transaction` that every kind of store location passes. A subclass says how
a location is made (the ``location`` fixture), its ``storage_options`` (``opts``) and whether
commits are published only when the block ends (``published_at_end``: a versioned URL).

Not collected itself (no ``Test`` prefix); ``test_store_contract.py`` subclasses it for a
local folder and for a versioned store on moto's S3 server.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import nfstore
from nfstore import transaction
from nfstore.errors import SchemaError, StoreError

KEY = "contract/nsd/subj01"  # groups the store schema does not describe
OTHER = "contract/nsd/subj02"


def write(staged: Path, value: float, name: str = "x") -> None:
    """An array ``name`` (4,) float32 filled with ``value`` in the staged group."""
    g = zarr.open_group(str(staged), mode="r+")
    g.create_array(name, shape=(4,), dtype="float32", fill_value=0.0, overwrite=True)[:] = value


def value_at(store: nfstore.Store, key: str, name: str = "x") -> float:
    return float(np.asarray(store.group(key)[name][:])[0])


class StoreContract:
    """The write path's contract; subclasses provide the ``location`` and ``opts`` fixtures."""

    published_at_end = False  # a versioned URL: readers of the location see commits at the end

    @pytest.fixture
    def location(self) -> str:  # an existing, empty store
        raise NotImplementedError

    @pytest.fixture
    def opts(self) -> dict[str, Any] | None:
        return None

    def reader(self, location: str, opts: dict[str, Any] | None) -> nfstore.Store:
        """The store as a reader of ``location`` sees it now."""
        return nfstore.open_store(location, storage_options=opts, check=False)

    def tx(self, location: str, opts: dict[str, Any] | None, **kw: Any) -> Any:
        return transaction(location, "nf contract", storage_options=opts, **kw)

    # ---------------------------------------------------------------- stage and commit

    def test_a_staged_key_is_visible_only_after_commit(self, location: str,
                                                       opts: dict[str, Any] | None) -> None:
        with self.tx(location, opts) as tx:
            staged, state, resumed = tx.stage(KEY, identity={"seed": 0})
            assert (resumed, state) == (False, {"identity": {"seed": 0}})
            assert staged == tx.root / "_staging" / "contract%2Fnsd%2Fsubj01"
            write(staged, 1.0)
            assert not nfstore.open_store(tx.root, check=False).has(KEY)
            assert KEY in nfstore.open_store(tx.root, check=False).staged_writes()
            tx.commit(KEY)
            local = nfstore.open_store(tx.root, check=False)
            assert value_at(local, KEY) == 1.0 and local.staged_writes() == {}
            assert self.reader(location, opts).has(KEY) is not self.published_at_end
            assert tx.committed == [KEY] and tx.state(KEY) is None
        assert value_at(self.reader(location, opts), KEY) == 1.0

    def test_a_commit_replaces_the_previous_version(self, location: str,
                                                    opts: dict[str, Any] | None) -> None:
        for value in (1.0, 2.0):
            with self.tx(location, opts) as tx:
                staged, _, _ = tx.stage(KEY)
                write(staged, value)
                tx.commit(KEY)
        assert value_at(self.reader(location, opts), KEY) == 2.0

    # ---------------------------------------------------------------- resume and discard

    def _interrupted(self, location: str, opts: dict[str, Any] | None) -> None:
        """A writer that staged ``KEY`` (value 3, ``rows_done`` 2) and then failed."""
        with pytest.raises(KeyboardInterrupt):
            with self.tx(location, opts) as tx:
                staged, _, _ = tx.stage(KEY, identity={"weights": "a"})
                write(staged, 3.0)
                tx.save(KEY, {"identity": {"weights": "a"}, "rows_done": 2})
                raise KeyboardInterrupt

    def test_the_same_identity_resumes(self, location: str,
                                       opts: dict[str, Any] | None) -> None:
        self._interrupted(location, opts)
        assert not self.reader(location, opts).has(KEY)
        with self.tx(location, opts) as tx:
            listed = nfstore.open_store(tx.root, check=False).staged_writes()
            assert listed[KEY][0] == "write" and listed[KEY][2] == "staged"
            staged, state, resumed = tx.stage(KEY, identity={"weights": "a"})
            assert resumed and state["rows_done"] == 2
            assert float(zarr.open_array(str(staged / "x"), mode="r")[0]) == 3.0
            tx.commit(KEY)
        assert value_at(self.reader(location, opts), KEY) == 3.0

    def test_another_identity_restarts(self, location: str,
                                       opts: dict[str, Any] | None) -> None:
        self._interrupted(location, opts)
        with self.tx(location, opts) as tx:
            staged, state, resumed = tx.stage(KEY, identity={"weights": "b"})
            assert not resumed and state == {"identity": {"weights": "b"}}
            assert "x" not in zarr.open_group(str(staged), mode="r")

    def test_discard_removes_the_staged_group_and_its_progress(
            self, location: str, opts: dict[str, Any] | None) -> None:
        self._interrupted(location, opts)
        with self.tx(location, opts) as tx:
            tx.discard(KEY)
            assert not tx.staged(KEY).exists() and tx.state(KEY) is None
            assert nfstore.open_store(tx.root, check=False).staged_writes() == {}

    # ---------------------------------------------------------------- writers

    def test_a_second_writer_gets_a_one_line_error(self, location: str,
                                                   opts: dict[str, Any] | None) -> None:
        errors: list[BaseException] = []

        def second() -> None:  # another thread: a context of its own, so it does not join
            try:
                with self.tx(location, opts):
                    pass
            except BaseException as err:  # noqa: BLE001 (reported to the test)
                errors.append(err)

        with self.tx(location, opts):
            thread = threading.Thread(target=second)
            thread.start()
            thread.join()
        assert len(errors) == 1 and isinstance(errors[0], StoreError), errors
        assert "another writer holds the store" in str(errors[0])
        assert "\n" not in str(errors[0])

    def test_nested_transactions_join(self, location: str,
                                      opts: dict[str, Any] | None) -> None:
        with self.tx(location, opts) as tx:
            with self.tx(location, opts) as inner:
                assert inner is tx
            with transaction(str(tx.root), "nf inner") as by_folder:  # what the CLI passes on
                assert by_folder is tx
            with nfstore.open_store(tx.root, check=False).transaction("nf inner") as by_store:
                assert by_store is tx
                staged, _, _ = by_store.stage(KEY)
                write(staged, 4.0)
                by_store.commit(KEY)
            assert tx.committed == [KEY]
        assert value_at(self.reader(location, opts), KEY) == 4.0

    def test_a_failure_commits_nothing_further(self, location: str,
                                               opts: dict[str, Any] | None) -> None:
        before = self.reader(location, opts).version
        with pytest.raises(RuntimeError, match="boom"):
            with self.tx(location, opts) as tx:
                staged, _, _ = tx.stage(KEY)
                write(staged, 5.0)
                tx.commit(KEY)
                staged, _, _ = tx.stage(OTHER)
                write(staged, 6.0)
                raise RuntimeError("boom")
        after = self.reader(location, opts)
        assert not after.has(OTHER)
        assert after.has(KEY) is not self.published_at_end  # a URL publishes nothing
        assert after.version == before

    def test_a_commit_that_breaks_the_schema_is_an_error(
            self, location: str, opts: dict[str, Any] | None) -> None:
        before = self.reader(location, opts).version
        with pytest.raises(SchemaError, match="stimuli/nsd") as err:
            with self.tx(location, opts) as tx:
                tx.stage("stimuli/nsd")  # a stimulus table without its columns
                tx.commit("stimuli/nsd")
        assert "\n" not in str(err.value)
        if self.published_at_end:
            assert not self.reader(location, opts).has("stimuli/nsd")
            assert self.reader(location, opts).version == before

    def test_require_group_and_replace(self, location: str, opts: dict[str, Any] | None,
                                       tmp_path: Path) -> None:
        with self.tx(location, opts) as tx:
            g = tx.require_group("contract/cache")
            g.attrs["count"] = 1
            assert tx.require_group("contract/cache").attrs["count"] == 1
            new = tx.root / "_staging" / "contract-table"
            new.mkdir(parents=True)
            zarr.open_group(str(new), mode="w", zarr_format=3).attrs["v"] = 7
            tx.replace("contract/table", new)
            assert not new.exists()
        st = self.reader(location, opts)
        assert st.group("contract/table").attrs["v"] == 7
        assert st.group("contract/cache").attrs["count"] == 1

    def test_store_transaction(self, location: str, opts: dict[str, Any] | None) -> None:
        store = self.reader(location, opts)
        with store.transaction("nf contract") as tx:
            staged, _, _ = tx.stage(KEY)
            write(staged, 8.0)
            tx.commit(KEY)
        assert value_at(self.reader(location, opts), KEY) == 8.0
