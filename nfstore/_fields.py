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
    flags : unused (kept for callers); messages name fields as Python parameters
    """
    known = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(k for k, v in values.items() if v is not None and k not in known)
    if unknown:  # named by the parameter (the CLI shows its flag)
        raise OptionError(f"{unknown[0]}: not {what}; valid: {', '.join(known)}")
    return cls(**{k: v for k, v in values.items() if v is not None})
