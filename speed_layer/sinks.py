"""Where closed windows go: the Delta table ``speed_1m`` and the Kafka topic ``fleet.agg1m.v1``.

Both are idempotent on ``(server_id, metric, window_start)``: the table holds one row per key
(see :class:`SpeedTable`), and a consumer of the topic keeps the latest window it read per
``(server_id, window_start)``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import (
    LATE_KEY,
    SPEED_1M,
    SPEED_1M_SCHEMA,
    SPEED_LATE_1M,
    SPEED_LATE_SCHEMA,
    WINDOW_KEY,
)

__all__ = [
    "AGG1M_SERVERS_PER_RECORD",
    "LATE_TABLE",
    "SPEED_TABLE",
    "Agg1mRecord",
    "Agg1mTopic",
    "Agg1mWindow",
    "LateTable",
    "MetricWindow",
    "SpeedTable",
]

SPEED_TABLE = SPEED_1M
LATE_TABLE = SPEED_LATE_1M


class SpeedTable:
    """The ``speed_1m`` Delta table: closed windows, written idempotently, and retention.

    A window is final when it closes, so the only rows that can be written twice are those a
    restarted layer closes again while it replays the records after its checkpoint; all of
    them start at or before the table's latest window when the layer started. Batches that
    reach back that far are merged on the window's key; the others, which are every batch
    once the replay has passed that window, are appended: a blind append costs a third of a
    MERGE's CPU, keeps DataFusion's working memory out of the process and never conflicts
    with another instance's writes or the compaction.
    """

    def __init__(self, lake: Lake) -> None:
        self._lake = lake
        table = delta.ensure_table(
            lake,
            SPEED_TABLE,
            schema=SPEED_1M_SCHEMA,
            description="Speed layer: closed 1-minute windows (same columns as rollup_1m).",
        )
        #: Windows starting at or before this may be in the table already (None: none are).
        self.written_through: datetime | None = delta.column_max(table, "window_start")

    def write(self, rows: pa.Table) -> None:
        """Write closed windows; writing a window again replaces it."""
        if not rows.num_rows:
            return
        earliest = pc.min(rows["window_start"]).as_py()
        if self.written_through is not None and earliest <= self.written_through:
            delta.upsert(self._lake, SPEED_TABLE, rows, key=WINDOW_KEY, prune_column="window_start")
        else:
            delta.append(self._lake, SPEED_TABLE, rows)

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


#: Server windows per ``fleet.agg1m.v1`` record: ~2 KB each with 6 metrics (8 KB at the
#: contract's longest ids and tags), so a record stays under Kafka's default 1 MB limit.
AGG1M_SERVERS_PER_RECORD = 100


class MetricWindow(msgspec.Struct):
    """One metric's aggregate inside an :class:`Agg1mWindow` (timestamps in epoch ms)."""

    metric: str
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


class Agg1mWindow(msgspec.Struct):
    """One server's closed window: its tags and every metric's aggregate."""

    server_id: str
    tenant: str | None
    region: str | None
    env: str | None
    service: str | None
    cluster: str | None
    metrics: list[MetricWindow]


class Agg1mRecord(msgspec.Struct):
    """A record of ``fleet.agg1m.v1``: closed windows of one minute, of up to
    :data:`AGG1M_SERVERS_PER_RECORD` servers that share an agg1m partition.

    A server's windows always go to the partition its ``server_id`` hashes to (murmur2, as
    Kafka's default partitioner would for that key), so they stay in order. ``(server_id,
    window_start)`` identifies a window: a consumer keeps the latest it read (a restarted speed
    layer may send a window again). Records carry no key: many servers share one.
    """

    window_start: int
    emitted_at: int
    final: bool
    windows: list[Agg1mWindow]


_METRIC_FIELDS = tuple(MetricWindow.__struct_fields__)
_WINDOW_FIELDS = tuple(f for f in Agg1mWindow.__struct_fields__ if f != "metrics")


class Agg1mTopic:
    """Final windows as JSON records on ``fleet.agg1m.v1`` (see :class:`Agg1mRecord`).

    The JSON of each server's window is encoded column-wise by polars; a record is the
    concatenation of up to :data:`AGG1M_SERVERS_PER_RECORD` of them, so a catch-up commit of
    80,000 server windows makes 800 sends instead of 80,000 (kafka-python spends ~30 µs of
    CPU on each).
    """

    def __init__(
        self,
        producer: KafkaProducer,
        topic: str,
        *,
        servers_per_record: int = AGG1M_SERVERS_PER_RECORD,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._servers_per_record = servers_per_record
        #: server_id -> partition, computed once per server.
        self._partition_of: dict[str, int] = {}
        self._partitions: list[int] = []

    def _partition(self, server_id: str) -> int:
        found = self._partition_of.get(server_id)
        if found is None:
            partitions = self._partitions
            hashed = murmur2(server_id.encode()) & 0x7FFFFFFF
            found = self._partition_of[server_id] = partitions[hashed % len(partitions)]
        return found

    def send(self, rows: pa.Table) -> list[Any]:
        """Queue the windows of ``rows`` (``speed_1m`` rows); returns the futures of the
        records queued (for :func:`~fleetlens.kafka.clients.wait_acknowledged`). Whoever
        sends waits for its own: a commit on the sink thread and one on the main thread
        never take each other's."""
        if not rows.num_rows:
            return []
        partitions = sorted(self._producer.partitions_for(self._topic))
        if partitions != self._partitions:
            self._partitions, self._partition_of = partitions, {}
        frame = pl.from_arrow(rows)
        assert isinstance(frame, pl.DataFrame)
        servers = frame["server_id"].unique()
        placement = pl.DataFrame(
            {"server_id": servers, "partition": [self._partition(s) for s in servers]}
        )
        epoch_ms = {c: pl.col(c).dt.epoch("ms") for c in ("window_start", "last_ts", "emitted_at")}
        per_server = (
            frame.with_columns(**epoch_ms, sketch=pl.col("sketch").bin.encode("base64"))
            .join(placement, on="server_id")
            .group_by("partition", "window_start", "server_id", maintain_order=True)
            .agg(
                *(pl.col(c).first() for c in (*_WINDOW_FIELDS[1:], "emitted_at")),
                metrics=pl.struct(*_METRIC_FIELDS),
            )
            .sort("partition", "window_start", "server_id")
            .select(
                "partition",
                "window_start",
                "emitted_at",
                json=pl.struct(*_WINDOW_FIELDS, "metrics").struct.json_encode(),
            )
        )
        sent: list[Any] = []
        size = self._servers_per_record
        for (partition, start), group in per_server.group_by(
            "partition", "window_start", maintain_order=True
        ):
            windows = group["json"].to_list()
            emitted = group["emitted_at"][0]
            for first in range(0, len(windows), size):
                body = ",".join(windows[first : first + size])
                value = (
                    f'{{"window_start":{start},"emitted_at":{emitted},"final":true,'
                    f'"windows":[{body}]}}'
                ).encode()
                sent.append(self._producer.send(self._topic, value=value, partition=partition))
        return sent
