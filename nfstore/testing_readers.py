"""The reader contract suite (as xarray's backend tests): subclass :class:`ReaderTests` in a
test module, set ``reader_class`` (and small ``synth_settings``), and pytest runs every check
against a raw tree the reader's own synthetic generator writes.

>>> class TestMyReader(ReaderTests):          # in tests/test_my_reader.py
...     reader_class = MyReader
...     synth_settings = {"subjects": (1,)}

Import it as ``from nfstore.testing import ReaderTests`` (needs pytest).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from nfstore.errors import OptionError
from nfstore.names import SPLITS, VOXEL_COORDS
from nfstore.readers import get_reader
from nfstore.readers.base import RawSubject, Reader

TRIAL_COLUMNS = ("stimulus", "split", "session", "run", "repeat")


class ReaderTests:
    """Checks every reader must pass (subclass it; see the module docstring).

    Attributes
    ----------
    reader_class : the :class:`~nfstore.readers.Reader` subclass under test (registered, built
        in or through the ``nfstore.readers`` entry point group)
    synth_settings : settings of its synthetic generator (small sizes keep the suite fast)
    options : ingest options (``Reader.parse_options`` values)
    """

    reader_class: ClassVar[type[Reader]]
    synth_settings: ClassVar[dict[str, Any]] = {"subjects": (1,)}
    options: ClassVar[dict[str, Any]] = {}

    # ------------------------------------------------------------------ fixtures
    @pytest.fixture(scope="class")
    @classmethod
    def reader(cls) -> Reader:
        return cls.reader_class()

    @pytest.fixture(scope="class")
    @classmethod
    def raw_root(cls, reader: Reader, tmp_path_factory: pytest.TempPathFactory) -> Path:
        """A small raw tree written by the reader's synthetic generator."""
        from nfstore._fields import from_values

        config = reader.synth_config()
        if config is None:
            pytest.skip(f"{reader.name} has no synthetic generator; override raw_root")
        cfg = from_values(config, dict(cls.synth_settings), f"a setting of the {reader.name} "
                          "generator")
        reader.check_synth(cfg)
        out = tmp_path_factory.mktemp(f"raw-{reader.name}")
        reader.synthesize(out, cfg)
        return out

    @pytest.fixture(scope="class")
    @classmethod
    def first(cls, reader: Reader, raw_root: Path) -> RawSubject:
        """The first subject found, opened."""
        subject = reader.list_subjects(raw_root)[0]
        return reader.open_subject(raw_root, subject, reader.parse_options(cls.options))

    @pytest.fixture(scope="class")
    @classmethod
    def store(cls, reader: Reader, raw_root: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Path:
        """The first subject ingested without normalization."""
        import nfstore

        path = tmp_path_factory.mktemp(f"store-{reader.name}") / "nf.zarr"
        subject = reader.list_subjects(raw_root)[0]
        nfstore.ingest(reader.name, raw_root, path, subjects=[subject],
                       options=dict(cls.options), normalization="none")
        return path

    # ------------------------------------------------------------------ declarations
    def test_name_is_registered(self, reader: Reader) -> None:
        assert isinstance(reader.name, str) and re.fullmatch(r"[a-z][a-z0-9_-]*", reader.name)
        assert type(get_reader(reader.name)) is self.reader_class

    def test_options_are_a_dataclass_with_defaults(self, reader: Reader) -> None:
        assert dataclasses.is_dataclass(reader.Options)
        assert reader.parse_options({}) == reader.Options()
        with pytest.raises(OptionError, match=r"^no_such_option: not an option of "):
            reader.parse_options({"no_such_option": "1"})

    def test_default_normalization_is_known(self, reader: Reader) -> None:
        from nfstore.normalize import NORMALIZATIONS

        assert reader.normalization in NORMALIZATIONS

    def test_subjects_are_listed_and_named(self, reader: Reader, raw_root: Path) -> None:
        found = reader.list_subjects(raw_root)
        assert found and found == sorted(found)
        for name in found:
            assert re.fullmatch(reader.subject_pattern, name), name
            assert reader.subject_name(name) == name
        with pytest.raises(OptionError, match=r"^subjects: expected "):
            reader.subject_name("no such subject!")

    # ------------------------------------------------------------------ reading
    def test_open_subject_shapes_and_dtypes(self, reader: Reader, first: RawSubject) -> None:
        n, v = first.n_trials, first.n_voxels
        assert first.dataset == reader.store_dataset() and n > 0 and v > 0
        assert all(c in first.trials.columns for c in TRIAL_COLUMNS)
        for col in ("session", "run", "repeat"):
            assert first.trials[col].to_numpy().dtype.kind == "i", col
        assert set(first.trials["split"]) <= set(SPLITS)
        prefix = f"{reader.store_dataset()}/"
        assert all(str(s).startswith(prefix) for s in first.trials["stimulus"])
        assert np.asarray(first.norm_group).shape == (n,)
        assert first.roi_mask.dtype == bool and first.roi_mask.shape == (len(first.roi_names), v)
        assert all(first.voxels[c].shape == (v,) for c in VOXEL_COORDS)
        assert [b.start for b in first.blocks] == [0] + [b.stop for b in first.blocks[:-1]]
        assert first.blocks[-1].stop == n
        x = first.blocks[0].load()
        assert x.dtype == np.float32 and x.shape == (first.blocks[0].stop, v)

    def test_stimulus_table(self, reader: Reader, raw_root: Path, first: RawSubject) -> None:
        table = reader.stimulus_table(raw_root, reader.parse_options(self.options))
        ids = table.stimulus.tolist()
        assert table.dataset == reader.store_dataset() and len(ids) == len(set(ids)) > 0
        assert len(table.file) == len(table.index) == len(ids)
        assert all(str(s).startswith(f"{reader.store_dataset()}/") for s in ids)
        assert set(first.trials["stimulus"]) & set(ids)

    # ------------------------------------------------------------------ ingest
    def test_ingest_round_trips_the_betas(self, reader: Reader, first: RawSubject,
                                          store: Path) -> None:
        import nfstore
        from nfstore.schema import validate_store

        st = nfstore.open_store(store)
        key = f"{reader.store_dataset()}/{first.subject}"
        assert st.subjects() == [key]
        want = np.concatenate([b.load() for b in first.blocks])
        np.testing.assert_array_equal(st.betas(key).values, want)
        assert validate_store(st) == []
