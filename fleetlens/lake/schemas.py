"""Schemas of the lake's tables, shared by the layers that write and read them."""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "LATE_KEY",
    "ROLLUP_SCHEMA",
    "SPEED_1M_SCHEMA",
    "SPEED_LATE_SCHEMA",
    "TAG_COLUMNS",
    "WINDOW_KEY",
]

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
