"""Training configuration: one frozen dataclass, loaded from TOML with ``key=value`` overrides.

Unknown keys are errors that list the valid ones; the resolved config is saved with every
checkpoint (``config.json``).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from nfstore.errors import OptionError


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. The defaults are the recommended setting
    (``nf train STORE --set subjects=...`` with no ``--config``; README, "Decoder quality").

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
        if not self.subjects:
            raise OptionError("subjects: expected at least one subject key, e.g. "
                              "['nsd/subj01']")
        checks = [("batch_size", self.batch_size >= 2, "an integer >= 2"),
                  ("epochs", self.epochs >= 1, "an integer >= 1"),
                  ("lr", self.lr > 0, "a positive number"),
                  ("temperature", self.temperature > 0, "a positive number"),
                  ("val_fraction", 0 < self.val_fraction < 1, "a number in (0, 1)"),
                  ("synthetic_share", 0 <= self.synthetic_share < 1, "a number in [0, 1)"),
                  ("train_fraction", 0 < self.train_fraction <= 1, "a number in (0, 1]"),
                  ("mixup", 0 <= self.mixup <= 1, "a probability in [0, 1]"),
                  ("schedule", self.schedule in ("cosine", "constant"), "cosine or constant"),
                  ("depth", self.depth >= 0, "an integer >= 0"),
                  ("cache_mb", self.cache_mb >= 1, "a positive integer"),
                  ("accumulate", self.accumulate >= 1, "a positive integer"),
                  ("shards", self.shards >= 1, "a positive integer"),
                  ("accumulate", self.accumulate % self.shards == 0,
                   f"a multiple of shards ({self.shards})"),
                  ("regression", self.regression >= 0, "a number >= 0"),
                  ("select", self.select in ("loss", "top1"), "loss or top1"),
                  ("duplicate_max_distance", 0 <= self.duplicate_max_distance <= 64,
                   "an integer in [0, 64]")]
        for name, ok, want in checks:
            if not ok:
                raise OptionError(f"{name}: expected {want}; got {getattr(self, name)!r}")

    def roi_for(self, subject: str) -> str | None:
        return self.roi_by_dataset.get(subject.split("/")[0], self.roi)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    hint = typing.get_type_hints(TrainConfig)[name]
    origin = typing.get_origin(hint)
    try:
        if origin is tuple:
            items = value if isinstance(value, (list, tuple)) else [
                v for v in str(value).split(",") if v]
            return tuple(str(v) for v in items)
        if origin is dict:
            return dict(value) if isinstance(value, dict) else dict(
                kv.split(":", 1) for kv in str(value).split(",") if kv)
        if hint is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return str(value).lower() in ("true", "1")
        if hint in (int, float):
            return hint(value)
        if hint == (str | None):
            return None if value in (None, "", "none", "None") else str(value)
        return str(value)
    except (TypeError, ValueError):
        raise OptionError(f"{name}: expected {hint}; got {value!r}") from None


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


def load(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:  # type: ignore
    """Read a TOML config (``None``: defaults) and apply ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise OptionError(f"--config: {p} does not exist")
        try:
            values = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as err:
            raise OptionError(f"--config {p}: not valid TOML ({err})") from None
    values.update(parse_overrides(overrides))
    return build(values)


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["epochs=5", 'subjects=["nsd/subj01"]']`` -> values (JSON where it parses, else text)."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise OptionError(f"--set: expected key=value; got {item!r}")
        try:
            values[key.strip()] = json.loads(text)
        except ValueError:
            values[key.strip()] = text
    return values
