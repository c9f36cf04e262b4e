"""Versioned, language-neutral contracts (JSON Schema) shipped with NeuroFusion.

The documents are the ``*.schema.json`` files beside this module; :func:`load` returns one.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def load(name: str) -> dict[str, Any]:
    """Load the schema document ``<name>.schema.json`` (e.g. ``"store-v1"``)."""
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text()
    return json.loads(text)
