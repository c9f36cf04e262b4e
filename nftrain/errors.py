"""Errors of the trainer (subclassing the builtin they stand for, as nfstore's do)."""

from __future__ import annotations

from nfstore.errors import NFError


class TrainingError(NFError, FloatingPointError):
    """Training met a non-finite value (loss, model outputs or inputs)."""
