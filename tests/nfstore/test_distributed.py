"""nf ingest --scheduler: blocks as tasks on a Dask LocalCluster of two worker processes
(127.0.0.1), the same store values as a local ingest."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import nfstore
from nfstore.errors import ReaderError
from nfstore.schema import validate_store


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as c:
        yield c


def _same_stores(a: Path, b: Path) -> None:
    sa, sb = nfstore.open_store(a), nfstore.open_store(b)
    assert sa.subjects() == sb.subjects()
    for key in sa.subjects():
        da, db = sa.dataset(key), sb.dataset(key)
        np.testing.assert_array_equal(da["betas"].values, db["betas"].values)  # bitwise
        for c in da.coords:
            np.testing.assert_array_equal(da[c].values, db[c].values)
        assert sa.attrs(key) == sb.attrs(key)
    assert validate_store(sb) == []


@pytest.mark.parametrize("dataset,normalization", [("nsd", None), ("god", "train-global")])
def test_cluster_ingest_equals_a_local_ingest(cluster, dataset: str, normalization: str | None,
                                              nsd_raw: Path, god_raw: Path,
                                              tmp_path: Path) -> None:
    from distributed import Client

    raw = {"nsd": nsd_raw, "god": god_raw}[dataset]
    nfstore.ingest(dataset, raw, tmp_path / "local.zarr", normalization=normalization)
    summary = nfstore.ingest(dataset, raw, tmp_path / "cluster.zarr", normalization=normalization,
                             scheduler=cluster.scheduler_address)
    assert summary.subjects == nfstore.open_store(tmp_path / "local.zarr").subjects()
    _same_stores(tmp_path / "local.zarr", tmp_path / "cluster.zarr")
    # the blocks were loaded by the workers (each keeps the subject it reopened), not here
    module = importlib.import_module("nfstore.ingest_cluster")

    with Client(cluster.scheduler_address) as client:
        opened = client.run(lambda: len(module._OPENED))
    assert sum(opened.values()) >= 1 and not module._OPENED


def test_a_bad_block_on_a_worker_is_a_clean_error(cluster, raw_copy: Path,
                                                  tmp_path: Path) -> None:
    """A file that breaks only when a worker reads it: the one-line error reaches the caller,
    the failing subject leaves no trace."""
    victim = next(raw_copy.glob("nsddata_betas/ppdata/subj02/**/betas_session02.nii.gz"))
    data = victim.read_bytes()
    victim.write_bytes(data[:int(len(data) * 0.3)])  # header fine, data cut short
    with pytest.raises(ReaderError):
        nfstore.ingest("nsd", raw_copy, tmp_path / "s.zarr", scheduler=cluster.scheduler_address)
    st = nfstore.open_store(tmp_path / "s.zarr")
    assert st.subjects() == ["nsd/subj01"] and st.incomplete() == {}
