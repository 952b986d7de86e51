"""Tests for the package's public face."""

from __future__ import annotations

import batchrunner


def test_all_is_sorted_and_importable() -> None:
    """__all__ is short, sorted, and every name in it exists."""
    assert list(batchrunner.__all__) == sorted(batchrunner.__all__)
    for name in batchrunner.__all__:
        assert hasattr(batchrunner, name), name


def test_every_error_is_a_batchrunner_error() -> None:
    """The exported errors share one root, so callers can catch them all at once."""
    for name in ("ApiError", "AuthenticationFailed", "ConfigError", "JobFileError", "QueryFailed"):
        assert issubclass(getattr(batchrunner, name), batchrunner.BatchrunnerError)
