"""Where closed windows go: the Delta table ``speed_1m`` and the Kafka topic ``fleet.agg1m.v1``.

Both are idempotent on ``(server_id, metric, window_start)``: the table is upserted on that
key, and the topic is keyed by server so a consumer keeps the latest record per window.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import (
    LATE_KEY,
    SPEED_1M_SCHEMA,
    SPEED_LATE_SCHEMA,
    TAG_COLUMNS,
    WINDOW_KEY,
)
from speed_layer.windows import ClosedWindow

__all__ = [
    "LATE_TABLE",
    "SPEED_TABLE",
    "Agg1mTopic",
    "LateTable",
    "SpeedTable",
    "windows_to_table",
]

SPEED_TABLE = "speed_1m"
LATE_TABLE = "speed_late_1m"


def windows_to_table(windows: Sequence[ClosedWindow], *, emitted_at_ms: int) -> pa.Table:
    """Closed windows as rows of ``speed_1m``."""
    aggregates = [w.aggregate for w in windows]
    finished = [a.finish() for a in aggregates]  # (sketch bytes, quantiles): one sketch each
    tags = [w.tags for w in windows]
    us = pa.timestamp("us", tz="UTC")
    columns: dict[str, Any] = {
        "window_start": _timestamps([w.window_start for w in windows], us),
        "server_id": [w.server_id for w in windows],
        "metric": [w.metric for w in windows],
        **{tag: [t.get(tag) for t in tags] for tag in TAG_COLUMNS},
        "count": [a.count for a in aggregates],
        "sum": [a.sum for a in aggregates],
        "min": [a.min for a in aggregates],
        "max": [a.max for a in aggregates],
        "last": [a.last for a in aggregates],
        "last_ts": _timestamps([a.last_ts for a in aggregates], us),
        "sketch": [f[0] for f in finished],
        "p50": [f[1][0] for f in finished],
        "p95": [f[1][1] for f in finished],
        "p99": [f[1][2] for f in finished],
        "emitted_at": pa.array(np.full(len(windows), emitted_at_ms * 1000, np.int64)).cast(us),
    }
    return pa.Table.from_pydict(columns, schema=SPEED_1M_SCHEMA)


def _timestamps(epoch_ms: list[int], unit: pa.DataType) -> pa.Array:
    """Epoch milliseconds as a timestamp array of ``unit`` (microseconds)."""
    return pa.array(np.asarray(epoch_ms, dtype=np.int64) * 1000).cast(unit)


class SpeedTable:
    """The ``speed_1m`` Delta table: upserts of closed windows, and retention."""

    def __init__(self, lake: Lake) -> None:
        self._lake = lake
        delta.ensure_table(
            lake,
            SPEED_TABLE,
            schema=SPEED_1M_SCHEMA,
            description="Speed layer: closed 1-minute windows (same columns as rollup_1m).",
        )

    def upsert(self, rows: pa.Table) -> None:
        """Write closed windows; rewriting a window replaces it."""
        if rows.num_rows:
            delta.upsert(self._lake, SPEED_TABLE, rows, key=WINDOW_KEY, prune_column="window_start")

    def apply_retention(self, *, retention_h: float, now_s: float | None = None) -> int:
        """Delete windows older than the retention; returns the number of rows deleted."""
        return _delete_before(self._lake, SPEED_TABLE, retention_h=retention_h, now_s=now_s)

    def maintain(self) -> delta.MaintenanceReport:
        """Compact the flushes' small files, checkpoint, clean the log and vacuum."""
        return delta.maintain(self._lake, SPEED_TABLE, retention_hours=_VACUUM_RETENTION_H)


#: The shortest vacuum retention the tables accept (``delta.deletedFileRetentionDuration``).
_VACUUM_RETENTION_H = 24


def _delete_before(lake: Lake, table: str, *, retention_h: float, now_s: float | None) -> int:
    cutoff = datetime.fromtimestamp((now_s or time.time()) - retention_h * 3600, UTC)
    return delta.delete_where(lake, table, f"window_start < '{cutoff:%Y-%m-%dT%H:%M:%S}Z'")


class LateTable:
    """``speed_late_1m``: per window and partition, the records dropped as late.

    Rows are upserted with the running count, so repeating a write after a crash is harmless.
    """

    def __init__(self, lake: Lake) -> None:
        self._lake = lake
        delta.ensure_table(
            lake,
            LATE_TABLE,
            schema=SPEED_LATE_SCHEMA,
            description="Speed layer: records dropped as later than the allowed lateness.",
        )

    def upsert(self, counts: Sequence[tuple[str, int, int, int]], *, updated_at_ms: int) -> None:
        """Write ``(topic, partition, window_start_ms, late_dropped)`` counts."""
        if not counts:
            return
        rows = pa.Table.from_pydict(
            {
                "window_start": [c[2] * 1000 for c in counts],
                "topic": [c[0] for c in counts],
                "partition": [c[1] for c in counts],
                "late_dropped": [c[3] for c in counts],
                "updated_at": [updated_at_ms * 1000] * len(counts),
            },
            schema=SPEED_LATE_SCHEMA,
        )
        delta.upsert(self._lake, LATE_TABLE, rows, key=LATE_KEY, prune_column="window_start")

    def apply_retention(self, *, retention_h: float, now_s: float | None = None) -> int:
        """Delete counts of windows older than the retention."""
        return _delete_before(self._lake, LATE_TABLE, retention_h=retention_h, now_s=now_s)

    def maintain(self) -> delta.MaintenanceReport:
        """Compact, checkpoint, clean the log and vacuum."""
        return delta.maintain(self._lake, LATE_TABLE, retention_hours=_VACUUM_RETENTION_H)


#: Rows converted to Python objects at a time by :meth:`Agg1mTopic.send` (bounds the memory
#: of a large catch-up commit).
_SEND_CHUNK_ROWS = 10_000


class Agg1mTopic:
    """Final windows as JSON records on ``fleet.agg1m.v1``, keyed by server."""

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._encoder = msgspec.json.Encoder()
        self._pending: list[Any] = []
        self._record_type: type[msgspec.Struct] | None = None
        #: server_id -> (key bytes, partition): the producer's default partitioner (murmur2 of
        #: the key, as Java's), computed once per server instead of once per record.
        self._keys: dict[str, tuple[bytes, int]] = {}
        self._partitions: list[int] = []

    def _key(self, server_id: str) -> tuple[bytes, int]:
        key = server_id.encode()
        partitions = self._partitions
        self._keys[server_id] = found = (
            key,
            partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)],
        )
        return found

    def send(self, rows: pa.Table) -> None:
        """Queue one record per row; :meth:`flush` makes them durable.

        A record is the row as a JSON object (columns in table order, then ``"final": true``)
        with the timestamps in epoch milliseconds and the sketch in base64.
        """
        if not rows.num_rows:
            return
        if self._record_type is None:
            fields: list[tuple[str, type]] = [(name, Any) for name in rows.schema.names]
            self._record_type = msgspec.defstruct("Agg1mRecord", [*fields, ("final", bool)])
        partitions = sorted(self._producer.partitions_for(self._topic))
        if partitions != self._partitions:
            self._partitions, self._keys = partitions, {}
        for offset in range(0, rows.num_rows, _SEND_CHUNK_ROWS):
            self._send_rows(rows.slice(offset, _SEND_CHUNK_ROWS))

    def _send_rows(self, rows: pa.Table) -> None:
        names = rows.schema.names
        columns: list[list[Any]] = []
        for name, column in zip(names, rows.columns, strict=True):
            if pa.types.is_timestamp(column.type):
                micros = column.cast(pa.int64()).to_numpy()
                columns.append((micros // 1000).tolist())
            elif name == "sketch":
                columns.append([base64.b64encode(b).decode() for b in column.to_pylist()])
            else:
                columns.append(column.to_pylist())
        columns.append([True] * rows.num_rows)
        server_at = names.index("server_id")
        assert self._record_type is not None
        record, encode, send = self._record_type, self._encoder.encode, self._producer.send
        keys, topic, pending = self._keys, self._topic, self._pending
        for values in zip(*columns, strict=True):
            server_id = values[server_at]
            key, partition = keys.get(server_id) or self._key(server_id)
            pending.append(send(topic, key=key, value=encode(record(*values)), partition=partition))

    def flush(self, timeout_s: float) -> None:
        """Block until every queued record is acknowledged (raises if one failed)."""
        self._producer.flush(timeout=timeout_s)
        for future in self._pending:
            future.get(timeout=timeout_s)
        self._pending.clear()
