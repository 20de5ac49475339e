"""A simulated lake and a DuckDB connection over it with the Trino serving views, for the
tests of the generated SQL (Trino itself cannot run here).

The views' Trino SQL is transpiled by sqlglot; ``delta.fleetlens.<table>`` references become
DuckDB relations registered from the Delta tables' Arrow data."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import sqlglot
from sample_points import sample_points
from sqlglot import exp

from fleetlens.config import Settings, load_settings
from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import ROLLUP_1D, ROLLUP_1H, ROLLUP_1M
from fleetlens.serving.trino import DEFAULT_CATALOG, DEFAULT_SCHEMA, LAKE_TABLES, serving_views
from fleetlens.simulator.lake import write_simulated_lake

T0 = datetime(2026, 11, 30, tzinfo=UTC)
HOURS = 30
END = T0 + timedelta(hours=HOURS)
#: The daily watermark before the hourly ones, both of those inside the range.
WATERMARKS = {
    ROLLUP_1D: T0 + timedelta(hours=24),
    ROLLUP_1H: T0 + timedelta(hours=26),
    ROLLUP_1M: T0 + timedelta(hours=28),
}
METRICS = ("cpu_pct", "mem_pct", "disk_pct")


def points(servers: int = 4, interval_s: int = 60, seed: int = 7) -> pl.DataFrame:
    """``HOURS`` of samples from ``T0`` for a few servers and metrics."""
    return sample_points(
        T0,
        hours=HOURS,
        servers=[f"s{i}" for i in range(servers)],
        seed=seed,
        metrics=METRICS,
        interval_s=interval_s,
    )


def simulated_lake(root: Path, watermarks: Mapping[str, datetime]) -> Settings:
    """Settings of a new lake at ``root``: every point in the batch tables, and a speed
    layer that missed every fifth sample (so that batch and speed rows differ and a view
    that took the wrong one for a window would be caught)."""
    settings = load_settings("embedded", lake={"root": str(root)}, runtime_dir=root / "run")
    batch = points()
    speed = batch.filter(pl.int_range(pl.len()) % 5 != 0)
    write_simulated_lake(
        Lake(settings.lake),
        batch,
        watermarks=watermarks,
        speed_points=speed,
        speed_from=T0,
        raw=False,
    )
    return settings


def to_duckdb(sql: str) -> str:
    """Trino SQL as DuckDB SQL, with the lake's tables as plain relations."""

    def local(node: exp.Expression) -> exp.Expression:
        if (
            isinstance(node, exp.Table)
            and node.catalog == DEFAULT_CATALOG
            and node.db == DEFAULT_SCHEMA
        ):
            return exp.to_table(node.name, alias=node.alias or None)
        return node

    tree = sqlglot.parse_one(sql, read="trino").transform(local)
    return tree.sql(dialect="duckdb")


def connect(settings: Settings) -> duckdb.DuckDBPyConnection:
    """DuckDB in UTC over the lake's tables, with the serving views created."""
    con = duckdb.connect()
    # date_trunc on TIMESTAMPTZ truncates in the session's zone; Trino's in the value's (UTC).
    con.execute("SET TimeZone = 'UTC'")
    lake = Lake(settings.lake)
    for name in LAKE_TABLES:
        if delta.table_exists(lake, name):
            con.register(name, delta.read_table(lake, name))
    views = serving_views(settings.batch.retention, speed_resolution_s=settings.speed.window_s)
    for view in views.values():
        con.execute(to_duckdb(view.sql(dialect="trino")))
    return con
