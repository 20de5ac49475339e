"""The landing zone: raw payloads as Parquet, partitioned by event hour.

Layout: ``<lake>/landing/metrics/date=YYYY-MM-DD/hour=HH/part-<id>.parquet``, one row per
payload. Both the archiver (from Kafka) and ``simulate history`` write it; the batch layer's
compaction reads it.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fleetlens.lake.paths import Lake, fsync_dir, put_object

__all__ = [
    "LANDING_SCHEMA",
    "hour_partition",
    "split_by_hour",
    "write_landing_file",
]

LANDING_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("server_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("metrics", pa.map_(pa.string(), pa.float64()), nullable=False),
        pa.field("tags", pa.map_(pa.string(), pa.string()), nullable=False),
        # Null for rows that did not come through Kafka (simulated history).
        pa.field("kafka_partition", pa.int32()),
        pa.field("kafka_offset", pa.int64()),
        pa.field("ingest_ts", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)


def hour_partition(ts_ms: int) -> str:
    """The landing partition (``date=YYYY-MM-DD/hour=HH``) of an event time in epoch ms."""
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return f"date={moment:%Y-%m-%d}/hour={moment:%H}"


def split_by_hour(table: pa.Table) -> dict[str, pa.Table]:
    """Group a landing table's rows by event hour partition."""
    hours = pc.floor_temporal(table["ts"], unit="hour")
    out: dict[str, pa.Table] = {}
    for hour in pc.unique(hours).to_pylist():
        part = table.filter(pc.equal(hours, pa.scalar(hour, hours.type)))
        out[f"date={hour:%Y-%m-%d}/hour={hour:%H}"] = part
    return out


#: Rows per Parquet row group: a row group is what a reader (a Spark task, a polars thread)
#: takes at a time, so an hour's file of 3.6 M payloads is read by many tasks, not four.
LANDING_ROW_GROUP = 131_072


def write_landing_file(lake: Lake, path: str, table: pa.Table) -> None:
    """Write one Parquet file durably (fsync on local disks) at ``path``; on an object store
    the file appears whole or not at all (see :func:`~fleetlens.lake.paths.put_object`)."""
    table = table.cast(LANDING_SCHEMA)
    if not lake.is_local:
        # Encoded in memory first: a failure while encoding must not publish half a file.
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, compression="zstd", row_group_size=LANDING_ROW_GROUP)
        put_object(lake.fs, path, buffer.getvalue())
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        pq.write_table(table, out, compression="zstd", row_group_size=LANDING_ROW_GROUP)
        out.flush()
        os.fsync(out.fileno())
    fsync_dir(target.parent)
