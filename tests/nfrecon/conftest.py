"""Fixtures shared with the trainer tests."""

from tests.nftrain.conftest import small_cfg  # noqa: F401
