"""A simulated lake for the analyst workbench: months of rollups, a day of minutes, a live
tail and the pipeline's own records, from the fleet model, in seconds.

What the notebooks and the capacity report read, without Kafka or Spark: the tables have
the production schemas and partitioning (see :mod:`fleetlens.simulator.lake`). Tiers are
sampled at different rates to stay small: ``rollup_1d`` and ``rollup_1h`` from a sample
every ``coarse_s`` seconds, ``raw_points`` and ``rollup_1m`` (and ``rollup_1h`` over their
span) from one every ``fine_s``; counts therefore differ between tiers, values do not.
Disk usage grows at each server's known rate (:attr:`Fleet.disk_growth_per_day`), which is
what the capacity report's tests check its forecasts against.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import (
    HOUR_PARTITIONS,
    QUARANTINE,
    QUARANTINE_SCHEMA,
    RAW_POINTS,
    ROLLUP_1D,
    ROLLUP_1H,
    ROLLUP_1M,
    SPEED_1M,
)
from fleetlens.simulator.fleet import METRICS, Fleet
from fleetlens.simulator.history import write_history
from fleetlens.simulator.lake import (
    POINT_SCHEMA,
    day_floor,
    partitioned,
    raw_rows,
    rollup_rows,
    write_tier,
    write_watermarks,
)

__all__ = ["WorkbenchShape", "fleet_points", "write_workbench_lake"]


@dataclass(frozen=True)
class WorkbenchShape:
    """How much of each tier to simulate.

    Attributes:
        days: Days of ``rollup_1d`` (and of history in general), ending at ``end``.
        hourly_days: Days of ``rollup_1h``.
        minute_hours: Hours of ``raw_points`` and ``rollup_1m``.
        speed_hours: Hours after the batch watermark served by ``speed_1m``.
        landing_hours: Hours of landing files (with duplicated payloads) for the pipeline
            health notebook.
        coarse_s: Sampling interval of the daily and hourly tiers.
        fine_s: Sampling interval of the minute tier and the landing files.
        duplicate_fraction: Share of landing payloads written twice.
    """

    days: int = 60
    hourly_days: int = 14
    minute_hours: int = 24
    speed_hours: int = 2
    landing_hours: int = 2
    coarse_s: int = 900
    fine_s: int = 60
    duplicate_fraction: float = 0.02


def fleet_points(
    fleet: Fleet, *, start_s: int, end_s: int, interval_s: int, metrics: tuple[str, ...] = METRICS
) -> pl.DataFrame:
    """Every reporting server's samples of ``metrics`` at ``[start_s, end_s)`` every
    ``interval_s`` (:data:`~fleetlens.simulator.lake.POINT_SCHEMA`)."""
    slots = np.arange(start_s, end_s, interval_s, dtype=np.int64)
    values = fleet.sample(slots)
    keep = fleet.reporting(slots).ravel()
    ts_us = (fleet.timestamps_ms(slots, interval_s) * 1000).ravel()[keep]
    servers = np.broadcast_to(np.arange(fleet.spec.servers), (len(slots), fleet.spec.servers))
    index = servers.ravel()[keep]
    tags = pl.DataFrame(fleet.tags).with_columns(server_id=pl.Series(fleet.server_ids.tolist()))
    frames = [
        pl.DataFrame(
            {"_server": index, "ts": ts_us, "metric": metric, "value": values[metric].ravel()[keep]}
        )
        for metric in metrics
    ]
    return (
        pl.concat(frames)
        .join(tags.with_row_index("_server").cast({"_server": pl.Int64}), on="_server")
        .with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
        .select(list(POINT_SCHEMA))
        .cast(POINT_SCHEMA)  # type: ignore[arg-type]
    )


def write_workbench_lake(
    lake: Lake,
    fleet: Fleet,
    *,
    end: datetime,
    shape: WorkbenchShape = WorkbenchShape(),
    late_topic: str = "fleet.metrics.v1",
    live: bool = True,
) -> dict[str, Any]:
    """Write the workbench's lake for the history ending at ``end`` (floored to the minute).

    The batch watermark of ``rollup_1m``/``rollup_1h`` is ``shape.speed_hours`` before
    ``end`` (``speed_1m`` serves the rest), that of ``rollup_1d`` the midnight before it.
    Also written: landing files of the last ``shape.landing_hours`` with duplicated
    payloads, a few quarantined rows, late-sample counts, and quality reports of the minute
    tier's hours (one of them failed).

    Args:
        live: Also write what the live pipeline writes (``speed_1m``, ``speed_late_1m``,
            landing files); False behind a lake that holds live data already (the demo's),
            whose windows the simulated ones would otherwise duplicate.

    Returns:
        What was written: rows per table, the interval, the watermarks.
    """
    from speed_layer.sinks import LateTable

    end = end.astimezone(UTC).replace(second=0, microsecond=0)
    end_s = int(end.timestamp())
    hour_end = end.replace(minute=0)
    boundary = hour_end - timedelta(hours=shape.speed_hours)
    midnight = day_floor(boundary)
    start = day_floor(end - timedelta(days=shape.days))
    fine_start = hour_end - timedelta(hours=shape.minute_hours)
    hourly_start = hour_end - timedelta(days=shape.hourly_days)
    coarse = fleet_points(
        fleet, start_s=int(start.timestamp()), end_s=end_s, interval_s=shape.coarse_s
    )
    fine = fleet_points(
        fleet, start_s=int(fine_start.timestamp()), end_s=end_s, interval_s=shape.fine_s
    )
    written: dict[str, int] = {}

    def put(name: str, frame: pl.DataFrame) -> None:
        write_tier(lake, name, frame)
        written[name] = written.get(name, 0) + frame.height

    before = pl.col("ts") < boundary
    daily = rollup_rows(coarse.filter(pl.col("ts") < midnight), window_s=86_400)
    put(ROLLUP_1D, daily)
    put(ROLLUP_1H, rollup_rows(
        coarse.filter(pl.col("ts") >= hourly_start, pl.col("ts") < fine_start), window_s=3600
    ))  # fmt: skip
    put(ROLLUP_1H, rollup_rows(fine.filter(before), window_s=3600))
    put(ROLLUP_1M, rollup_rows(fine.filter(before), window_s=60))
    put(RAW_POINTS, raw_rows(fine.filter(before)))
    watermarks = {ROLLUP_1M: boundary, ROLLUP_1H: boundary, ROLLUP_1D: midnight}
    write_watermarks(lake, watermarks, run_id="workbench")
    written[QUARANTINE] = _write_quarantine(lake, fine.filter(before), seed=fleet.spec.seed)
    written["quality_reports"] = _write_quality_reports(
        lake, start=fine_start, end=boundary, failed=boundary - timedelta(hours=5)
    )
    summary = {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "servers": fleet.spec.servers,
        "rows": written,
        "watermarks": {table: mark.isoformat() for table, mark in watermarks.items()},
    }
    if not live:
        return summary

    put(
        SPEED_1M,
        rollup_rows(fine.filter(~before), window_s=60).with_columns(emitted_at=pl.lit(end)),
    )
    landing = write_history(
        fleet,
        lake,
        start_s=int((hour_end - timedelta(hours=shape.landing_hours)).timestamp()),
        end_s=int(hour_end.timestamp()),
        interval_s=shape.fine_s,
        duplicate_fraction=shape.duplicate_fraction,
    )
    written["landing_payloads"] = landing.payloads
    rng = np.random.default_rng([fleet.spec.seed, 11])
    minutes = pl.datetime_range(boundary, end, "1m", closed="left", eager=True)
    late = [
        (late_topic, int(p), int(m.timestamp() * 1000), int(n))
        for m, p, n in zip(
            minutes, rng.integers(0, 4, len(minutes)), rng.poisson(0.6, len(minutes)), strict=True
        )
        if n
    ]
    LateTable(lake).upsert(late, updated_at_ms=end_s * 1000)
    written["late_windows"] = len(late)
    return summary


_QUARANTINE_REASONS = ("value out of range", "unknown metric", "timestamp too far ahead")


def _write_quarantine(lake: Lake, points: pl.DataFrame, *, seed: int) -> int:
    """A handful of rows the compaction would have rejected, with its reasons."""
    rows = points.sample(n=min(40, points.height), seed=seed).with_columns(
        source_file=pl.lit("landing/metrics/simulated.parquet"),
        event_id=pl.format("sim-q-{}", pl.int_range(pl.len())),
        reason=pl.Series([_QUARANTINE_REASONS[i % 3] for i in range(min(40, points.height))]),
        value=pl.col("value") + 1000,
        ingest_ts=pl.col("ts"),
    )
    rows = partitioned(rows, "ts", hourly=True).select(QUARANTINE_SCHEMA.names)
    delta.ensure_table(lake, QUARANTINE, schema=QUARANTINE_SCHEMA, partition_by=HOUR_PARTITIONS)
    delta.append(lake, QUARANTINE, rows.to_arrow())
    return rows.height


def _write_quality_reports(lake: Lake, *, start: datetime, end: datetime, failed: datetime) -> int:
    """Per hour of ``[start, end)``, the reports the quality job keeps; ``failed``'s hour
    has a failed range check on ``raw_points``."""
    from spark_jobs.quality import Failure, QualityReport, write_report

    count = 0
    hour = start
    while hour < end:
        interval = (hour, hour + timedelta(hours=1))
        for name in (RAW_POINTS, ROLLUP_1M, ROLLUP_1H, f"{ROLLUP_1H}.reconciliation"):
            bad = name == RAW_POINTS and hour == failed.replace(minute=0)
            failures = (
                (
                    Failure(
                        expectation="expect_column_values_to_be_between",
                        columns="value",
                        condition='metric == "cpu_pct"',
                        params={"min_value": 0, "max_value": 100},
                        unexpected_count=3,
                        element_count=17_280,
                        examples=[1012.5],
                    ),
                )
                if bad
                else ()
            )
            report = QualityReport(
                name=name,
                interval=interval,
                success=not bad,
                failures=failures,
                evaluated=12,
                result={"success": not bad, "simulated": True},
            )
            write_report(lake, report)
            count += 1
        hour += timedelta(hours=1)
    return count
