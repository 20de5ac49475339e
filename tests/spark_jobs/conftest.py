"""One local Spark session for all batch-layer tests (starting one costs ~10 s)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from fleetlens.config import Settings, load_settings
from spark_jobs.session import build_session


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    # collect() turns timestamps into naive datetimes of the driver's zone: make it UTC.
    os.environ["TZ"] = "UTC"
    time.tzset()
    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    settings = load_settings(
        spark={
            "master": "local[2]",
            "driver_memory": "2g",
            "shuffle_partitions": 4,
            "conf": {"spark.sql.warehouse.dir": str(warehouse)},
        }
    )
    session = build_session(settings, app_name="fleetlens-tests")
    yield session
    session.stop()


@pytest.fixture
def lake_settings(tmp_path: Path) -> Settings:
    """Settings pointing at a scratch lake of this test."""
    return load_settings(lake={"root": str(tmp_path / "lake")})
