"""Shared fixtures: the real data folder beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: skipped on a user's clone that lacks it, a failure in CI where it must be present."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_DATA} is missing in CI")
        pytest.skip(f"real data folder {SHARED_DATA} not present (it sits beside the repo in CI)")
    return SHARED_DATA
