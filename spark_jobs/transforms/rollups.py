"""Rollups: points to 1-minute and 1-hour windows, and windows to coarser windows.

Every rollup has the columns of :data:`~fleetlens.lake.schemas.ROLLUP_SCHEMA`; ``sketch``
is a KLL doubles sketch (Apache DataSketches format) made by ``kll_sketch_agg_double`` and
merged upward by ``kll_merge_agg_double``, so the ``datasketches`` package and the speed
layer read and merge it.
"""

from __future__ import annotations

from typing import Literal

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from fleetlens.lake.schemas import ROLLUP_SCHEMA, TAG_COLUMNS

__all__ = [
    "QUANTILES",
    "ROLLUP_COLUMNS",
    "Grain",
    "rollup_points",
    "rollup_rollups",
    "with_partitions",
]

Grain = Literal["minute", "hour", "day"]

#: The quantiles materialised next to the sketch, as ``p50``, ``p95``, ``p99``.
QUANTILES = (0.5, 0.95, 0.99)

#: The rollup columns, in table order.
ROLLUP_COLUMNS = tuple(ROLLUP_SCHEMA.names)


def _quantile_columns() -> list[Column]:
    ranks = ", ".join(f"{q}D" for q in QUANTILES)
    values = F.expr(f"kll_sketch_get_quantile_double(sketch, array({ranks}))")
    return [values[i].alias(f"p{round(q * 100)}") for i, q in enumerate(QUANTILES)]


def _exact_sum(column: str) -> Column:
    """The sum in ascending order of the values: floating-point addition is not
    associative, and Spark adds in whatever order the tasks' rows arrive, so a recomputed
    window would otherwise differ in its last bits."""
    return F.aggregate(F.array_sort(F.collect_list(column)), F.lit(0.0), lambda a, v: a + v)


def _tags() -> list[Column]:
    # A server's tags are constant in practice; max() makes the choice deterministic.
    return [F.max(tag).alias(tag) for tag in TAG_COLUMNS]


def rollup_points(points: DataFrame, *, grain: Grain, sketch_k: int) -> DataFrame:
    """Aggregate points (``ts, server_id, metric, value`` and tags) into windows."""
    window_start = F.date_trunc(grain, "ts").alias("window_start")
    # Series first: raw_points files are sorted by server and time, finer rollups by
    # series (_SERIES_ORDER in spark_jobs.jobs), so the sort-based aggregation of the
    # sketches finds its input nearly in order.
    aggregated = points.groupBy("server_id", "metric", window_start).agg(
        *_tags(),
        F.count("value").alias("count"),
        _exact_sum("value").alias("sum"),
        F.min("value").alias("min"),
        F.max("value").alias("max"),
        # The value of the latest sample; equal times are broken by the largest value.
        F.max_by("value", F.struct("ts", "value")).alias("last"),
        F.max("ts").alias("last_ts"),
        F.expr(f"kll_sketch_agg_double(value, {int(sketch_k)})").alias("sketch"),
    )
    return aggregated.select(*ROLLUP_COLUMNS[:-3], *_quantile_columns())


def rollup_rollups(rollups: DataFrame, *, grain: Grain) -> DataFrame:
    """Aggregate finer windows (e.g. 1-hour) into coarser ones (e.g. 1-day)."""
    window_start = F.date_trunc(grain, "window_start").alias("window_start")
    aggregated = rollups.groupBy("server_id", "metric", window_start).agg(
        *_tags(),
        F.sum("count").alias("count"),
        _exact_sum("sum").alias("sum"),
        F.min("min").alias("min"),
        F.max("max").alias("max"),
        F.max_by("last", F.struct("last_ts", "last")).alias("last"),
        F.max("last_ts").alias("last_ts"),
        F.expr("kll_merge_agg_double(sketch)").alias("sketch"),
    )
    return aggregated.select(*ROLLUP_COLUMNS[:-3], *_quantile_columns())


def with_partitions(rollups: DataFrame, *, hour: bool = True) -> DataFrame:
    """Add the partition columns ``date`` (and ``hour``) of ``window_start``."""
    columns = {"date": F.date_format("window_start", "yyyy-MM-dd")}
    if hour:
        columns["hour"] = F.hour("window_start").cast("int")
    return rollups.withColumns(columns)
