"""Every config key is checked at the boundary: type, finiteness and range, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

import nfstore
from nftrain.config import FIELDS, RULES, TrainConfig, build, load, parse_overrides

NAN, INF = float("nan"), float("inf")
BASE = {"subjects": ["nsd/subj01"]}

# key -> values it must refuse (wrong type, non-finite, out of range)
BAD: dict[str, list[object]] = {
    "subjects": [[], "", [1], [""], 3],
    "roi": [3, ["V1"], 0.5],
    "roi_by_dataset": [{"nsd": 1}, {"nsd": ""}, ["nsd"], "nsd"],
    "embedding": ["", 1, None],
    "synthetic": [[1], [""], 2],
    "synthetic_share": [1.0, -0.1, NAN, INF, "0.5", True],
    "adapter_dim": [-4, 0, 2.5, 16.0, "16", True, None],
    "width": [0, -1, 8.5, "8"],
    "depth": [-1, 1.5, "2"],
    "dropout": [1.5, 1.0, -0.1, NAN, INF, "0.1"],
    "lr": [0.0, -1e-3, NAN, INF, "1e-3"],
    "weight_decay": [NAN, -1.0, INF, "0"],
    "warmup_steps": [-1, 1.5, "10"],
    "schedule": ["linear", "", 1],
    "batch_size": [1, 0, 32.5, "32"],
    "epochs": [2.5, "3", 0, -1, 3.0, True],
    "seed": [-1, 2**63, 1.5, "0"],
    "device": ["", 0],
    "output_dir": ["", 1.5],
    "temperature": [0.0, -0.1, NAN, INF, "0.1"],
    "learn_temperature": ["maybe", "true", 1, None],
    "input_noise": [NAN, -0.1, INF, "0.1"],
    "mixup": [1.5, -0.1, NAN, "0"],
    "val_fraction": [0.0, 1.0, 1.5, NAN],
    "patience": [-1, 2.5, "5"],
    "cache_mb": [0, -1, 1.5, "512"],
    "amp": ["yes", 0],
    "checkpoint_every": [-1, 0.5, "0"],
    "train_fraction": [0.0, 1.5, NAN, "1"],
    "keep_test_duplicates": ["no", 1],
    "duplicate_max_distance": [-1, 65, 3.5, "3"],
    "accumulate": [0, 1.5, "2"],
    "shards": [0, -2, 2.0, "1"],
    "regression": [-1.0, NAN, INF, "1"],
    "ridge_init": ["false", 0],
    "select": ["accuracy", 1],
}

# key -> a value it must accept other than the default, and how it is stored
GOOD: dict[str, tuple[object, object]] = {
    "subjects": ("nsd/subj01,god/sub-01", ("nsd/subj01", "god/sub-01")),
    "roi": ("none", None), "roi_by_dataset": ("nsd:V1", {"nsd": "V1"}),
    "synthetic_share": (0, 0.0), "dropout": (0, 0.0), "lr": (1, 1.0),
    "epochs": (1, 1), "seed": (2**63 - 1, 2**63 - 1), "mixup": (1, 1.0),
}


def test_the_table_covers_every_key() -> None:
    assert set(BAD) == set(FIELDS) == set(RULES)


@pytest.mark.parametrize("key, value", [(k, v) for k, vs in BAD.items() for v in vs])
def test_every_key_refuses_wrong_type_nonfinite_and_out_of_range(key: str, value: object
                                                                 ) -> None:
    with pytest.raises(nfstore.OptionError) as err:
        build({**BASE, key: value})
    text = str(err.value)
    assert text.startswith(f"{key}: expected ") and "; found " in text, text
    assert "\n" not in text


@pytest.mark.parametrize("key", sorted(GOOD))
def test_accepted_values_are_stored_in_their_type(key: str) -> None:
    value, stored = GOOD[key]
    got = getattr(build({**BASE, key: value}), key)
    assert got == stored and type(got) is type(stored)


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(nfstore.OptionError, match=r"^dropout: expected a finite number in "
                                                  r"\[0, 1\); found 1.5"):
        TrainConfig(subjects=("nsd/subj01",), dropout=1.5)
    with pytest.raises(nfstore.OptionError, match=r"^accumulate: expected a multiple of "
                                                  r"shards \(2\); found 3"):
        TrainConfig(subjects=("nsd/subj01",), accumulate=3, shards=2)


@pytest.mark.parametrize("item, key, value", [
    ("epochs=3", "epochs", 3), ("lr=.001", "lr", 0.001), ("lr=1e-3", "lr", 0.001),
    ("output_dir=2024", "output_dir", "2024"), ("roi=V1", "roi", "V1"),
    ("roi=null", "roi", None), ("amp=false", "amp", False),
])
def test_overrides_parse_as_their_key_expects(item: str, key: str, value: object) -> None:
    assert parse_overrides([item]) == {key: value}
    assert getattr(load(None, ['subjects=["nsd/subj01"]', item]), key) == value


@pytest.mark.parametrize("item, message", [
    ("epochs=2.5", "epochs: expected an integer >= 1; found 2.5 (a number)"),
    ('epochs="3"', "epochs: expected an integer >= 1; found '3' (a string)"),
    ("input_noise=NaN", "input_noise: expected a finite number >= 0; found nan"),
    ("weight_decay=nan", "weight_decay: expected a finite number >= 0; found nan"),
    ("seed=-1", "seed: expected an integer in [0, 9223372036854775807]; found -1"),
])
def test_overrides_are_checked(item: str, message: str) -> None:
    with pytest.raises(nfstore.OptionError) as err:
        load(None, ['subjects=["nsd/subj01"]', item])
    assert str(err.value).startswith(message), str(err.value)


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "x.toml"
    bad.write_bytes(b"\xff")
    with pytest.raises(nfstore.OptionError) as err:
        load(bad)
    assert str(err.value) == (f"config_file: expected UTF-8 TOML; found byte 0xff at "
                              f"offset 0 of {bad}, which is not UTF-8")
    (tmp_path / "y.toml").write_text('subjects = ["nsd/subj01"]\nepochs = "3"\n')
    with pytest.raises(nfstore.OptionError, match=r"^epochs: expected an integer >= 1; found "
                                                  r"'3' \(a string\)$"):
        load(tmp_path / "y.toml")


@pytest.mark.parametrize("device", ["foo", "cuda:x"])
def test_a_device_torch_does_not_know_is_one_line(device: str) -> None:
    from nftrain.train import _device

    want = (r"^device: expected a torch device \(cpu, cuda, cuda:N, mps, \.\.\.\); "
            rf"found '{device}'$")
    with pytest.raises(nfstore.OptionError, match=want):
        _device(build({**BASE, "device": device}))
