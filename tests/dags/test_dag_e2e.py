"""`airflow dags test fleetlens_hourly` end to end: the real scheduler loop (in process, on
SQLite), the real `fleetlens spark run` jobs, a scratch lake with one simulated hour."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from deltalake import DeltaTable

from fleetlens.config import load_settings
from fleetlens.lake.paths import Lake
from fleetlens.simulator.fleet import Fleet, FleetSpec
from fleetlens.simulator.history import write_history

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
START = datetime(2026, 11, 20, 13, tzinfo=UTC)
END = START + timedelta(hours=1)


pytestmark = [pytest.mark.spark, pytest.mark.slow]


def airflow(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "airflow"), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_hourly_dag_builds_the_hour(tmp_path: Path) -> None:
    lake_root = tmp_path / "lake"
    settings = load_settings(lake={"root": str(lake_root)})
    fleet = Fleet(
        FleetSpec.from_settings(
            settings.simulator, servers=5, seed=7, anchor_s=int(START.timestamp())
        )
    )
    stats = write_history(
        fleet, Lake(settings.lake), start_s=int(START.timestamp()), end_s=int(END.timestamp()),
        interval_s=60,
    )  # fmt: skip
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),  # a database of its own
        "FLEETLENS_LAKE__ROOT": str(lake_root),
        "FLEETLENS_RUNTIME_DIR": str(tmp_path / "run"),
        "FLEETLENS_SPARK__MASTER": "local[2]",
        "FLEETLENS_SPARK__DRIVER_MEMORY": "1g",
        "FLEETLENS_SPARK__SHUFFLE_PARTITIONS": "2",
        "TZ": "UTC",
    }
    migrated = airflow("db", "migrate", env=env, timeout=300)
    assert migrated.returncode == 0, migrated.stderr[-3000:]

    # Run after 14:00 → the data interval [13:00, 14:00).
    run = airflow("dags", "test", "fleetlens_hourly", END.isoformat(), env=env, timeout=1200)

    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    lake = Lake(settings.lake)
    raw = DeltaTable(lake.table_uri("raw_points")).to_pyarrow_table()
    hour = DeltaTable(lake.table_uri("rollup_1h")).to_pyarrow_table()
    minute = DeltaTable(lake.table_uri("rollup_1m")).to_pyarrow_table()
    assert raw.num_rows == stats.points
    assert sum(hour.column("count").to_pylist()) == raw.num_rows
    assert sum(minute.column("count").to_pylist()) == raw.num_rows
    marks = DeltaTable(lake.table_uri("batch_watermarks")).to_pyarrow_table().to_pylist()
    assert {m["table_name"]: m["complete_until"] for m in marks} == {
        "rollup_1m": END,
        "rollup_1h": END,
    }
    kept = sorted((lake_root / "_quality").rglob("*.json"))
    assert kept, "the quality job keeps its reports under <lake>/_quality/"
    assert all(json.loads(path.read_text())["success"] for path in kept)
