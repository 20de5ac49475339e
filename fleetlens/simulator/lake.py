"""A simulated lake written directly: batch tables, speed-layer windows and watermarks from a
frame of points, without Kafka or Spark.

For what needs a lake of a known shape quickly (the query engine's tests, the query
benchmark, the notebooks' small-data default). The tables have the production schemas and
partitioning, so every reader treats them as the real thing; the pipeline's own tests
produce theirs with the speed layer and the Spark jobs instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pyarrow as pa
from datasketches import kll_doubles_sketch

from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import (
    HOUR_PARTITIONS,
    RAW_POINTS,
    RAW_POINTS_SCHEMA,
    ROLLUP_1D,
    ROLLUP_1D_SCHEMA,
    ROLLUP_1H,
    ROLLUP_1M,
    ROLLUP_HOURLY_SCHEMA,
    SPEED_1M,
    SPEED_1M_SCHEMA,
    TAG_COLUMNS,
    WATERMARK_SCHEMA,
    WATERMARKS,
)
from fleetlens.serving.tiers import day_floor  # re-exported: the simulated lakes' callers use it

__all__ = [
    "POINT_SCHEMA",
    "day_floor",
    "partitioned",
    "raw_rows",
    "rollup_rows",
    "write_simulated_lake",
    "write_table",
    "write_tier",
    "write_watermarks",
]

#: The columns of a points frame: one row per sample.
POINT_SCHEMA = {
    "ts": pl.Datetime("us", "UTC"),
    "server_id": pl.String,
    "metric": pl.String,
    "value": pl.Float64,
    **dict.fromkeys(TAG_COLUMNS, pl.String),
}
_QUANTILES = [0.5, 0.95, 0.99]


def rollup_rows(points: pl.DataFrame, *, window_s: int, sketch_k: int = 200) -> pl.DataFrame:
    """Window aggregates of ``points`` (:data:`POINT_SCHEMA`) with the rollup columns:
    ``count, sum, min, max, last, last_ts``, a KLL sketch and p50/p95/p99 read from it (by
    inclusive rank, as Spark's ``kll_sketch_get_quantile_double``)."""
    step_us = window_s * 1_000_000
    grouped = (
        points.with_columns(
            window_start=((pl.col("ts").dt.epoch("us") // step_us) * step_us).cast(
                pl.Datetime("us", "UTC")
            )
        )
        .sort("ts")
        .group_by("window_start", "server_id", "metric", maintain_order=True)
        .agg(
            *(pl.col(t).last() for t in TAG_COLUMNS),
            count=pl.len().cast(pl.Int64),
            sum=pl.col("value").sum(),
            min=pl.col("value").min(),
            max=pl.col("value").max(),
            last=pl.col("value").last(),
            last_ts=pl.col("ts").last(),
            values=pl.col("value"),
        )
    )
    sketches, quantiles = [], []
    for values in grouped["values"].to_list():
        sketch = kll_doubles_sketch(sketch_k)
        sketch.update(np.asarray(values, np.float64))
        sketches.append(sketch.serialize())
        quantiles.append(sketch.get_quantiles(_QUANTILES, True))
    q = np.asarray(quantiles, np.float64).reshape(-1, 3)
    return grouped.drop("values").with_columns(
        sketch=pl.Series(sketches, dtype=pl.Binary),
        p50=pl.Series(q[:, 0]),
        p95=pl.Series(q[:, 1]),
        p99=pl.Series(q[:, 2]),
    )


def partitioned(frame: pl.DataFrame, column: str, *, hourly: bool) -> pl.DataFrame:
    """``frame`` with the partition columns of ``column``'s time: ``date`` (and ``hour``)."""
    frame = frame.with_columns(date=pl.col(column).dt.strftime("%Y-%m-%d"))
    if hourly:
        frame = frame.with_columns(hour=pl.col(column).dt.hour().cast(pl.Int32))
    return frame


def write_simulated_lake(
    lake: Lake,
    points: pl.DataFrame,
    *,
    watermarks: Mapping[str, datetime],
    speed_points: pl.DataFrame | None = None,
    speed_from: datetime | None = None,
    sketch_k: int = 200,
    raw: bool = True,
) -> None:
    """Write ``raw_points``, ``rollup_1m``/``1h``/``1d`` from every point, ``speed_1m``
    from ``speed_points`` (default: the same points) in windows from ``speed_from``
    (default: the earliest watermark, or all), and ``batch_watermarks``.

    Args:
        lake: Where to write (tables are created or appended to).
        points: Samples (:data:`POINT_SCHEMA`), deduplicated: what the batch layer holds.
        watermarks: ``complete_until`` per batch table (``rollup_1m``, ``rollup_1h``,
            ``rollup_1d``).
        speed_points: What the speed layer saw (without the samples it dropped as late).
        speed_from: The first speed-layer window kept (its retention).
        sketch_k: KLL sketch size.
        raw: Whether to write ``raw_points`` too.
    """
    now = datetime.now(UTC)
    if raw:
        write_tier(lake, RAW_POINTS, raw_rows(points))
    for name, window_s in ((ROLLUP_1M, 60), (ROLLUP_1H, 3600), (ROLLUP_1D, 86_400)):
        write_tier(lake, name, rollup_rows(points, window_s=window_s, sketch_k=sketch_k))
    seen = points if speed_points is None else speed_points
    speed = rollup_rows(seen, window_s=60, sketch_k=sketch_k)
    start = speed_from or min(watermarks.values(), default=None)
    if start is not None:
        speed = speed.filter(pl.col("window_start") >= start)
    write_tier(lake, SPEED_1M, speed.with_columns(emitted_at=pl.lit(now)))
    write_watermarks(lake, watermarks, run_id="simulated")


#: Per table: its schema, partition columns, and the time column they are derived from.
_LAYOUTS: dict[str, tuple[pa.Schema, tuple[str, ...], str]] = {
    RAW_POINTS: (RAW_POINTS_SCHEMA, HOUR_PARTITIONS, "ts"),
    ROLLUP_1M: (ROLLUP_HOURLY_SCHEMA, HOUR_PARTITIONS, "window_start"),
    ROLLUP_1H: (ROLLUP_HOURLY_SCHEMA, HOUR_PARTITIONS, "window_start"),
    ROLLUP_1D: (ROLLUP_1D_SCHEMA, ("date",), "window_start"),
    SPEED_1M: (SPEED_1M_SCHEMA, (), "window_start"),
}


def raw_rows(points: pl.DataFrame) -> pl.DataFrame:
    """``points`` as ``raw_points`` rows: a simulated ``event_id`` and ``ingest_ts``."""
    return points.with_columns(
        event_id=pl.format("sim-{}-{}", pl.col("server_id"), pl.col("ts").dt.epoch("ms")),
        ingest_ts=pl.col("ts"),
    )


def write_tier(lake: Lake, name: str, frame: pl.DataFrame) -> None:
    """Append ``frame`` to ``name`` (a table of :data:`_LAYOUTS`) with its production
    layout: the partition columns derived from its time column, its schema and partitions."""
    schema, parts, column = _LAYOUTS[name]
    if parts:
        frame = partitioned(frame, column, hourly="hour" in parts)
    write_table(lake, name, frame, schema, parts)


def write_table(
    lake: Lake, name: str, frame: pl.DataFrame, schema: pa.Schema, parts: tuple[str, ...]
) -> None:
    """Append ``frame`` to the table ``name``, creating it with ``schema`` and ``parts``."""
    delta.ensure_table(lake, name, schema=schema, partition_by=parts or None)
    delta.append(lake, name, frame.to_arrow())


def write_watermarks(lake: Lake, watermarks: Mapping[str, datetime], *, run_id: str) -> None:
    """Set ``batch_watermarks.complete_until`` of each table in ``watermarks``."""
    marks = pl.DataFrame(
        {
            "table_name": list(watermarks),
            "complete_until": list(watermarks.values()),
            "updated_at": [datetime.now(UTC)] * len(watermarks),
            "run_id": [run_id] * len(watermarks),
        },
        schema={
            "table_name": pl.String,
            "complete_until": pl.Datetime("us", "UTC"),
            "updated_at": pl.Datetime("us", "UTC"),
            "run_id": pl.String,
        },
    )
    delta.ensure_table(lake, WATERMARKS, schema=WATERMARK_SCHEMA)
    delta.upsert(lake, WATERMARKS, marks.to_arrow(), key=["table_name"])
