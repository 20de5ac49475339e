"""The speed layer's consumer loop: poll, validate, window, emit, commit.

Each commit (every ``speed.checkpoint_interval_s``, on SIGTERM and before an idle exit) runs
in this order, so that a crash anywhere neither loses nor double-counts a record in the state:

1. the windows closed since the last commit are upserted into Delta ``speed_1m`` and sent to
   ``fleet.agg1m.v1``, changed late counts into ``speed_late_1m``; the DLQ and agg1m records
   are acknowledged;
2. every partition's window state is checkpointed with its offset (the commit point);
3. the offsets are committed to Kafka, for lag monitoring only.

Partitions are assigned statically: process ``speed.instance`` of ``speed.instances`` reads the
partitions ``p`` with ``p % instances == instance`` (no consumer-group rebalancing).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fleetlens.config import Settings
from fleetlens.contract import ContractViolation, Validator
from fleetlens.kafka.clients import (
    all_partitions,
    make_admin,
    make_consumer,
    make_producer,
)
from fleetlens.kafka.dlq import DeadLetterWriter
from fleetlens.lake.delta import CommitFailedError
from fleetlens.lake.paths import Lake
from fleetlens.logging import get_logger
from speed_layer.checkpoint import CheckpointStore, PartitionCheckpoint
from speed_layer.sinks import Agg1mTopic, LateTable, SpeedTable, windows_to_table
from speed_layer.windows import ClosedWindow, PartitionWindows

__all__ = ["SpeedLayer", "SpeedStats", "assigned_partitions"]

log = get_logger("speed")


@dataclass
class SpeedStats:
    """Counters of one run (``windows_closed`` counts (server, metric, window) aggregates)."""

    records: int = 0
    points: int = 0
    duplicates: int = 0
    late_dropped: int = 0
    dlq: int = 0
    windows_closed: int = 0
    commits: int = 0
    #: Seconds from the first record to the end of the commit that followed the last one.
    busy_s: float = 0.0


def assigned_partitions(partitions: list[int], *, instance: int, instances: int) -> list[int]:
    """The partitions one of ``instances`` processes reads."""
    if instance >= instances:
        raise ValueError(f"speed.instance {instance} must be below speed.instances {instances}")
    return [p for p in partitions if p % instances == instance]


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(f"fleetlens_speed_{name}", doc, registry=registry)

        self.records = counter("records", "Records consumed")
        self.points = counter("points", "Metric values folded into windows")
        self.duplicates = counter("duplicates", "Records dropped as duplicates of an event id")
        self.late = counter("late_dropped", "Records later than the allowed lateness")
        self.dlq = counter("dlq", "Records sent to the dead-letter topic")
        self.closed = counter("windows_closed", "Final windows emitted")
        self.open = Gauge(
            "fleetlens_speed_open_windows", "Open window aggregates", registry=registry
        )
        self.lag = Gauge(
            "fleetlens_speed_lag", "Records behind the log end", ["partition"], registry=registry
        )
        self.checkpoint_age = Gauge(
            "fleetlens_speed_checkpoint_age_seconds",
            "Seconds since the last checkpoint",
            registry=registry,
        )
        self.checkpoint_seconds = Histogram(
            "fleetlens_speed_checkpoint_seconds",
            "Duration of a commit (sinks + checkpoint)",
            registry=registry,
        )
        self.housekeeping_seconds = Histogram(
            "fleetlens_speed_housekeeping_seconds",
            "Duration of retention and table maintenance",
            registry=registry,
        )
        self.state_bytes = Gauge(
            "fleetlens_speed_state_bytes",
            "Size of the last checkpoint of all partitions",
            registry=registry,
        )


class SpeedLayer:
    """Live event-time window aggregates over ``fleet.metrics.v1``.

    Args:
        settings: FleetLens settings (the ``speed``, ``kafka``, ``contract`` and ``lake`` parts).
        registry: Prometheus registry for the layer's metrics (a private one by default).
    """

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self._settings = settings
        self._cfg = settings.speed
        self._topic = settings.kafka.topics.metrics.name
        self._lake = Lake(settings.lake)
        self._validator = Validator(settings.contract)
        self._store = CheckpointStore(self._lake, group=self._cfg.group_id)
        self._metrics = _Metrics(registry or CollectorRegistry())
        self._timeout_s = settings.kafka.producer.delivery_timeout_ms / 1000
        self.stats = SpeedStats()

    def _new_partition(self) -> PartitionWindows:
        c = self._cfg
        return PartitionWindows(
            size_ms=c.window_s * 1000,
            lateness_ms=c.allowed_lateness_s * 1000,
            dedup_ttl_ms=c.effective_dedup_ttl_s * 1000,
            sketch_k=c.sketch_k,
            late_memory_ms=int(c.retention_h * 3_600_000),
        )

    def _restore(
        self, consumer: KafkaConsumer, partitions: list[TopicPartition], cluster_id: str | None
    ) -> dict[int, PartitionWindows]:
        c = self._cfg
        states: dict[int, PartitionWindows] = {}
        beginnings = consumer.beginning_offsets(partitions)
        for tp in partitions:
            checkpoint = self._store.load(tp.topic, tp.partition)
            if checkpoint is not None and checkpoint.cluster_id == cluster_id:
                states[tp.partition] = PartitionWindows.from_state(
                    checkpoint.state,
                    size_ms=c.window_s * 1000,
                    lateness_ms=c.allowed_lateness_s * 1000,
                    dedup_ttl_ms=c.effective_dedup_ttl_s * 1000,
                    sketch_k=c.sketch_k,
                    late_memory_ms=int(c.retention_h * 3_600_000),
                )
                consumer.seek(tp, max(checkpoint.offset, beginnings[tp]))
            else:
                if checkpoint is not None:
                    # The embedded broker starts empty with a new cluster id: old offsets and
                    # windows belong to another log.
                    log.warning(
                        "speed.cluster_changed",
                        partition=tp.partition,
                        checkpoint_cluster=checkpoint.cluster_id,
                        cluster=cluster_id,
                    )
                    self._store.forget(tp.topic, tp.partition)
                states[tp.partition] = self._new_partition()
                consumer.seek(tp, beginnings[tp])
        return states

    def run(
        self, *, stop: threading.Event | None = None, exit_when_idle_s: float | None = None
    ) -> SpeedStats:
        """Consume until ``stop`` is set or, with ``exit_when_idle_s``, until no record has come
        for that long; the final commit happens before returning."""
        stop = stop or threading.Event()
        kafka = self._settings.kafka
        consumer = make_consumer(kafka, group_id=self._cfg.group_id)
        producer = make_producer(kafka)
        dlq = DeadLetterWriter(producer, topic=kafka.topics.dlq.name, stage="speed")
        agg1m = Agg1mTopic(producer, kafka.topics.agg1m.name)
        tables = (SpeedTable(self._lake), LateTable(self._lake))
        try:
            admin = make_admin(kafka)
            try:
                cluster_id: str | None = admin.describe_cluster().get("cluster_id")
            finally:
                admin.close()
            everything = all_partitions(consumer, self._topic)
            mine = assigned_partitions(
                [tp.partition for tp in everything],
                instance=self._cfg.instance,
                instances=self._cfg.instances,
            )
            partitions = [TopicPartition(self._topic, p) for p in mine]
            consumer.assign(partitions)
            states = self._restore(consumer, partitions, cluster_id)
            log.info(
                "speed.started",
                topic=self._topic,
                partitions=mine,
                offsets={tp.partition: consumer.position(tp) for tp in partitions},
            )
            _Loop(self, consumer, dlq, agg1m, tables, states, cluster_id).run(
                stop, exit_when_idle_s
            )
        finally:
            consumer.close(autocommit=False)
            producer.close(timeout=self._timeout_s)
        log.info("speed.stopped", **vars(self.stats))
        return self.stats


class _Loop:
    """One run's moving parts; split from :class:`SpeedLayer` to keep each method short."""

    def __init__(
        self,
        layer: SpeedLayer,
        consumer: KafkaConsumer,
        dlq: DeadLetterWriter,
        agg1m: Agg1mTopic,
        tables: tuple[SpeedTable, LateTable],
        states: dict[int, PartitionWindows],
        cluster_id: str | None,
    ) -> None:
        self.layer = layer
        self.cfg = layer._cfg
        self.consumer = consumer
        self.dlq = dlq
        self.agg1m = agg1m
        self.table, self.late_table = tables
        # Late counts already written, per partition: only changes are upserted.
        self.reported_late: dict[int, dict[int, int]] = {p: {} for p in states}
        self.states = states
        self.cluster_id = cluster_id
        self.metrics = layer._metrics
        self.stats = layer.stats
        self.pending: list[ClosedWindow] = []
        now = time.monotonic()
        self.last_record_at = dict.fromkeys(states, now)
        self.last_commit_at = now
        self.last_housekeeping_at = -float("inf")
        self.first_record_at: float | None = None
        self.last_batch_done_at = 0.0
        self.uncommitted_records = False

    def run(self, stop: threading.Event, exit_when_idle_s: float | None) -> None:
        last_any = time.monotonic()
        while not stop.is_set():
            batch = self.consumer.poll(timeout_ms=self.cfg.poll_timeout_ms)
            now = time.monotonic()
            if batch:
                last_any = now
                if self.first_record_at is None:
                    self.first_record_at = now
                self.uncommitted_records = True
                self._process(batch, now)
                self.last_batch_done_at = time.monotonic()
            self._advance_idle(now)
            for state in self.states.values():
                self.pending.extend(state.close_ready())
            # A catch-up closes windows faster than the interval drains them: bound the backlog.
            due = now - self.last_commit_at >= self.cfg.checkpoint_interval_s
            if due or len(self.pending) >= self.cfg.max_pending_windows:
                self.commit()
            self.metrics.checkpoint_age.set(time.monotonic() - self.last_commit_at)
            if exit_when_idle_s is not None and now - last_any >= exit_when_idle_s:
                break
        self.commit()

    def _process(self, batch: dict[TopicPartition, list[object]], now: float) -> None:
        validator = self.layer._validator
        now_ms = int(time.time() * 1000)
        records = points = dlq = 0
        before = {p: (s.duplicates, s.late_dropped) for p, s in self.states.items()}
        for tp, messages in batch.items():
            state = self.states[tp.partition]
            self.last_record_at[tp.partition] = now
            for message in messages:
                value: bytes | None = getattr(message, "value", None)
                records += 1
                try:
                    if value is None:
                        raise ContractViolation("", "record has no value (tombstone)")
                    event = validator.decode(value, now_ms=now_ms)
                except ContractViolation as violation:
                    self.dlq.send(
                        value=value,
                        key=getattr(message, "key", None),
                        reason=str(violation),
                        source_topic=tp.topic,
                        partition=tp.partition,
                        offset=getattr(message, "offset", -1),
                    )
                    dlq += 1
                    continue
                points += len(event.metrics)
                state.process(event)
        duplicates = sum(s.duplicates - before[p][0] for p, s in self.states.items())
        late = sum(s.late_dropped - before[p][1] for p, s in self.states.items())
        self.stats.records += records
        self.stats.points += points
        self.stats.dlq += dlq
        self.stats.duplicates += duplicates
        self.stats.late_dropped += late
        self.metrics.records.inc(records)
        self.metrics.points.inc(points)
        self.metrics.dlq.inc(dlq)
        self.metrics.duplicates.inc(duplicates)
        self.metrics.late.inc(late)

    def _advance_idle(self, now: float) -> None:
        """Let caught-up, idle partitions follow the slowest active one (never pass it)."""
        idle_after = self.cfg.idle_partition_s
        active = [
            self.states[p].watermark for p, t in self.last_record_at.items() if now - t < idle_after
        ]
        if not active:
            return
        floor = min(active)
        for partition, seen_at in self.last_record_at.items():
            if now - seen_at >= idle_after:
                self.states[partition].advance_to(floor)

    def commit(self) -> None:
        """Sinks, then checkpoints, then Kafka offsets (see the module docstring)."""
        started = time.perf_counter()
        timeout = self.layer._timeout_s
        if self.pending:
            rows = windows_to_table(self.pending, emitted_at_ms=int(time.time() * 1000))
            self.table.upsert(rows)
            self.agg1m.send(rows)
            self.stats.windows_closed += len(self.pending)
            self.metrics.closed.inc(len(self.pending))
            self.pending = []
        self._write_late_counts()
        self.agg1m.flush(timeout)
        self.dlq.flush(timeout)
        size = 0
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for partition, state in self.states.items():
            tp = TopicPartition(self.layer._topic, partition)
            position = self.consumer.position(tp)
            size += self.layer._store.save(
                PartitionCheckpoint(
                    topic=tp.topic,
                    partition=partition,
                    offset=position,
                    cluster_id=self.cluster_id,
                    state=state.to_state(),
                )
            )
            offsets[tp] = OffsetAndMetadata(position, "", -1)
        try:
            self.consumer.commit(offsets)
        except KafkaError as error:  # lag monitoring only; the checkpoint is the truth
            log.warning("speed.offset_commit_failed", error=repr(error))
        self._maybe_housekeep()
        self.update_lag()
        elapsed = time.perf_counter() - started
        self.last_commit_at = time.monotonic()
        if self.uncommitted_records and self.first_record_at is not None:
            # Processing time up to the last batch, plus this commit (not any idle wait).
            busy = self.last_batch_done_at - self.first_record_at + elapsed
            self.stats.busy_s = round(busy, 3)
            self.uncommitted_records = False
        self.stats.commits += 1
        self.metrics.checkpoint_seconds.observe(elapsed)
        self.metrics.state_bytes.set(size)
        self.metrics.open.set(sum(s.open_windows for s in self.states.values()))
        log.info(
            "speed.committed",
            seconds=round(elapsed, 3),
            state_bytes=size,
            records=self.stats.records,
            windows_closed=self.stats.windows_closed,
            late_dropped=self.stats.late_dropped,
            duplicates=self.stats.duplicates,
        )

    def _write_late_counts(self) -> None:
        changed = []
        for partition, state in self.states.items():
            reported = self.reported_late[partition]
            for start, count in state.late_by_window.items():
                if reported.get(start) != count:
                    changed.append((self.layer._topic, partition, start, count))
            self.reported_late[partition] = dict(state.late_by_window)
        self.late_table.upsert(changed, updated_at_ms=int(time.time() * 1000))

    def _maybe_housekeep(self) -> None:
        """Hourly: retention, then compaction, checkpoint, log clean-up and vacuum; by
        instance 0 only, as the tables are shared by all instances."""
        if self.cfg.instance != 0:
            return
        if time.monotonic() - self.last_housekeeping_at < self.cfg.housekeeping_interval_s:
            return
        started = time.perf_counter()
        try:
            for table in (self.table, self.late_table):
                deleted = table.apply_retention(retention_h=self.cfg.retention_h)
                report = table.maintain()
                log.info(
                    "speed.housekeeping",
                    table=type(table).__name__,
                    deleted=deleted,
                    files_added=report.compaction.get("numFilesAdded"),
                    files_removed=report.compaction.get("numFilesRemoved"),
                    log_files_deleted=report.log_files_deleted,
                    vacuumed=len(report.vacuumed_files),
                )
        except CommitFailedError as error:  # a concurrent writer: try again at the next commit
            log.warning("speed.housekeeping_conflict", error=str(error))
            return
        self.last_housekeeping_at = time.monotonic()
        self.metrics.housekeeping_seconds.observe(time.perf_counter() - started)

    def update_lag(self) -> None:
        """Refresh the lag gauge from the high watermarks the fetches reported."""
        for partition in self.states:
            tp = TopicPartition(self.layer._topic, partition)
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                lag = max(highwater - self.consumer.position(tp), 0)
                self.metrics.lag.labels(partition=str(partition)).set(lag)
