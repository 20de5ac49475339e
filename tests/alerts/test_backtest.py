"""Backtesting over a real rollup_1m Delta table: the same engine, the replayed clock."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from fleetlens.alerts.backtest import backtest
from fleetlens.alerts.rules import parse_rules
from fleetlens.config import load_settings
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import ROLLUP_HOURLY_SCHEMA

START = datetime(2026, 11, 20, 10, tzinfo=UTC)
RULES = {
    "channels": {"log": {"type": "log"}},
    "routes": [{"name": "all", "channels": ["log"]}],
    "rules": [
        {
            "name": "high-cpu",
            "type": "threshold",
            "metric": "cpu_pct",
            "aggregation": "avg",
            "window": "5m",
            "op": ">",
            "value": 90,
            "for": "5m",
        },
        {"name": "silent", "type": "absence", "absent_for": "3m", "known_for": "1h"},
    ],
}


def rollups() -> pa.Table:
    """Two hours of a, b and c: a's CPU at 95 % from 10:30 to 10:50, c silent 11:10-11:20."""
    rows = []
    for minute in range(120):
        start = START + timedelta(minutes=minute)
        for server in ("a", "b", "c"):
            if server == "c" and 70 <= minute < 80:
                continue
            cpu = 95.0 if server == "a" and 30 <= minute < 50 else 30.0
            for metric, value in (("cpu_pct", cpu), ("mem_pct", 50.0)):
                rows.append(
                    {
                        "window_start": start,
                        "server_id": server,
                        "metric": metric,
                        "tenant": "acme",
                        "env": "prod",
                        "count": 6,
                        "sum": 6 * value,
                        "min": value,
                        "max": value,
                        "last": value,
                        "last_ts": start + timedelta(seconds=50),
                        "sketch": b"",
                        "date": start.strftime("%Y-%m-%d"),
                        "hour": start.hour,
                    }
                )
    return pa.Table.from_pylist(rows, schema=ROLLUP_HOURLY_SCHEMA)


def test_backtest_reports_firings_durations_and_servers(tmp_path: Path) -> None:
    lake = Lake(load_settings(lake={"root": str(tmp_path)}).lake)
    write_deltalake(lake.table_uri("rollup_1m"), rollups(), partition_by=["date", "hour"])
    reports = backtest(parse_rules(RULES), lake, start=START, end=START + timedelta(hours=2))
    # a: pending once five hot minute means fill the 5 m window (10:35), firing 5 m later
    # (10:40), resolved at the first cool minute's end (10:51).
    assert vars(reports["high-cpu"]) == {"fired": 1, "firing_s": 660.0, "servers": {"a": 1}}
    # c: last heard of at 11:10, silent 3 m at 11:13, back at 11:21.
    assert vars(reports["silent"]) == {"fired": 1, "firing_s": 480.0, "servers": {"c": 1}}


def test_the_backtest_command(tmp_path: Path) -> None:
    lake = Lake(load_settings(lake={"root": str(tmp_path)}).lake)
    write_deltalake(lake.table_uri("rollup_1m"), rollups(), partition_by=["date", "hour"])
    rules = tmp_path / "rules.yaml"
    rules.write_text(json.dumps(RULES))  # JSON is YAML
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetlens",
            "alerts",
            "backtest",
            "--rules",
            str(rules),
            "--start",
            "2026-11-20T10:00:00Z",
            "--end",
            "2026-11-20T11:00:00Z",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"FLEETLENS_LAKE__ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["high-cpu"]["fired"] == 1 and report["silent"]["fired"] == 0
