"""``nf finetune``: the config of a fine-tuning run derived from the checkpoint's."""

from __future__ import annotations

import json
from pathlib import Path

from nfstore.errors import MissingFileError
from nftrain.config import TrainConfig, build, load, parse_overrides


def finetune_config(init: str | Path, subjects: list[str], fraction: float,
                    config_file: str | None = None,
                    overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The training config of the checkpoint ``init`` (or ``config_file``) with the new
    ``subjects``, the data ``fraction``, no synthetic sets and ``output_dir`` beside the
    checkpoint; then the ``key=value`` overrides."""
    path = Path(init) / "config.json"
    if not path.is_file():
        raise MissingFileError(f"init: expected a checkpoint folder with config.json; found "
                               f"{init}")
    if config_file is not None:
        base = load(config_file).to_dict()
    else:
        base = json.loads(path.read_text())["train_config"]
        base["synthetic"] = []
        tag = "-".join(s.replace("/", "_") for s in subjects)
        base["output_dir"] = str(Path(init).parent / f"finetune-{tag}")
    base.update(subjects=subjects, train_fraction=fraction)
    base.update(parse_overrides(overrides))
    return build(base)
