"""Shared fixtures: a real embedded broker (Tansu) for the session, and per-test settings that
point every component at that broker, at topics of their own and at a scratch lake."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetlens.config import Settings, load_settings
from fleetlens.kafka.broker import EmbeddedBroker
from fleetlens.kafka.clients import ensure_topics
from ports import free_port


@pytest.fixture(scope="session")
def broker_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bootstrap address of an embedded broker started for this test session."""
    address = f"127.0.0.1:{free_port()}"
    runtime = tmp_path_factory.mktemp("runtime")
    settings = load_settings(
        "embedded",
        kafka={"bootstrap_servers": address},
        runtime_dir=runtime,
    )
    broker = EmbeddedBroker(settings)
    broker.start()
    yield address
    broker.stop()


@pytest.fixture
def fleet_env(
    broker_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """FLEETLENS_* variables for one test: its own topics, group, lake, runtime dir and port.

    They are set in this process's environment too, so that child ``fleetlens`` processes
    started by the test see the same configuration.
    """
    tag = uuid.uuid4().hex[:8]
    env = {
        "FLEETLENS_PROFILE": "embedded",
        "FLEETLENS_KAFKA__BOOTSTRAP_SERVERS": broker_address,
        "FLEETLENS_KAFKA__TOPICS__METRICS__NAME": f"t{tag}.metrics",
        "FLEETLENS_KAFKA__TOPICS__DLQ__NAME": f"t{tag}.dlq",
        "FLEETLENS_KAFKA__TOPICS__AGG1M__NAME": f"t{tag}.agg1m",
        "FLEETLENS_KAFKA__TOPICS__ALERTS__NAME": f"t{tag}.alerts",
        "FLEETLENS_ARCHIVE__GROUP_ID": f"archiver-{tag}",
        "FLEETLENS_LAKE__ROOT": str(tmp_path / "lake"),
        "FLEETLENS_RUNTIME_DIR": str(tmp_path / "run"),
        "FLEETLENS_COLLECTOR__PORT": str(free_port()),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def settings(fleet_env: dict[str, str]) -> Settings:
    """Settings for one test (see ``fleet_env``), with its topics created."""
    loaded = load_settings()
    ensure_topics(loaded.kafka)
    return loaded


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One local Spark session for every test that runs batch jobs (one costs ~10 s)."""
    from spark_jobs.session import build_session

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
