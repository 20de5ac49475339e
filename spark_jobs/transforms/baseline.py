"""The anomaly rules' baseline: per server, metric and hour of week, mean and spread."""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from fleetlens.lake.schemas import BASELINE_SCHEMA

__all__ = ["BASELINE_COLUMNS", "hour_of_week", "hourly_baseline"]

BASELINE_COLUMNS = tuple(BASELINE_SCHEMA.names)


def hour_of_week(column: str) -> Column:
    """0 for Monday the hour from Monday 00:00 UTC, up to 167 for Sunday 23:00."""
    # Spark's dayofweek is 1 for Sunday ... 7 for Saturday.
    monday_first = (F.dayofweek(column) + 5) % 7
    return (monday_first * 24 + F.hour(column)).cast("int")


def hourly_baseline(rollup_1h: DataFrame, *, computed_at: datetime) -> DataFrame:
    """From 1-hour rollups: the mean of the values and the standard deviation of the hourly
    means per ``(server_id, metric, hour_of_week)``; ``samples`` counts the hours."""
    hours = rollup_1h.select(
        "server_id",
        "metric",
        hour_of_week("window_start").alias("hour_of_week"),
        "sum",
        "count",
        (F.col("sum") / F.col("count")).alias("hourly_mean"),
    )
    return (
        hours.groupBy("server_id", "metric", "hour_of_week")
        .agg(
            (F.sum("sum") / F.sum("count")).alias("mean"),
            F.stddev_samp("hourly_mean").alias("stddev"),
            F.count("*").alias("samples"),
            F.lit(computed_at).cast("timestamp").alias("computed_at"),
        )
        .select(*BASELINE_COLUMNS)
    )
