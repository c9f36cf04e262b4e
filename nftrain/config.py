"""Training configuration: one frozen dataclass, loaded from TOML with ``key=value`` overrides.

Unknown keys are errors that list the valid ones; every value is checked for its type (no
silent float -> int, no numbers given as text), finiteness and range, with a one-line error
naming the key, what it accepts and what was found. The resolved config is saved with every
checkpoint (``config.json``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfstore.errors import OptionError


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. The defaults are the recommended setting
    (``nf train STORE --set subjects=...`` with no ``--config``; docs/benchmarks.md, "Decoder
    quality").

    Attributes
    ----------
    subjects : subject keys of any datasets, e.g. ``["nsd/subj01", "god/sub-01"]``
    roi : ROI name for every subject (default: all voxels); ``roi_by_dataset`` overrides it
    embedding : cached embedding model (targets), e.g. ``ip-adapter-sdxl``
    synthetic : synthetic sets to add to the train trials (``[]``: none; ``["*"]``: all)
    synthetic_share : at most this fraction of each subject's training samples are synthetic
    adapter_dim, width, depth, dropout : model sizes (adapter -> backbone width -> head)
    lr, weight_decay, warmup_steps, schedule : AdamW and its learning-rate schedule
    batch_size, epochs, seed, device, output_dir
    temperature, learn_temperature : InfoNCE temperature (fixed, or learnable from this value)
    input_noise : std of Gaussian noise added to the betas while training
    mixup : probability of mixing a sample with another of the same subject (0: off)
    val_fraction : share of each subject's train stimuli held out for validation
    patience : epochs without validation improvement before stopping (0: never stop early)
    cache_mb : memory bound of the data loader's shuffle buffer
    amp : mixed precision on CUDA
    checkpoint_every : also save ``last/`` every this many steps (0: at epoch ends only)
    train_fraction : use this share of each subject's training stimuli (fine-tuning studies)
    keep_test_duplicates : train on copies of held-out (test/imagery) pictures found by
        ``nf leakage`` anywhere in the store (default: leave them out, and report how many)
    duplicate_max_distance : fingerprint bits within which two images are the same picture
    regression : weight of a cosine regression term (1 - cos(output, target)) added to InfoNCE
    ridge_init : start from closed-form ridge: a linear path from the adapter space to the
        embedding (the train targets' principal axes), each adapter set to the ridge solution
        into that space, the MLP's output layer at zero (see :mod:`nftrain.ridge_init`)
    select : validation figure that picks the best epoch and drives early stopping: ``loss``
        (InfoNCE) or ``top1`` (retrieval top-1 within validation batches; ties: lower loss)
    accumulate : optimizer step every this many batches (gradients averaged); under torchrun
        each rank's batch counts as one, so N ranks equal one process with ``accumulate = N``
        and ``shards = N``
    shards : under torchrun, each rank reads only its own share of the epoch's chunk-aligned
        blocks (its shard); ``shards = N`` in one process reads the N shards in turn, the same
        global batches as N ranks (``accumulate`` then counts the batches of all shards)
    """

    subjects: tuple[str, ...] = ()
    roi: str | None = None
    roi_by_dataset: dict[str, str] = field(default_factory=dict)
    embedding: str = "ip-adapter-sdxl"
    synthetic: tuple[str, ...] = ()
    synthetic_share: float = 0.5
    adapter_dim: int = 1024
    width: int = 1024
    depth: int = 2
    dropout: float = 0.1
    lr: float = 3e-4
    weight_decay: float = 1e-3
    warmup_steps: int = 0
    schedule: str = "cosine"
    batch_size: int = 256
    epochs: int = 30
    seed: int = 0
    device: str = "cpu"
    output_dir: str = "runs/nf"
    temperature: float = 0.1
    learn_temperature: bool = False
    input_noise: float = 0.15
    mixup: float = 0.0
    val_fraction: float = 0.1
    patience: int = 5
    cache_mb: int = 512
    amp: bool = True
    checkpoint_every: int = 0
    train_fraction: float = 1.0
    keep_test_duplicates: bool = False
    duplicate_max_distance: int = 3
    accumulate: int = 1
    shards: int = 1
    regression: float = 1.0
    ridge_init: bool = True
    select: str = "top1"

    def __post_init__(self) -> None:
        for name in FIELDS:
            object.__setattr__(self, name, check_value(name, getattr(self, name)))
        if self.accumulate % self.shards:
            raise OptionError(f"accumulate: expected a multiple of shards ({self.shards}); "
                              f"found {self.accumulate}")

    def roi_for(self, subject: str) -> str | None:
        return self.roi_by_dataset.get(subject.split("/")[0], self.roi)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


@dataclass(frozen=True)
class Rule:
    """What one config key accepts: a kind (``int``, ``float``, ``bool``, ``str``, ``str?``
    (a string or none), ``strs`` (a list of strings) or ``map`` (strings to strings)), a range
    and how the error message says both."""

    kind: str
    ok: Callable[[Any], bool]
    want: str


def _any(_: Any) -> bool:
    return True


def _ints(lo: int, hi: int | None = None) -> Rule:
    return Rule("int", lambda v: v >= lo and (hi is None or v <= hi),
                f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]")


def _floats(ok: Callable[[float], bool], want: str) -> Rule:
    return Rule("float", ok, f"a finite number {want}")


def _choice(*options: str) -> Rule:
    return Rule("str", lambda v: v in options, " or ".join(options))


_TEXT = Rule("str", bool, "a non-empty string")
_BOOL = Rule("bool", _any, "true or false")
RULES: dict[str, Rule] = {
    "subjects": Rule("strs", lambda v: len(v) > 0 and all(v),
                     "at least one subject key, e.g. ['nsd/subj01']"),
    "roi": Rule("str?", lambda v: v is None or bool(v), "an ROI name or none"),
    "roi_by_dataset": Rule("map", lambda v: all(v.values()),
                           "a table of dataset = ROI name, e.g. {nsd = 'nsdgeneral'}"),
    "embedding": _TEXT,
    "synthetic": Rule("strs", all, "a list of synthetic set names ([] or ['*'])"),
    "synthetic_share": _floats(lambda v: 0 <= v < 1, "in [0, 1)"),
    "adapter_dim": _ints(1), "width": _ints(1), "depth": _ints(0),
    "dropout": _floats(lambda v: 0 <= v < 1, "in [0, 1)"),
    "lr": _floats(lambda v: v > 0, "> 0"),
    "weight_decay": _floats(lambda v: v >= 0, ">= 0"),
    "warmup_steps": _ints(0),
    "schedule": _choice("cosine", "constant"),
    "batch_size": _ints(2), "epochs": _ints(1),
    "seed": _ints(0, 2**63 - 1),
    "device": _TEXT, "output_dir": _TEXT,
    "temperature": _floats(lambda v: v > 0, "> 0"),
    "learn_temperature": _BOOL,
    "input_noise": _floats(lambda v: v >= 0, ">= 0"),
    "mixup": _floats(lambda v: 0 <= v <= 1, "in [0, 1] (a probability)"),
    "val_fraction": _floats(lambda v: 0 < v < 1, "in (0, 1)"),
    "patience": _ints(0), "cache_mb": _ints(1), "amp": _BOOL, "checkpoint_every": _ints(0),
    "train_fraction": _floats(lambda v: 0 < v <= 1, "in (0, 1]"),
    "keep_test_duplicates": _BOOL,
    "duplicate_max_distance": _ints(0, 64),
    "accumulate": _ints(1), "shards": _ints(1),
    "regression": _floats(lambda v: v >= 0, ">= 0"),
    "ridge_init": _BOOL,
    "select": _choice("loss", "top1"),
}


def _found(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", tuple: "a list", dict: "a table", type(None): "none"}
    return f"{value!r} ({kind.get(type(value), type(value).__name__)})"


def _typed(kind: str, value: Any) -> tuple[bool, Any]:
    """(is ``value`` of ``kind``, the value in its stored form)."""
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok and math.isfinite(value), float(value) if ok else value
    if kind == "bool":
        return isinstance(value, bool), value
    if kind in ("str", "str?"):
        return isinstance(value, str) or (kind == "str?" and value is None), value
    if kind == "strs":
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        return ok, tuple(value) if ok else value
    ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str)
                                         for k, v in value.items())
    return ok, dict(value) if ok else value


def check_value(name: str, value: Any) -> Any:
    """``value`` of config key ``name`` in its stored form, or a one-line :class:`OptionError`
    naming the key, what it accepts and what was found (wrong type, non-finite, out of range).
    """
    rule = RULES[name]
    ok, value = _typed(rule.kind, value)
    if not ok or not rule.ok(value):
        raise OptionError(f"{name}: expected {rule.want}; found {_found(value)}")
    return value


def _coerce(name: str, value: Any) -> Any:
    """Text forms a key also accepts: ``a,b`` for lists and ``nsd:V1,god:VC`` for tables."""
    kind = RULES[name].kind
    if kind == "str?" and value in ("", "none", "None"):
        return None
    if kind == "strs" and isinstance(value, str):
        return tuple(v for v in value.split(",") if v)
    if kind == "map" and isinstance(value, str):
        pairs = [kv.split(":", 1) for kv in value.split(",") if kv]
        if all(len(p) == 2 for p in pairs):
            return dict(pairs)
    return value


def build(values: dict[str, Any]) -> TrainConfig:
    """A config from a mapping; unknown keys are an error listing the valid ones."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise OptionError(f"unknown config keys {unknown}; valid keys: {sorted(FIELDS)}")
    return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})


def example(name: str) -> Path:
    """Path of a shipped example config: ``paper`` or ``demo-cpu``."""
    from importlib import resources

    return Path(str(resources.files("nftrain").joinpath(f"configs/{name}.toml")))


def load(config_file: str | Path | None, overrides: list[str] = ()) -> TrainConfig:  # type: ignore
    """Read a TOML config (``None``: defaults) and apply ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if config_file is not None:
        p = Path(config_file)
        if not p.is_file():
            raise OptionError(f"config_file: expected a TOML file; found {p}, which does not "
                              f"exist")
        data = p.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise OptionError(f"config_file: expected UTF-8 TOML; found byte "
                              f"0x{data[err.start]:02x} at offset {err.start} of {p}, which is "
                              f"not UTF-8") from None
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise OptionError(f"config_file: expected TOML; found {p}, which is not valid "
                              f"TOML ({err})") from None
    values.update(parse_overrides(overrides))
    return build(values)


def _from_text(name: str, text: str) -> Any:
    """An override's value: JSON where it parses; for number keys also Python's number syntax
    (``.001``, ``1e-3``); text as it is for string keys and where nothing else parses."""
    kind = RULES[name].kind if name in RULES else ""
    try:
        value = json.loads(text)
    except ValueError:
        value = text
        converters: dict[str, Callable[[str], Any]] = {"int": int, "float": float}
        if kind in converters:
            try:
                value = converters[kind](text.strip())
            except ValueError:
                pass
        return value
    if kind in ("str", "str?") and not isinstance(value, str) and value is not None:
        return text  # e.g. output_dir=2024: a name, not a number
    return value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["epochs=5", 'subjects=["nsd/subj01"]']`` -> values (JSON where it parses, else text;
    see :func:`_from_text`)."""
    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise OptionError(f"overrides: expected key=value; found {item!r}")
        values[key.strip()] = _from_text(key.strip(), text)
    return values
