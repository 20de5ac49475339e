"""Fixtures of the batch-layer tests (the Spark session is in ``tests/conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetlens.config import Settings, load_settings


@pytest.fixture
def lake_settings(tmp_path: Path) -> Settings:
    """Settings pointing at a scratch lake of this test."""
    return load_settings(lake={"root": str(tmp_path / "lake")})
