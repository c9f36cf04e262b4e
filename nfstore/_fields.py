"""Building option dataclasses from user values, with one error for names they do not have."""

from __future__ import annotations

import dataclasses
from typing import Any

from nfstore.errors import OptionError


def from_values(cls: Any, values: dict[str, Any], what: str, flags: bool = True) -> Any:
    """``cls(**values)`` without ``None`` values; unknown names are a one-line OptionError.

    Parameters
    ----------
    cls : a dataclass
    values : field name -> value (``None`` keeps the field's default)
    what : how the message names a field, e.g. ``"an option of nsd"``
    flags : list the valid fields as ``--flags`` (else as plain names)
    """
    known = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(k for k, v in values.items() if v is not None and k not in known)
    if unknown:
        def flag(k: str) -> str:
            return f"--{k.replace('_', '-')}"

        valid = ", ".join(flag(k) if flags else k for k in known)
        raise OptionError(f"{', '.join(flag(k) for k in unknown)}: not {what}; valid: {valid}")
    return cls(**{k: v for k, v in values.items() if v is not None})
