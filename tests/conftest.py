"""Shared test helpers: services are required in CI and optional on a laptop."""

from __future__ import annotations

import os

import pytest


def require(available: bool, what: str) -> None:
    """Skip when ``what`` is missing locally; fail when it is missing in CI (``CI=true``)."""
    if available:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is required in CI but is not available")
    pytest.skip(f"{what} is not available on this machine")
