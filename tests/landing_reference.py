"""The reference input of the batch tests: every landing row, exploded and deduplicated in
polars, independently of the Spark jobs."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from fleetlens.config import Settings
from fleetlens.lake.landing import LANDING_SCHEMA


def landing_points(settings: Settings) -> pl.DataFrame:
    """The reference's input: every landing row, exploded and deduplicated in polars."""
    files = sorted(Path(settings.lake.root, "landing", "metrics").rglob("*.parquet"))
    frame = pl.concat(
        [pl.from_arrow(pq.read_table(f, schema=LANDING_SCHEMA)) for f in files]  # type: ignore[misc]
    )
    points = (
        frame.with_columns(pl.col("metrics").map.entries())
        .explode("metrics")
        .unnest("metrics")
        .rename({"key": "metric"})
        .sort("ingest_ts")
        .unique(["event_id", "metric"], keep="first", maintain_order=True)
    )
    return points.select(
        "server_id", "metric", "value", pl.col("ts").cast(pl.Datetime("us", "UTC"))
    )
