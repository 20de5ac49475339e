"""The Grafana dashboards: the committed JSON is what the code generates, it loads back
through the SDK's models, and every panel's and variable's SQL, with Grafana's macros and
variables filled in, parses as Trino SQL and runs (in DuckDB, over a simulated lake with
the serving views) with the columns the panels name."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
import sqlglot
from grafana_foundation_sdk.models.dashboard import Dashboard
from typer.testing import CliRunner

from duck_lake import END, T0, WATERMARKS, connect, simulated_lake, to_duckdb
from fleetlens.cli.main import app
from fleetlens.config import Settings, load_settings
from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import (
    HOUR_PARTITIONS,
    QUARANTINE,
    QUARANTINE_SCHEMA,
    ROLLUP_1H,
    SPEED_LATE_1M,
    SPEED_LATE_SCHEMA,
)
from fleetlens.serving.grafana import DATASOURCE, TrinoQuery, build_dashboards, dashboard_json
from fleetlens.serving.trino import serving_tiers, view_name
from spark_jobs.control import HourPartition, mark_partitions

COMMITTED = Path(__file__).parents[2] / "docker" / "grafana" / "dashboards"
VARIABLES = {"tenant": "acme", "service": "api", "metric": "cpu_pct", "server": "s0"}
_TIME = "%Y-%m-%d %H:%M:%S"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings("embedded")


def _queries(board: dict[str, object]) -> Iterator[tuple[str, str]]:
    """(where, SQL) of every panel target and query variable of a dashboard's JSON."""
    for panel in board["panels"]:  # type: ignore[attr-defined]
        for target in panel.get("targets", []):
            yield panel["title"], target["rawSQL"]
    for variable in board["templating"].get("list", []):  # type: ignore[attr-defined]
        if variable["type"] == "query":
            yield f"${variable['name']}", variable["query"]


def _interpolate(sql: str, view: str) -> str:
    """The SQL as the trino-datasource plugin sends it: macros (as its macros.go expands
    them) and variables replaced."""
    start, end = T0.strftime(_TIME), END.strftime(_TIME)
    sql = re.sub(
        r"\$__timeFilter\((\w+)\)", rf"\1 BETWEEN TIMESTAMP '{start}' AND TIMESTAMP '{end}'", sql
    )
    sql = sql.replace("$__timeFrom()", f"TIMESTAMP '{start}'")
    sql = sql.replace("$__timeTo()", f"TIMESTAMP '{end}'")
    values = {**VARIABLES, "view": view}
    sql = re.sub(r"\$\{(\w+):sqlstring\}", lambda m: f"'{values[m.group(1)]}'", sql)
    sql = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], sql)
    assert "$" not in sql, sql
    return sql


def _views(settings: Settings) -> list[str]:
    return [view_name(t) for t in serving_tiers(settings.batch.retention)]


def test_committed_dashboards_are_the_generated_ones(settings: Settings) -> None:
    generated = {name: dashboard_json(board) for name, board in build_dashboards(settings).items()}
    committed = {path.name: path.read_text() for path in sorted(COMMITTED.glob("*.json"))}
    assert committed == generated, (
        "run: fleetlens grafana dashboards --out docker/grafana/dashboards"
    )


def test_dashboards_load_back_through_the_sdk(settings: Settings) -> None:
    for name, board in build_dashboards(settings).items():
        text = dashboard_json(board)
        loaded = Dashboard.from_json(json.loads(text))
        assert dashboard_json(loaded) == text, name
        targets = [t for p in loaded.panels or [] for t in getattr(p, "targets", None) or []]
        assert targets and all(isinstance(t, TrinoQuery) for t in targets)
        assert loaded.uid and loaded.uid in name


def test_dashboards_cover_the_brief(settings: Settings) -> None:
    boards = {b.uid: json.loads(dashboard_json(b)) for b in build_dashboards(settings).values()}
    assert set(boards) == {
        "fleetlens-overview",
        "fleetlens-server",
        "fleetlens-capacity",
        "fleetlens-pipeline",
    }
    server_vars = {v["name"] for v in boards["fleetlens-server"]["templating"]["list"]}
    assert "server" in server_vars
    capacity = " ".join(sql for _, sql in _queries(boards["fleetlens-capacity"]))
    for metric in ("disk_pct", "cpu_pct", "mem_pct"):
        assert f"metric = '{metric}'" in capacity
    pipeline = " ".join(sql for _, sql in _queries(boards["fleetlens-pipeline"]))
    for table in (SPEED_LATE_1M, QUARANTINE, "batch_partitions", "batch_watermarks"):
        assert f"delta.fleetlens.{table}" in pipeline


def test_every_query_parses_as_trino(settings: Settings) -> None:
    for board in build_dashboards(settings).values():
        for where, sql in _queries(json.loads(dashboard_json(board))):
            for view in _views(settings):
                sqlglot.parse_one(_interpolate(sql, view), read="trino")
                assert where


@pytest.fixture(scope="module")
def pipeline_lake(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A simulated lake with the pipeline's bookkeeping tables too."""
    settings = simulated_lake(tmp_path_factory.mktemp("grafana-lake"), WATERMARKS)
    lake = Lake(settings.lake)
    now = datetime.now(UTC)
    late = pa.Table.from_pylist(
        [
            {
                "window_start": END - timedelta(minutes=5),
                "topic": "fleet.metrics.v1",
                "partition": 0,
                "late_dropped": 3,
                "updated_at": now,
            }
        ],
        schema=SPEED_LATE_SCHEMA,
    )
    delta.ensure_table(lake, SPEED_LATE_1M, schema=SPEED_LATE_SCHEMA)
    delta.append(lake, SPEED_LATE_1M, late)
    bad = pa.Table.from_pylist(
        [
            {
                "source_file": "landing/x.parquet",
                "reason": "value out of range",
                "ingest_ts": END - timedelta(hours=1),
                "date": f"{END:%Y-%m-%d}",
                "hour": (END - timedelta(hours=1)).hour,
            }
        ],
        schema=QUARANTINE_SCHEMA,
    )
    delta.ensure_table(lake, QUARANTINE, schema=QUARANTINE_SCHEMA, partition_by=HOUR_PARTITIONS)
    delta.append(lake, QUARANTINE, bad)
    hours = [HourPartition.of(T0 + timedelta(hours=h)) for h in range(3)]
    mark_partitions(lake, ROLLUP_1H, hours, run_id="test")
    mark_partitions(lake, f"quality:{ROLLUP_1H}", hours[:2], run_id="test")
    return settings


def test_every_query_runs_over_the_views(settings: Settings, pipeline_lake: Settings) -> None:
    con = connect(pipeline_lake)
    answered = {}
    for board in build_dashboards(settings).values():
        for where, sql in _queries(json.loads(dashboard_json(board))):
            for view in _views(settings):
                rows = con.sql(to_duckdb(_interpolate(sql, view))).fetchall()
                answered[(board.uid, where)] = answered.get((board.uid, where), 0) + len(rows)
    # Every query found rows for some view (the bookkeeping tables have a few), but the one of
    # quality marks in the range: mark_partitions stamps them with the current time.
    empty = [k for k, n in answered.items() if n == 0]
    assert empty == [("fleetlens-pipeline", "Partitions passed by the quality job, per hour")]
    # The quality panel shows the one hour that changed after its verification.
    waiting = con.sql(
        to_duckdb(
            _interpolate(
                next(
                    sql
                    for b in build_dashboards(settings).values()
                    for w, sql in _queries(json.loads(dashboard_json(b)))
                    if w == "Partitions awaiting verification"
                ),
                "fleet_1h",
            )
        )
    ).fetchall()
    assert [(r[0], r[2]) for r in waiting] == [(ROLLUP_1H, 2)]


def test_cli_writes_the_dashboards(tmp_path: Path, settings: Settings) -> None:
    result = CliRunner().invoke(
        app,
        ["grafana", "dashboards", "--out", str(tmp_path)],
        env={"FLEETLENS_PROFILE": "embedded"},
    )
    assert result.exit_code == 0, result.output
    written = {p.name: p.read_text() for p in tmp_path.glob("*.json")}
    assert written == {n: dashboard_json(b) for n, b in build_dashboards(settings).items()}


def test_provisioning_points_at_the_datasource_the_panels_use() -> None:
    import yaml

    provisioning = COMMITTED.parent / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "trino.yaml").read_text())
    [source] = sources["datasources"]
    assert (source["type"], source["uid"]) == (DATASOURCE.type_val, DATASOURCE.uid)
    providers = yaml.safe_load((provisioning / "dashboards" / "fleetlens.yaml").read_text())
    assert providers["providers"][0]["options"]["path"].endswith("/fleetlens")
