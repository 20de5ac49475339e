"""The quality suites on small inline DataFrames: clean data passes, each kind of breakage
fails with a summary naming the expectation and the column.

Great Expectations on Spark costs ~1-2 s per validation: one validation per test.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession

from fleetlens.config import Settings, load_settings
from fleetlens.lake.paths import Lake
from spark_jobs.quality import (
    QualityError,
    QualityReport,
    check_freshness,
    raise_for_failures,
    reconcile,
    validate_raw_points,
    validate_rollup,
    write_report,
)

pytestmark = pytest.mark.spark

START = datetime(2026, 11, 20, 13, tzinfo=UTC)
END = START + timedelta(hours=1)
INTERVAL = (START, END)

RAW_DDL = (
    "ts timestamp, server_id string, metric string, value double, tenant string, "
    "region string, env string, service string, cluster string, event_id string, "
    "ingest_ts timestamp, date string, hour int"
)
ROLLUP_DDL = (
    "window_start timestamp, server_id string, metric string, tenant string, region string, "
    "env string, service string, cluster string, count bigint, sum double, min double, "
    "max double, last double, last_ts timestamp, sketch binary, p50 double, p95 double, "
    "p99 double"
)
TAGS = ("acme", "us-east-1", "prod", "api", "c1")


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings()


def at(minute: int) -> datetime:
    return START + timedelta(minutes=minute)


def point(minute: int, server: str, metric: str, value: float | None, event: str | None) -> tuple:
    ts = at(minute)
    return (ts, server, metric, value, *TAGS, event, ts, "2026-11-20", 13)


def clean_points() -> list[tuple]:
    return [
        point(0, "srv-1", "cpu_pct", 12.5, "e1"),
        point(0, "srv-1", "mem_pct", 40.0, "e1"),
        point(1, "srv-1", "cpu_pct", 99.0, "e2"),
        point(1, "srv-2", "net_in_bps", 1.0e9, "e3"),
        point(59, "srv-2", "cpu_pct", 0.0, "e4"),
    ]


def raw_frame(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    return spark.createDataFrame(rows, RAW_DDL)


def window(minute: int, server: str, metric: str, count: int, low: float, high: float) -> tuple:
    start = at(minute).replace(minute=0) if minute < 0 else at(minute)
    return (
        start, server, metric, *TAGS, count, (low + high) / 2 * count, low, high, high,
        start, b"\x00", None, None, None,
    )  # fmt: skip


def rollup_frame(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    return spark.createDataFrame(rows, ROLLUP_DDL)


def assert_fails(report: QualityReport, *fragments: str) -> str:
    summary = report.summary()
    assert not report.success, summary
    for fragment in fragments:
        assert fragment in summary, f"{fragment!r} not in:\n{summary}"
    return summary


# -- raw_points ---------------------------------------------------------------------------


def test_clean_raw_points_pass(spark: SparkSession, settings: Settings) -> None:
    report = validate_raw_points(raw_frame(spark, clean_points()), settings, interval=INTERVAL)

    assert report.success, report.summary()
    assert report.failures == ()
    # columns, 5 keys, metric set, uniqueness, one range per bounded metric
    assert report.evaluated == 8 + len(settings.contract.metrics)
    assert "passed" in report.summary()


def test_null_key_fails(spark: SparkSession, settings: Settings) -> None:
    rows = [*clean_points(), point(2, None, "cpu_pct", 3.0, "e5")]  # type: ignore[arg-type]

    report = validate_raw_points(raw_frame(spark, rows), settings, interval=INTERVAL)

    assert_fails(report, "expect_column_values_to_not_be_null on server_id", "1 unexpected")
    assert [f.columns for f in report.failures] == ["server_id"]


def test_out_of_range_value_fails_for_its_metric(spark: SparkSession, settings: Settings) -> None:
    # 150 is fine for conns (no upper bound), not for cpu_pct.
    rows = [
        *clean_points(),
        point(3, "srv-3", "cpu_pct", 150.0, "e6"),
        point(3, "srv-3", "conns", 150.0, "e6"),
    ]

    report = validate_raw_points(raw_frame(spark, rows), settings, interval=INTERVAL)

    summary = assert_fails(
        report,
        "expect_column_values_to_be_between on value where metric == 'cpu_pct'",
        "max_value=100",
        "1 unexpected",
        "e.g. [150]",
    )
    assert len(report.failures) == 1, summary


def test_duplicate_point_fails(spark: SparkSession, settings: Settings) -> None:
    rows = [*clean_points(), point(7, "srv-1", "cpu_pct", 13.0, "e1")]

    report = validate_raw_points(raw_frame(spark, rows), settings, interval=INTERVAL)

    summary = assert_fails(
        report, "expect_compound_columns_to_be_unique on event_id, metric", "'event_id': 'e1'"
    )
    assert len(report.failures) == 1, summary


# -- rollups ------------------------------------------------------------------------------


def test_clean_rollup_passes(spark: SparkSession, settings: Settings) -> None:
    rows = [
        window(0, "srv-1", "cpu_pct", 6, 10.0, 90.0),
        window(1, "srv-1", "cpu_pct", 1, 5.0, 5.0),
    ]

    report = validate_rollup(
        rollup_frame(spark, rows), settings, table="rollup_1m", interval=INTERVAL
    )

    assert report.success, report.summary()


def test_rollup_breakages_are_named(spark: SparkSession, settings: Settings) -> None:
    rows = [
        window(0, "srv-1", "cpu_pct", 6, 10.0, 90.0),
        window(0, "srv-1", "cpu_pct", 6, 10.0, 90.0),  # duplicated key
        window(1, "srv-1", "mem_pct", 3, 70.0, 20.0),  # min > max
        window(2, "srv-1", "disk_pct", 0, 1.0, 2.0),  # empty window
        window(3, "srv-1", "cpu_pct", 2, 50.0, 150.0),  # max above the metric's range
    ]

    report = validate_rollup(
        rollup_frame(spark, rows), settings, table="rollup_1m", interval=INTERVAL
    )

    summary = assert_fails(
        report,
        "quality rollup_1m",
        "expect_compound_columns_to_be_unique on server_id, metric, window_start",
        "expect_column_pair_values_a_to_be_greater_than_b on max vs min (or_equal=True)",
        "expect_column_values_to_be_between on count (min_value=1)",
        "expect_column_values_to_be_between on max where metric == 'cpu_pct'",
    )
    assert len(report.failures) == 4, summary


# -- reconciliation and freshness ------------------------------------------------------------


def hour_row(server: str, metric: str, count: int, start: datetime = START) -> tuple:
    return (start, server, metric, *TAGS, count, 1.0, 1.0, 1.0, 1.0, start, b"", None, None, None)


#: The points of clean_points() per (server, metric): 5 rows in hour 13.
CLEAN_COUNTS = {
    ("srv-1", "cpu_pct"): 2,
    ("srv-1", "mem_pct"): 1,
    ("srv-2", "net_in_bps"): 1,
    ("srv-2", "cpu_pct"): 1,
}


def test_reconciliation_mismatch_fails(spark: SparkSession) -> None:
    counts = CLEAN_COUNTS | {("srv-2", "cpu_pct"): 0}  # a window lost its point
    rows = [hour_row(server, metric, n) for (server, metric), n in counts.items()]
    rows.append(hour_row("srv-1", "cpu_pct", 7, start=END))  # outside the interval: ignored

    report = reconcile(
        raw_frame(spark, clean_points()), rollup_frame(spark, rows), interval=INTERVAL
    )

    assert_fails(
        report,
        "quality rollup_1h.reconciliation",
        "expect_column_values_to_be_between on difference",
        "1 unexpected",
        "'hour': '2026-11-20T13:00Z'",
    )


def test_reconciliation_passes_when_counts_add_up(spark: SparkSession) -> None:
    rows = [hour_row(server, metric, n) for (server, metric), n in CLEAN_COUNTS.items()]
    rows.append(hour_row("srv-1", "cpu_pct", 7, start=END))

    report = reconcile(
        raw_frame(spark, clean_points()), rollup_frame(spark, rows), interval=INTERVAL
    )

    assert report.success, report.summary()


def test_stale_data_fails_freshness(spark: SparkSession, tmp_path: Path) -> None:
    raw = raw_frame(spark, clean_points())  # newest point 13:59

    report = check_freshness(
        raw, table="raw_points", column="ts", interval=(END, END + timedelta(hours=1)),
        horizon=timedelta(minutes=30),
    )  # fmt: skip

    assert_fails(
        report,
        "quality raw_points.freshness",
        "staleness_s",
        "max_value=1800",
        "'newest_ts': '2026-11-20T13:59:00Z'",
    )
    with pytest.raises(QualityError, match=r"raw_points\.freshness"):
        raise_for_failures([report])

    lake = Lake(load_settings(lake={"root": str(tmp_path / "lake")}).lake)
    path = write_report(lake, report)
    assert path.endswith("_quality/raw_points.freshness/20261120T1400Z_20261120T1500Z.json")
    kept: dict[str, Any] = json.loads(Path(path).read_text())
    assert kept["success"] is False
    assert kept["validation_result"]["success"] is False
    assert len(kept["validation_result"]["results"]) == 2


def test_fresh_data_passes(spark: SparkSession) -> None:
    report = check_freshness(
        raw_frame(spark, clean_points()), table="raw_points", column="ts", interval=INTERVAL,
        horizon=timedelta(minutes=5),
    )  # fmt: skip

    assert report.success, report.summary()
    raise_for_failures([report])
