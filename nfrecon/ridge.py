"""Kept for callers not yet moved: the ridge decoders live in :mod:`nfstore.decoding`."""

from __future__ import annotations

from nfstore.decoding import DEFAULT_ALPHAS, RidgeFit, fit_ridge

__all__ = ["DEFAULT_ALPHAS", "RidgeFit", "fit_ridge"]
