"""The batch jobs end to end on simulated landing files, against a polars reference.

The size is kept small for the suite (``FLEETLENS_TEST_HISTORY=hours,servers`` makes it
larger; the acceptance run is 48 hours of 300 servers).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from datasketches import kll_doubles_sketch
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from fleetlens.config import Settings, load_settings
from fleetlens.lake.landing import LANDING_SCHEMA, write_landing_file
from fleetlens.lake.paths import Lake
from fleetlens.simulator.fleet import Fleet, FleetSpec
from fleetlens.simulator.history import write_history
from landing_reference import landing_points
from spark_jobs import delta_io
from spark_jobs.jobs import JobContext, run_job

pytestmark = [pytest.mark.spark, pytest.mark.slow]

HOURS, SERVERS = (int(x) for x in os.environ.get("FLEETLENS_TEST_HISTORY", "5,40").split(","))
START = datetime(2026, 11, 16, 22, tzinfo=UTC)  # crosses midnight
END = START + timedelta(hours=HOURS)
KEY = ["server_id", "metric", "window_start"]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("batch") / "lake"
    settings = load_settings(lake={"root": str(root)})
    fleet = Fleet(
        FleetSpec.from_settings(
            settings.simulator, servers=SERVERS, seed=3, anchor_s=int(START.timestamp())
        )
    )
    write_history(
        fleet,
        Lake(settings.lake),
        start_s=int(START.timestamp()),
        end_s=int(END.timestamp()),
        duplicate_fraction=0.02,
    )
    return settings


def context(settings: Settings, spark: SparkSession, **kwargs: Any) -> JobContext:
    return JobContext(settings=settings, spark=spark, lake=Lake(settings.lake), **kwargs)


def reference(points: pl.DataFrame, every: str) -> pl.DataFrame:
    return (
        points.group_by(
            "server_id", "metric", pl.col("ts").dt.truncate(every).alias("window_start")
        )
        .agg(
            pl.len().cast(pl.Int64).alias("count"),
            pl.col("value").sum().alias("sum"),
            pl.col("value").min().alias("min"),
            pl.col("value").max().alias("max"),
            pl.col("value").alias("values"),
        )
        .sort(KEY)
    )


def table(settings: Settings, name: str) -> pl.DataFrame:
    return pl.read_delta(str(Path(settings.lake.root, "tables", name))).sort(KEY)


def assert_matches(got: pl.DataFrame, expected: pl.DataFrame, *, sketches: int = 200) -> None:
    assert got.height == expected.height > 0
    joined = got.join(expected, on=KEY, how="inner", suffix="_ref")
    assert joined.height == expected.height
    for column in ("count", "min", "max"):
        assert (joined[column] == joined[f"{column}_ref"]).all(), column
    assert np.allclose(joined["sum"], joined["sum_ref"], rtol=1e-9)
    eps = kll_doubles_sketch(200).normalized_rank_error(False)
    for row in joined.head(sketches).iter_rows(named=True):
        ordered = np.sort(row["values"])
        assert kll_doubles_sketch.deserialize(row["sketch"]).n == len(ordered)
        for q in (50, 95, 99):
            low = np.searchsorted(ordered, row[f"p{q}"], side="left") / len(ordered)
            high = np.searchsorted(ordered, row[f"p{q}"], side="right") / len(ordered)
            slack = eps + 1 / len(ordered)
            assert low - slack <= q / 100 <= high + slack


def test_backfill_matches_the_reference_and_is_idempotent(
    history: Settings, spark: SparkSession
) -> None:
    result = run_job(context(history, spark), "backfill", START, END)
    assert len(result.partitions["raw_points"]) == HOURS

    points = landing_points(history)
    assert_matches(table(history, "rollup_1m"), reference(points, "1m"))
    assert_matches(table(history, "rollup_1h"), reference(points, "1h"))
    assert_matches(table(history, "rollup_1d"), reference(points, "1d"))
    raw = pl.read_delta(str(Path(history.lake.root, "tables", "raw_points")))
    assert raw.height == points.height

    versions = {
        n: DeltaTable(str(Path(history.lake.root, "tables", n))).version()
        for n in ("raw_points", "rollup_1m", "rollup_1h", "rollup_1d")
    }
    before = {n: table(history, n) for n in ("rollup_1m", "rollup_1h", "rollup_1d")}
    # Nothing changed: a rerun commits nothing.
    again = run_job(context(history, spark), "backfill", START, END)
    assert again.partitions["raw_points"] == []
    for name, version in versions.items():
        assert DeltaTable(str(Path(history.lake.root, "tables", name))).version() == version
    # Forced: everything recomputed, the same tables. KLL sketches compact at random (the
    # DataSketches library gives Spark no seed), so a window of more than k points gets
    # other sketch bytes: its quantiles are checked against the reference again instead.
    run_job(context(history, spark, force=True), "backfill", START, END)
    exact = pl.exclude("sketch", "p50", "p95", "p99")
    for name, frame in before.items():
        assert table(history, name).select(exact).equals(frame.select(exact)), name
    assert_matches(table(history, "rollup_1h"), reference(points, "1h"))
    assert_matches(table(history, "rollup_1d"), reference(points, "1d"))
    # Every engine opens them.
    for name in ("raw_points", "rollup_1m"):
        uri = str(Path(history.lake.root, "tables", name))
        assert pl.scan_delta(uri).select(pl.len()).collect().item() > 0
        assert delta_io.read_table(spark, Lake(history.lake), name).count() > 0


def test_late_file_updates_exactly_its_partitions(history: Settings, spark: SparkSession) -> None:
    run_job(context(history, spark), "backfill", START, END)
    late_hour = START + timedelta(hours=1)
    late = pa.Table.from_pylist(
        [
            {
                "event_id": "late-1",
                "server_id": "srv-late",
                "ts": late_hour + timedelta(minutes=7),
                "metrics": {"cpu_pct": 42.0, "mem_pct": 150.0},
                "tags": {"tenant": "acme"},
                "kafka_partition": 0,
                "kafka_offset": 1,
                "ingest_ts": END + timedelta(minutes=5),
            }
        ],
        schema=LANDING_SCHEMA,
    )
    lake = Lake(history.lake)
    write_landing_file(
        lake,
        lake.path(
            "landing",
            "metrics",
            f"date={late_hour:%Y-%m-%d}",
            f"hour={late_hour:%H}",
            "part-late.parquet",
        ),
        late,
    )
    # The scheduled run for the next hour finds it through its look-back.
    ctx = context(history, spark)
    changed = {
        job: run_job(ctx, job, END, END + timedelta(hours=1)).partitions
        for job in ("compact", "rollup_1m", "rollup_1h", "rollup_1d")
    }
    label = f"{late_hour:%Y-%m-%d}/{late_hour:%H}"
    assert changed["compact"]["raw_points"] == [label]
    assert changed["rollup_1m"]["rollup_1m"] == [label]
    assert changed["rollup_1h"]["rollup_1h"] == [label]
    assert changed["rollup_1d"]["rollup_1d"] == [f"{late_hour:%Y-%m-%d}"]
    minute = table(history, "rollup_1m").filter(pl.col("server_id") == "srv-late")
    assert minute.select("metric", "count", "sum").rows() == [("cpu_pct", 1, 42.0)]
    quarantine = pl.read_delta(str(Path(history.lake.root, "tables", "quarantine")))
    assert quarantine.filter(pl.col("event_id") == "late-1")["reason"].to_list() == [
        "mem_pct above 100"
    ]


def test_baseline_and_maintenance(history: Settings, spark: SparkSession) -> None:
    ctx = context(history, spark)
    run_job(ctx, "backfill", START, END)

    made = run_job(ctx, "baseline", START, END)
    base = pl.read_delta(str(Path(history.lake.root, "tables", "baseline_hourly")))
    hourly = table(history, "rollup_1h")
    expected = (
        hourly.with_columns(
            ((pl.col("window_start").dt.weekday() - 1) * 24 + pl.col("window_start").dt.hour())
            .cast(pl.Int32)
            .alias("hour_of_week")
        )
        .group_by("server_id", "metric", "hour_of_week")
        .agg((pl.col("sum").sum() / pl.col("count").sum()).alias("mean_ref"), pl.len())
    )
    joined = base.join(expected, on=["server_id", "metric", "hour_of_week"])
    assert base.height == made.rows["baseline_hourly"] == expected.height == joined.height > 0
    assert np.allclose(joined["mean"], joined["mean_ref"], rtol=1e-9)
    assert (joined["samples"] == joined["len"]).all()

    before = {n: table(history, n) for n in ("rollup_1m", "rollup_1h", "rollup_1d")}
    raw_files = len(DeltaTable(str(Path(history.lake.root, "tables", "raw_points"))).file_uris())
    done = run_job(ctx, "maintain", START, END)
    for name, frame in before.items():
        assert table(history, name).equals(frame), name
    assert {"raw_points", "rollup_1m", "baseline_hourly"} <= set(done.details)
    compacted = DeltaTable(str(Path(history.lake.root, "tables", "raw_points")))
    assert len(compacted.file_uris()) <= raw_files
    assert done.details["raw_points"]["version"] == compacted.version()


def test_retention_removes_exactly_the_partitions_past_their_horizon(
    history: Settings, spark: SparkSession
) -> None:
    run_job(context(history, spark), "backfill", START, END)
    settings = history.model_copy(
        update={
            "batch": history.batch.model_copy(
                update={
                    "retention": history.batch.retention.model_copy(
                        update={"raw_points_days": 1, "rollup_1m_days": 1}
                    )
                }
            )
        }
    )
    # One day after the second hour: the first two hours are past the horizon.
    horizon = START + timedelta(hours=2)
    run_job(context(settings, spark), "retention", START, horizon + timedelta(days=1))
    for name in ("raw_points", "rollup_1m"):
        left = pl.read_delta(str(Path(history.lake.root, "tables", name)))
        ts = "ts" if name == "raw_points" else "window_start"
        assert left[ts].dt.truncate("1h").min() == horizon
    assert table(history, "rollup_1h")["window_start"].min() == START
