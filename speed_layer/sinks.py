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
import pyarrow as pa
from kafka import KafkaProducer

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
    quantiles = [w.aggregate.quantiles() for w in windows]
    columns: dict[str, Any] = {
        "window_start": [w.window_start * 1000 for w in windows],
        "server_id": [w.server_id for w in windows],
        "metric": [w.metric for w in windows],
        **{tag: [w.tags.get(tag) for w in windows] for tag in TAG_COLUMNS},
        "count": [w.aggregate.count for w in windows],
        "sum": [w.aggregate.sum for w in windows],
        "min": [w.aggregate.min for w in windows],
        "max": [w.aggregate.max for w in windows],
        "last": [w.aggregate.last for w in windows],
        "last_ts": [w.aggregate.last_ts * 1000 for w in windows],
        "sketch": [w.aggregate.sketch.serialize() for w in windows],
        "p50": [q[0] for q in quantiles],
        "p95": [q[1] for q in quantiles],
        "p99": [q[2] for q in quantiles],
        "emitted_at": [emitted_at_ms * 1000] * len(windows),
    }
    return pa.Table.from_pydict(columns, schema=SPEED_1M_SCHEMA)


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


class Agg1mTopic:
    """Final windows as JSON records on ``fleet.agg1m.v1``, keyed by server."""

    def __init__(self, producer: KafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._encoder = msgspec.json.Encoder()
        self._pending: list[Any] = []

    def send(self, rows: pa.Table) -> None:
        """Queue one record per row; :meth:`flush` makes them durable."""
        for row in rows.to_pylist():
            row["window_start"] = int(row["window_start"].timestamp() * 1000)
            row["last_ts"] = int(row["last_ts"].timestamp() * 1000)
            row["emitted_at"] = int(row["emitted_at"].timestamp() * 1000)
            row["sketch"] = base64.b64encode(row["sketch"]).decode()
            row["final"] = True
            self._pending.append(
                self._producer.send(
                    self._topic, key=row["server_id"].encode(), value=self._encoder.encode(row)
                )
            )

    def flush(self, timeout_s: float) -> None:
        """Block until every queued record is acknowledged (raises if one failed)."""
        self._producer.flush(timeout=timeout_s)
        for future in self._pending:
            future.get(timeout=timeout_s)
        self._pending.clear()
