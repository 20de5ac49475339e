"""The batch layer's pure transformations, on small explicit DataFrames (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from datasketches import kll_doubles_sketch
from pyspark.sql import DataFrame, SparkSession

from fleetlens.config import load_settings
from fleetlens.lake.landing import LANDING_SCHEMA
from spark_jobs.transforms.baseline import hourly_baseline
from spark_jobs.transforms.points import (
    POINT_COLUMNS,
    first_copies,
    landing_to_points,
    repeated_keys,
    split_by_keys,
    split_valid_points,
)
from spark_jobs.transforms.rollups import (
    ROLLUP_COLUMNS,
    rollup_points,
    rollup_rollups,
    with_partitions,
)

pytestmark = pytest.mark.spark

T0 = datetime(2026, 11, 20, 13, 0, tzinfo=UTC)
#: Spark's collect() returns naive datetimes in the driver's zone (UTC in these tests).
N0 = T0.replace(tzinfo=None)
TAGS = {"tenant": "acme", "region": "eu-west-1", "env": "prod", "service": "api", "cluster": "c1"}
METRICS = load_settings().contract.metrics


def payload(
    event_id: str, server: str, ts: datetime, metrics: dict[str, float], *, ingest_s: int = 0
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "server_id": server,
        "ts": ts,
        "metrics": metrics,
        "tags": TAGS,
        "kafka_partition": None,
        "kafka_offset": None,
        "ingest_ts": ts + timedelta(seconds=5 + ingest_s),
    }


def landing(spark: SparkSession, rows: list[dict[str, Any]]) -> DataFrame:
    return spark.createDataFrame(pa.Table.from_pylist(rows, schema=LANDING_SCHEMA))


def test_points_are_exploded_checked_and_deduplicated(spark: SparkSession) -> None:
    rows = [
        payload("e1", "srv-1", T0, {"cpu_pct": 50.0, "mem_pct": 20.0}),
        # The same event resent later: kept once, the first ingested copy wins.
        payload("e1", "srv-1", T0, {"cpu_pct": 50.0, "mem_pct": 20.0}, ingest_s=30),
        payload("e2", "srv-1", T0 + timedelta(seconds=10), {"cpu_pct": 150.0, "bogus": 1.0}),
        payload("e3", "srv-2", T0 + timedelta(minutes=61), {"disk_pct": float("nan")}),
        payload("e4", "srv-2", T0 + timedelta(minutes=62), {"conns": -1.0, "net_in_bps": 5.0}),
    ]
    points = landing_to_points(first_copies(landing(spark, rows)))
    valid, rejected = split_valid_points(points, metrics=METRICS)
    deduped = valid.select(*POINT_COLUMNS)

    got = sorted((r.event_id, r.metric, r.value, r.date, r.hour) for r in deduped.collect())
    assert got == [
        ("e1", "cpu_pct", 50.0, "2026-11-20", 13),
        ("e1", "mem_pct", 20.0, "2026-11-20", 13),
        ("e4", "net_in_bps", 5.0, "2026-11-20", 14),
    ]
    first = deduped.where("event_id = 'e1'").first()
    assert first is not None and first.ingest_ts == N0 + timedelta(seconds=5)
    assert first.tenant == "acme" and first.cluster == "c1"
    reasons = sorted((r.event_id, r.reason) for r in rejected.collect())
    assert reasons == [
        ("e2", "cpu_pct above 100"),
        ("e2", "unknown metric bogus"),
        ("e3", "disk_pct is not a number"),
        ("e4", "conns below 0"),
    ]


def test_rollups_match_an_exact_reference_and_merge_upward(spark: SparkSession) -> None:
    rng = np.random.default_rng(5)
    rows = []
    for server in ("srv-1", "srv-2"):
        for i in range(360):  # one hour every 10 s
            ts = T0 + timedelta(seconds=10 * i)
            rows.append(
                payload(f"{server}-{i}", server, ts, {"cpu_pct": float(rng.uniform(0, 100))})
            )
    points = landing_to_points(landing(spark, rows))
    minutes = rollup_points(points, grain="minute", sketch_k=200)
    assert tuple(minutes.columns) == ROLLUP_COLUMNS
    got = {(r.server_id, r.window_start): r for r in minutes.collect()}
    assert len(got) == 2 * 60

    for (server, start), row in got.items():
        values = [
            p["metrics"]["cpu_pct"]
            for p in rows
            if p["server_id"] == server
            and start <= p["ts"].replace(tzinfo=None) < start + timedelta(minutes=1)
        ]
        assert row["count"] == len(values) == 6
        assert row["sum"] == pytest.approx(sum(values), rel=1e-12)
        assert (row["min"], row["max"]) == (min(values), max(values))
        assert row["last"] == values[-1] and row["last_ts"] == start + timedelta(seconds=50)
        sketch = kll_doubles_sketch.deserialize(bytes(row["sketch"]))
        assert sketch.n == 6 and row["p50"] == sketch.get_quantile(0.5, True)  # inclusive, as Spark

    hours = rollup_rollups(minutes, grain="hour")
    direct = {r.server_id: r for r in rollup_points(points, grain="hour", sketch_k=200).collect()}
    for row in hours.collect():
        exact = direct[row.server_id]
        assert row.window_start == N0 and row["count"] == exact["count"] == 360
        assert row["sum"] == pytest.approx(exact["sum"], rel=1e-12)
        assert (row["min"], row["max"], row["last"]) == (exact["min"], exact["max"], exact["last"])
        merged = kll_doubles_sketch.deserialize(bytes(row["sketch"]))
        eps = merged.normalized_rank_error(False)
        values = np.sort([p["metrics"]["cpu_pct"] for p in rows if p["server_id"] == row.server_id])
        for q, estimate in zip((0.5, 0.95, 0.99), (row.p50, row.p95, row.p99), strict=True):
            rank = np.searchsorted(values, estimate, side="right") / len(values)
            assert abs(rank - q) <= eps + 1 / len(values)

    partitioned = with_partitions(hours).first()
    assert partitioned is not None and (partitioned.date, partitioned.hour) == ("2026-11-20", 13)


def test_baseline_per_hour_of_week(spark: SparkSession) -> None:
    monday = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)  # a Monday
    rows = []
    for week, mean in enumerate((10.0, 20.0, 30.0)):
        for start, hour_mean in ((monday, mean), (monday + timedelta(days=6, hours=23), 50.0)):
            rows.append(
                {
                    "window_start": start - timedelta(weeks=week),
                    "server_id": "srv-1",
                    "metric": "cpu_pct",
                    "sum": hour_mean * 360,
                    "count": 360,
                }
            )
    frame = spark.createDataFrame(pa.Table.from_pylist(rows))
    got = {r.hour_of_week: r for r in hourly_baseline(frame, computed_at=monday).collect()}
    assert set(got) == {0, 167}
    assert got[0]["mean"] == pytest.approx(20.0) and got[0]["stddev"] == pytest.approx(10.0)
    assert got[0]["samples"] == 3 and got[0]["computed_at"] == monday.replace(tzinfo=None)
    assert got[167]["mean"] == pytest.approx(50.0) and got[167]["stddev"] == pytest.approx(0.0)


def test_only_repeated_events_are_deduplicated_and_the_result_equals_a_full_dedup(
    spark: SparkSession,
) -> None:
    rows = [
        payload(f"e{i}", f"srv-{i % 3}", T0 + timedelta(seconds=10 * i), {"cpu_pct": float(i)})
        for i in range(20)
    ]
    rows += [
        payload("e3", "srv-0", T0 + timedelta(seconds=30), {"cpu_pct": 99.0}, ingest_s=40),
        payload("e3", "srv-0", T0 + timedelta(seconds=30), {"cpu_pct": 98.0}, ingest_s=-2),
        payload("e7", "srv-1", T0 + timedelta(seconds=70), {"cpu_pct": 7.0}, ingest_s=60),
    ]
    frame = landing(spark, rows)
    keys = repeated_keys(frame)
    assert keys.count() == 2  # e3 (three rows) and e7 (two)
    singles, repeated = split_by_keys(frame, keys)
    assert singles.count() == 18 and repeated.count() == 5
    assert sorted(r.event_id for r in repeated.collect()) == ["e3", "e3", "e3", "e7", "e7"]

    def key(frame: DataFrame) -> list[tuple[Any, ...]]:
        return sorted(tuple(r) for r in frame.select("event_id", "metrics", "ingest_ts").collect())

    two_step = singles.unionByName(first_copies(repeated))
    assert key(two_step) == key(first_copies(frame))
    e3 = two_step.where("event_id = 'e3'").collect()
    assert len(e3) == 1 and e3[0].metrics == {"cpu_pct": 98.0}  # the first ingested copy


def test_a_windows_sum_has_the_same_bits_whatever_the_order_of_its_rows(
    spark: SparkSession,
) -> None:
    values = [0.1, 0.2, 0.3, 1e16, -1e16, 7.7, 1e-3]
    sums = set()
    for order in (values, values[::-1], values[3:] + values[:3]):
        rows = [
            payload(f"e{i}", "srv-1", T0 + timedelta(seconds=i), {"cpu_pct": v})
            for i, v in enumerate(order)
        ]
        # Several input partitions: partial sums merged in an order Spark chooses.
        frame = landing_to_points(landing(spark, rows)).repartition(3)
        (row,) = rollup_points(frame, grain="minute", sketch_k=200).collect()
        sums.add(row.sum)
    assert sums == {sum(sorted(values))}
