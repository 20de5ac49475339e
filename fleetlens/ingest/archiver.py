"""Raw archive: ``fleet.metrics.v1`` → Parquet in the landing zone, exactly once per offset.

A flush is committed in this order, so that a crash at any point neither loses nor repeats a
``(kafka_partition, kafka_offset)``:

1. the buffered rows are written, one file per event hour, to a staging folder that readers
   never look at, and fsynced; rejected records are acknowledged by the DLQ topic;
2. the checkpoint (next offset per partition + the staged files and where they go) replaces
   the previous one atomically (a rename on a local disk, one whole-object PUT on S3): this
   is the commit point;
3. the staged files are moved into ``landing/metrics/date=…/hour=…/`` (renamed on a local
   disk, copied then deleted on S3: repeatable, see ``_recover``);
4. the offsets are committed to Kafka too, for lag monitoring only.

On start the archiver finishes the moves of the last checkpoint, deletes staging folders that
never reached step 2, and seeks to the checkpoint's offsets. The checkpoint, not Kafka's
committed offsets, is the truth, because it is written together with the files.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field

import msgspec
import pyarrow as pa
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from ulid import ULID

from fleetlens.config import Settings
from fleetlens.contract import ContractViolation, Validator
from fleetlens.kafka.clients import all_partitions, make_admin, make_consumer, make_producer
from fleetlens.kafka.dlq import DeadLetterWriter
from fleetlens.lake.landing import LANDING_SCHEMA, split_by_hour, write_landing_file
from fleetlens.lake.paths import Lake
from fleetlens.logging import get_logger

__all__ = ["ArchiveCheckpoint", "Archiver", "ArchiverStats"]

log = get_logger("archiver")


class ArchiveCheckpoint(msgspec.Struct):
    """The archiver's commit record: where to resume, and which files belong to the last flush."""

    topic: str
    cluster_id: str | None
    flush_id: str
    offsets: dict[int, int]
    # (staging path, final path) pairs, relative to the lake root.
    staged: list[tuple[str, str]] = []


@dataclass
class ArchiverStats:
    """Counters of one archiver run."""

    records: int = 0
    rows: int = 0
    dlq: int = 0
    flushes: int = 0
    files: int = 0


@dataclass
class _Buffer:
    event_id: list[str] = field(default_factory=list)
    server_id: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    metrics: list[list[tuple[str, float]]] = field(default_factory=list)
    tags: list[list[tuple[str, str]]] = field(default_factory=list)
    kafka_partition: list[int] = field(default_factory=list)
    kafka_offset: list[int] = field(default_factory=list)
    ingest_ts: list[int] = field(default_factory=list)
    records: int = 0
    first_at: float | None = None

    def to_table(self) -> pa.Table:
        return pa.Table.from_pydict(
            {
                "event_id": self.event_id,
                "server_id": self.server_id,
                "ts": self.ts,
                "metrics": self.metrics,
                "tags": self.tags,
                "kafka_partition": self.kafka_partition,
                "kafka_offset": self.kafka_offset,
                "ingest_ts": self.ingest_ts,
            },
            schema=LANDING_SCHEMA,
        )


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.records = Counter("fleetlens_archiver_records", "Records consumed", registry=registry)
        self.rows = Counter(
            "fleetlens_archiver_rows", "Rows written to the landing zone", registry=registry
        )
        self.dlq = Counter(
            "fleetlens_archiver_dlq", "Records sent to the dead-letter topic", registry=registry
        )
        self.flush_seconds = Histogram(
            "fleetlens_archiver_flush_seconds", "Duration of a flush", registry=registry
        )
        self.lag = Gauge(
            "fleetlens_archiver_lag",
            "Records behind the log end",
            ["partition"],
            registry=registry,
        )


class Archiver:
    """Consumes the metrics topic and archives it to the landing zone.

    Args:
        settings: FleetLens settings.
        registry: Prometheus registry for the archiver's metrics (none: not exported).
    """

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self._settings = settings
        self._cfg = settings.archive
        self._topic = settings.kafka.topics.metrics.name
        self._lake = Lake(settings.lake)
        self._validator = Validator(settings.contract)
        self._checkpoint_path = self._lake.path("_state", "archiver", f"{self._cfg.group_id}.json")
        self._staging_root = self._lake.path("_staging", "archiver", self._cfg.group_id)
        self._metrics = _Metrics(registry or CollectorRegistry())
        self._timeout_s = settings.kafka.producer.delivery_timeout_ms / 1000
        self.stats = ArchiverStats()

    # -- checkpoint -----------------------------------------------------------------------

    def load_checkpoint(self) -> ArchiveCheckpoint | None:
        """The last committed checkpoint, if any."""
        data = self._lake.read_bytes(self._checkpoint_path)
        return msgspec.json.decode(data, type=ArchiveCheckpoint) if data else None

    def _recover(self, checkpoint: ArchiveCheckpoint | None) -> None:
        fs = self._lake.fs
        if checkpoint is not None:
            for staged, final in checkpoint.staged:
                src, dst = self._lake.path(staged), self._lake.path(final)
                if fs.get_file_info(src).type.name == "File":
                    if self._lake.is_local:
                        fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
                    # On an object store (no folders to create: pyarrow would leave empty
                    # marker objects) a move is a server-side copy, then a delete of the
                    # source. The copy appears whole, like any object (see put_object);
                    # a crash between the two leaves the source, so the next start copies
                    # the same bytes again: the move is repeated, never half done.
                    fs.move(src, dst)
        # Whatever is still staged belongs to flushes that never committed.
        if self._lake.is_local:
            shutil.rmtree(self._staging_root, ignore_errors=True)
        elif fs.get_file_info(self._staging_root).type.name == "Directory":
            fs.delete_dir(self._staging_root)

    # -- run ------------------------------------------------------------------------------

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        exit_when_idle_s: float | None = None,
    ) -> ArchiverStats:
        """Archive until ``stop`` is set or, with ``exit_when_idle_s``, until no record has come
        for that long; buffered rows are flushed and committed before returning."""
        stop = stop or threading.Event()
        consumer = make_consumer(self._settings.kafka, group_id=self._cfg.group_id)
        producer = make_producer(self._settings.kafka)
        dlq = DeadLetterWriter(
            producer, topic=self._settings.kafka.topics.dlq.name, stage="archive"
        )
        try:
            cluster_id = self._cluster_id()
            checkpoint = self.load_checkpoint()
            self._recover(checkpoint)
            partitions = all_partitions(consumer, self._topic)
            consumer.assign(partitions)
            offsets = self._starting_offsets(consumer, partitions, checkpoint, cluster_id)
            log.info("archiver.started", topic=self._topic, offsets=offsets, lake=self._lake.root)
            self._loop(consumer, dlq, offsets, cluster_id, stop, exit_when_idle_s)
        finally:
            consumer.close(autocommit=False)
            producer.close(timeout=self._timeout_s)
        log.info("archiver.stopped", **vars(self.stats))
        return self.stats

    def _cluster_id(self) -> str | None:
        admin = make_admin(self._settings.kafka)
        try:
            cluster_id: str | None = admin.describe_cluster().get("cluster_id")
            return cluster_id
        finally:
            admin.close()

    def _starting_offsets(
        self,
        consumer: KafkaConsumer,
        partitions: list[TopicPartition],
        checkpoint: ArchiveCheckpoint | None,
        cluster_id: str | None,
    ) -> dict[int, int]:
        saved: dict[int, int] = {}
        if checkpoint is not None:
            if checkpoint.cluster_id == cluster_id and checkpoint.topic == self._topic:
                saved = checkpoint.offsets
            else:
                # Offsets from another cluster (the embedded broker keeps nothing across
                # restarts) would point into a different log: start that log from its beginning.
                log.warning(
                    "archiver.cluster_changed",
                    checkpoint_cluster=checkpoint.cluster_id,
                    cluster=cluster_id,
                )
        beginnings = consumer.beginning_offsets(partitions)
        offsets: dict[int, int] = {}
        for tp in partitions:
            offsets[tp.partition] = max(saved.get(tp.partition, 0), beginnings[tp])
            consumer.seek(tp, offsets[tp.partition])
        return offsets

    def _loop(
        self,
        consumer: KafkaConsumer,
        dlq: DeadLetterWriter,
        offsets: dict[int, int],
        cluster_id: str | None,
        stop: threading.Event,
        exit_when_idle_s: float | None,
    ) -> None:
        buffer = _Buffer()
        last_record_at = time.monotonic()
        while not stop.is_set():
            batch = consumer.poll(timeout_ms=self._cfg.poll_timeout_ms)
            now = time.monotonic()
            if batch:
                last_record_at = now
                now_ms = int(time.time() * 1000)
                for tp, records in batch.items():
                    for record in records:
                        self._take(record, tp, buffer, dlq, now_ms)
                        offsets[tp.partition] = record.offset + 1
                if buffer.first_at is None:
                    buffer.first_at = now
            due = buffer.first_at is not None and (
                len(buffer.event_id) >= self._cfg.flush_max_rows
                or now - buffer.first_at >= self._cfg.flush_interval_s
            )
            idle = exit_when_idle_s is not None and now - last_record_at >= exit_when_idle_s
            if due or (idle and buffer.records):
                self._flush(buffer, dlq, offsets, cluster_id, consumer)
                buffer = _Buffer()
            if idle:
                return
        if buffer.records:
            self._flush(buffer, dlq, offsets, cluster_id, consumer)

    def _take(
        self,
        record: object,
        tp: TopicPartition,
        buffer: _Buffer,
        dlq: DeadLetterWriter,
        now_ms: int,
    ) -> None:
        value: bytes | None = getattr(record, "value", None)
        offset: int = getattr(record, "offset", -1)
        buffer.records += 1
        self.stats.records += 1
        try:
            if value is None:
                raise ContractViolation("", "record has no value (tombstone)")
            event = self._validator.decode(value, now_ms=now_ms)
        except ContractViolation as violation:
            dlq.send(
                value=value,
                key=getattr(record, "key", None),
                reason=str(violation),
                source_topic=tp.topic,
                partition=tp.partition,
                offset=offset,
            )
            self.stats.dlq += 1
            self._metrics.dlq.inc()
            return
        buffer.event_id.append(event.event_id)
        buffer.server_id.append(event.server_id)
        buffer.ts.append(event.ts)
        buffer.metrics.append(list(event.metrics.items()))
        buffer.tags.append(list(event.tags.items()))
        buffer.kafka_partition.append(tp.partition)
        buffer.kafka_offset.append(offset)
        buffer.ingest_ts.append(getattr(record, "timestamp", now_ms))

    def _flush(
        self,
        buffer: _Buffer,
        dlq: DeadLetterWriter,
        offsets: dict[int, int],
        cluster_id: str | None,
        consumer: KafkaConsumer,
    ) -> None:
        started = time.perf_counter()
        flush_id = f"{int(time.time() * 1000):013d}-{str(ULID())[-8:]}"
        staged: list[tuple[str, str]] = []
        if buffer.event_id:
            for hour, part in split_by_hour(buffer.to_table()).items():
                name = f"part-{flush_id}.parquet"
                staging = f"_staging/archiver/{self._cfg.group_id}/{flush_id}/{hour}/{name}"
                final = f"{Lake.LANDING_METRICS}/{hour}/{name}"
                write_landing_file(self._lake, self._lake.path(staging), part)
                staged.append((staging, final))
        dlq.flush(self._timeout_s)
        checkpoint = ArchiveCheckpoint(
            topic=self._topic,
            cluster_id=cluster_id,
            flush_id=flush_id,
            offsets=dict(offsets),
            staged=staged,
        )
        self._lake.write_bytes_atomically(self._checkpoint_path, msgspec.json.encode(checkpoint))
        self._recover(checkpoint)  # step 3: move the staged files into place
        try:
            consumer.commit(
                {
                    TopicPartition(self._topic, p): OffsetAndMetadata(o, flush_id, -1)
                    for p, o in offsets.items()
                }
            )
            ends = consumer.end_offsets([TopicPartition(self._topic, p) for p in offsets])
            for tp, end in ends.items():
                self._metrics.lag.labels(partition=str(tp.partition)).set(
                    end - offsets[tp.partition]
                )
        except KafkaError as error:  # lag monitoring only; the checkpoint is the truth
            log.warning("archiver.offset_commit_failed", error=repr(error))
        rows = len(buffer.event_id)
        self.stats.rows += rows
        self.stats.flushes += 1
        self.stats.files += len(staged)
        self._metrics.records.inc(buffer.records)
        self._metrics.rows.inc(rows)
        elapsed = time.perf_counter() - started
        self._metrics.flush_seconds.observe(elapsed)
        log.info(
            "archiver.flushed",
            flush_id=flush_id,
            rows=rows,
            records=buffer.records,
            files=len(staged),
            seconds=round(elapsed, 3),
        )
