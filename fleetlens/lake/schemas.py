"""Schemas of the lake's tables, shared by the layers that write and read them."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

__all__ = [
    "ACKS_KEY",
    "ACKS_SCHEMA",
    "ALERTS_KEY",
    "ALERTS_SCHEMA",
    "BASELINE",
    "BASELINE_SCHEMA",
    "HOUR_PARTITIONS",
    "LATE_KEY",
    "QUARANTINE",
    "QUARANTINE_SCHEMA",
    "RAW_POINTS",
    "RAW_POINTS_SCHEMA",
    "ROLLUP_1D",
    "ROLLUP_1D_SCHEMA",
    "ROLLUP_1H",
    "ROLLUP_1M",
    "ROLLUP_HOURLY_SCHEMA",
    "ROLLUP_SCHEMA",
    "SILENCES_KEY",
    "SILENCES_SCHEMA",
    "SPEED_1M",
    "SPEED_1M_SCHEMA",
    "SPEED_LATE_1M",
    "SPEED_LATE_SCHEMA",
    "TAG_COLUMNS",
    "WATERMARKS",
    "WATERMARK_SCHEMA",
    "WINDOW_KEY",
    "epoch_ms",
    "micros",
]

# -- table names ----------------------------------------------------------------------
RAW_POINTS = "raw_points"
QUARANTINE = "quarantine"
ROLLUP_1M = "rollup_1m"
ROLLUP_1H = "rollup_1h"
ROLLUP_1D = "rollup_1d"
BASELINE = "baseline_hourly"
SPEED_1M = "speed_1m"
SPEED_LATE_1M = "speed_late_1m"
WATERMARKS = "batch_watermarks"

#: Tag columns carried by every aggregate row, in this order.
TAG_COLUMNS = ("tenant", "region", "env", "service", "cluster")

#: The key that makes an aggregate row unique (and its writes idempotent).
WINDOW_KEY = ("server_id", "metric", "window_start")

#: ``rollup_1m``/``rollup_1h``/``rollup_1d`` (batch layer) and the base of ``speed_1m``.
#: ``sketch`` is a KLL doubles sketch in the Apache DataSketches binary format.
ROLLUP_SCHEMA = pa.schema(
    [
        pa.field("window_start", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("server_id", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        *(pa.field(tag, pa.string()) for tag in TAG_COLUMNS),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("sum", pa.float64(), nullable=False),
        pa.field("min", pa.float64(), nullable=False),
        pa.field("max", pa.float64(), nullable=False),
        pa.field("last", pa.float64(), nullable=False),
        pa.field("last_ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("sketch", pa.binary(), nullable=False),
        pa.field("p50", pa.float64()),
        pa.field("p95", pa.float64()),
        pa.field("p99", pa.float64()),
    ]
)

#: The speed layer's closed 1-minute windows: the rollup columns plus when they were emitted.
SPEED_1M_SCHEMA = ROLLUP_SCHEMA.append(
    pa.field("emitted_at", pa.timestamp("us", tz="UTC"), nullable=False)
)

#: Records the speed layer dropped as late, per window and source partition: what its
#: ``speed_1m`` rows are missing until the batch layer covers the window.
SPEED_LATE_SCHEMA = pa.schema(
    [
        pa.field("window_start", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("topic", pa.string(), nullable=False),
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("late_dropped", pa.int64(), nullable=False),
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

#: The key of ``speed_late_1m`` rows: each partition is counted by exactly one process.
LATE_KEY = ("topic", "partition", "window_start")

#: ``raw_points`` (batch layer): one row per point, deduplicated on ``(event_id, metric)``,
#: partitioned by ``date`` (the event's UTC day, ``YYYY-MM-DD``) and ``hour`` (``0`` to ``23``).
RAW_POINTS_SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("server_id", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        *(pa.field(tag, pa.string()) for tag in TAG_COLUMNS),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("ingest_ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("date", pa.string(), nullable=False),
        pa.field("hour", pa.int32(), nullable=False),
    ]
)

#: ``quarantine``: landing rows (or points) that break the contract, with the reason;
#: partitioned like ``raw_points`` by the hour of the landing partition they came from.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("event_id", pa.string()),
        pa.field("server_id", pa.string()),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
        pa.field("metric", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("reason", pa.string(), nullable=False),
        # When the row reached the lake (not when it was quarantined: reruns stay equal).
        pa.field("ingest_ts", pa.timestamp("us", tz="UTC")),
        pa.field("date", pa.string(), nullable=False),
        pa.field("hour", pa.int32(), nullable=False),
    ]
)

#: ``baseline_hourly``: per server, metric and hour of week (0 = Monday 00:00 UTC … 167),
#: the mean and standard deviation of the hourly means of ``rollup_1h`` over the last
#: ``batch.baseline_weeks`` weeks; ``samples`` is how many hours it rests on.
BASELINE_SCHEMA = pa.schema(
    [
        pa.field("server_id", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("hour_of_week", pa.int32(), nullable=False),
        pa.field("mean", pa.float64(), nullable=False),
        pa.field("stddev", pa.float64()),
        pa.field("samples", pa.int64(), nullable=False),
        pa.field("computed_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

#: ``alerts``: every transition and notification of every alert (the records of
#: ``fleet.alerts.v1``), with where it was delivered.
ALERTS_SCHEMA = pa.schema(
    [
        pa.field("at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("alert_id", pa.string(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("severity", pa.string(), nullable=False),
        pa.field("change", pa.string(), nullable=False),
        pa.field("state", pa.string(), nullable=False),
        pa.field("server_id", pa.string()),
        *(pa.field(tag, pa.string()) for tag in TAG_COLUMNS),
        pa.field("labels", pa.string(), nullable=False),  # JSON object
        pa.field("value", pa.float64()),
        pa.field("started_at", pa.timestamp("us", tz="UTC")),
        pa.field("firing_at", pa.timestamp("us", tz="UTC")),
        pa.field("summary", pa.string(), nullable=False),
        pa.field("channels", pa.list_(pa.string()), nullable=False),
        pa.field("delivered", pa.list_(pa.string()), nullable=False),
        pa.field("failed", pa.list_(pa.string()), nullable=False),
        pa.field("suppressed_by", pa.list_(pa.string()), nullable=False),
        pa.field("suppressed", pa.bool_(), nullable=False),
        pa.field("idempotency_key", pa.string(), nullable=False),
    ]
)
#: A notification held back by a silence and the same one sent later are two rows.
ALERTS_KEY = ("idempotency_key", "suppressed")

#: ``alert_silences``: the silences made through the API, one row each in its latest form (an
#: expired silence ends when it was expired).
SILENCES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("matchers", pa.string(), nullable=False),  # JSON list of matchers
        pa.field("starts_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("ends_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("comment", pa.string(), nullable=False),
        pa.field("created_by", pa.string(), nullable=False),
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("expired_by", pa.string()),
    ]
)
SILENCES_KEY = ("id",)

#: ``alert_acks``: acknowledgements made through the API, one per episode of an alert (the
#: episode is the time it fired).
ACKS_SCHEMA = pa.schema(
    [
        pa.field("alert_id", pa.string(), nullable=False),
        pa.field("firing_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("acked_by", pa.string(), nullable=False),
        pa.field("acked_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("comment", pa.string(), nullable=False),
    ]
)
ACKS_KEY = ("alert_id", "firing_at")

#: ``batch_watermarks`` (control table): per table, the end of the last complete, verified
#: interval; the serving layer reads batch data before it and speed data after it.
WATERMARK_SCHEMA = pa.schema(
    [
        pa.field("table_name", pa.string(), nullable=False),
        pa.field("complete_until", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("run_id", pa.string()),
    ]
)

#: Partition columns of the hour-partitioned batch tables (``raw_points``, ``quarantine``,
#: ``rollup_1m``, ``rollup_1h``): the UTC day ``YYYY-MM-DD`` and hour ``0`` to ``23`` of the
#: event time or window start. An hour is the unit the jobs recompute and replace.
HOUR_PARTITIONS = ("date", "hour")

#: ``rollup_1m`` and ``rollup_1h``: the rollup columns plus their partition columns.
ROLLUP_HOURLY_SCHEMA = ROLLUP_SCHEMA.append(pa.field("date", pa.string(), nullable=False)).append(
    pa.field("hour", pa.int32(), nullable=False)
)

#: ``rollup_1d``: the rollup columns, partitioned by ``date``.
ROLLUP_1D_SCHEMA = ROLLUP_SCHEMA.append(pa.field("date", pa.string(), nullable=False))


def micros(ms: int | None) -> int | None:
    """A value of the tables' ``timestamp("us", tz="UTC")`` columns from epoch ms."""
    return None if ms is None else ms * 1000


def epoch_ms(moment: datetime) -> int:
    """Epoch ms of a time (as read from those columns, or from an API request)."""
    return int(moment.timestamp() * 1000)
