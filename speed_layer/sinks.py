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
    "Agg1mRecord",
    "Agg1mTopic",
    "LateTable",
    "MetricWindow",
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


class MetricWindow(msgspec.Struct):
    """One metric's aggregate inside an :class:`Agg1mRecord` (timestamps in epoch ms)."""

    count: int
    sum: float
    min: float
    max: float
    last: float
    last_ts: int
    sketch: str  # base64 of the KLL sketch (DataSketches format)
    p50: float | None
    p95: float | None
    p99: float | None


class Agg1mRecord(msgspec.Struct):
    """A record of ``fleet.agg1m.v1``: one server's closed window, all its metrics.

    Keyed by ``server_id``; ``(server_id, window_start)`` identifies it, so a consumer keeps
    the latest record per pair (a restarted speed layer may send a window again).
    """

    server_id: str
    window_start: int
    tenant: str | None
    region: str | None
    env: str | None
    service: str | None
    cluster: str | None
    emitted_at: int
    final: bool
    metrics: dict[str, MetricWindow]


_METRIC_FIELDS = tuple(MetricWindow.__struct_fields__)


class Agg1mTopic:
    """Final windows as JSON records on ``fleet.agg1m.v1``, one per server and window."""

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._encoder = msgspec.json.Encoder()
        self._pending: list[Any] = []
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
        """Queue one :class:`Agg1mRecord` per server and window of ``rows`` (``speed_1m``
        rows); :meth:`flush` makes them durable."""
        if not rows.num_rows:
            return
        partitions = sorted(self._producer.partitions_for(self._topic))
        if partitions != self._partitions:
            self._partitions, self._keys = partitions, {}
        rows = rows.sort_by([("server_id", "ascending"), ("window_start", "ascending")])
        record = None
        for offset in range(0, rows.num_rows, _SEND_CHUNK_ROWS):
            # A server's window may straddle two chunks: its record is carried over.
            record = self._send_rows(rows.slice(offset, _SEND_CHUNK_ROWS), record)
        if record is not None:
            self._send(record)

    def _send(self, record: Agg1mRecord) -> None:
        key, partition = self._keys.get(record.server_id) or self._key(record.server_id)
        self._pending.append(
            self._producer.send(
                self._topic, key=key, value=self._encoder.encode(record), partition=partition
            )
        )

    def _send_rows(self, rows: pa.Table, record: Agg1mRecord | None) -> Agg1mRecord | None:
        """Send the complete records of ``rows``; return the last, perhaps incomplete, one."""
        columns: dict[str, list[Any]] = {}
        for name, column in zip(rows.schema.names, rows.columns, strict=True):
            if pa.types.is_timestamp(column.type):
                columns[name] = (column.cast(pa.int64()).to_numpy() // 1000).tolist()
            elif name == "sketch":
                columns[name] = [base64.b64encode(b).decode() for b in column.to_pylist()]
            else:
                columns[name] = column.to_pylist()
        servers, starts, names = columns["server_id"], columns["window_start"], columns["metric"]
        per_metric = zip(*(columns[f] for f in _METRIC_FIELDS), strict=True)
        tenant, region, env = columns["tenant"], columns["region"], columns["env"]
        service, cluster, emitted = columns["service"], columns["cluster"], columns["emitted_at"]
        for i, values in enumerate(per_metric):
            if record is None or servers[i] != record.server_id or starts[i] != record.window_start:
                if record is not None:
                    self._send(record)
                record = Agg1mRecord(
                    server_id=servers[i],
                    window_start=starts[i],
                    tenant=tenant[i],
                    region=region[i],
                    env=env[i],
                    service=service[i],
                    cluster=cluster[i],
                    emitted_at=emitted[i],
                    final=True,
                    metrics={},
                )
            record.metrics[names[i]] = MetricWindow(*values)
        return record

    def flush(self, timeout_s: float) -> None:
        """Block until every queued record is acknowledged (raises if one failed)."""
        self._producer.flush(timeout=timeout_s)
        for future in self._pending:
            future.get(timeout=timeout_s)
        self._pending.clear()
