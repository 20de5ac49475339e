"""The speed layer's main loop: take validated records from the fetcher, window, emit, commit.

Each commit (every ``speed.checkpoint_interval_s``, early when a catch-up closes many windows,
on SIGTERM and before an idle exit) runs in this order, so that a crash anywhere neither loses
nor double-counts a record in the state:

1. here, on the main thread: the windows closed since the last commit are handed over, and
   every partition's state is snapshotted (encoded) with the offset of the next record it has
   not processed;
2. on the sink thread, while the main thread goes on: the closed windows are aggregated and
   their ``fleet.agg1m.v1`` records sent (in a catch-up, on the main thread before the
   snapshot: one thread of Python work is faster than two sharing the GIL); the rows are
   written into Delta ``speed_1m`` (idempotently: see :class:`speed_layer.sinks.SpeedTable`)
   and changed late counts upserted into ``speed_late_1m``; the agg1m, DLQ and alert records
   are acknowledged; then the snapshots are written as the
   partitions' checkpoints (the commit point);
3. back here: the offsets are committed to Kafka, for lag monitoring only.

Partitions are assigned statically: process ``speed.instance`` of ``speed.instances`` reads the
partitions ``p`` with ``p % instances == instance`` (no consumer-group rebalancing). Polling
and validation run in a child process (:mod:`speed_layer.fetcher`).
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fleetlens.config import Settings
from fleetlens.contract import decode_canonical
from fleetlens.kafka.clients import make_producer, wait_acknowledged
from fleetlens.kafka.dlq import DeadLetterWriter
from fleetlens.lake.delta import CommitFailedError
from fleetlens.lake.paths import Lake
from fleetlens.logging import get_logger
from speed_layer.aggregate import aggregate_windows
from speed_layer.alerting import StreamAlerts
from speed_layer.checkpoint import FORMAT, CheckpointStore, PartitionCheckpoint
from speed_layer.fetcher import Fetcher, FetchSpec, PartitionRecords
from speed_layer.memory import release_freed_memory
from speed_layer.sinks import Agg1mTopic, LateTable, SpeedTable
from speed_layer.windows import OpenWindow, PartitionWindows

__all__ = ["SpeedLayer", "SpeedStats"]

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
    #: Seconds spent waiting for the fetcher's next records, idle waits included.
    fetch_wait_s: float = 0.0
    #: Records sent to ``fleet.alerts.v1``, by change (firing, resolved, ...), and by rule.
    alerts: dict[str, int] = field(default_factory=dict)
    alerts_by_rule: dict[str, dict[str, int]] = field(default_factory=dict)


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
            "fleetlens_speed_open_windows", "Open (server, window) pairs", registry=registry
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
        self._store = CheckpointStore(self._lake, group=self._cfg.group_id)
        self._metrics = _Metrics(registry or CollectorRegistry())
        self._timeout_s = settings.kafka.producer.delivery_timeout_ms / 1000
        self.stats = SpeedStats()
        #: Set it (on SIGHUP) to have the alert rules file read again.
        self.reload_alerts = threading.Event()

    def _windows(self, state: dict[str, Any] | None = None) -> PartitionWindows:
        c = self._cfg
        size_ms, lateness_ms = c.window_s * 1000, c.allowed_lateness_s * 1000
        dedup_ttl_ms, late_memory_ms = c.effective_dedup_ttl_s * 1000, int(c.retention_h * 3.6e6)
        if state is None:
            return PartitionWindows(
                size_ms=size_ms,
                lateness_ms=lateness_ms,
                dedup_ttl_ms=dedup_ttl_ms,
                late_memory_ms=late_memory_ms,
            )
        return PartitionWindows.from_state(
            state,
            size_ms=size_ms,
            lateness_ms=lateness_ms,
            dedup_ttl_ms=dedup_ttl_ms,
            late_memory_ms=late_memory_ms,
        )

    def _restore(
        self, partitions: list[int], beginnings: dict[int, int], cluster_id: str | None
    ) -> tuple[
        dict[int, PartitionWindows],
        dict[int, int],
        dict[int, dict[str, Any]],
        dict[int, dict[str, Any]],
    ]:
        """Each partition's state, the offset to read from (its checkpoint's, or the
        beginning of the log), its alert state, and the alert state of checkpoints dropped
        because they belong to another Kafka cluster."""
        states: dict[int, PartitionWindows] = {}
        offsets: dict[int, int] = {}
        alerts: dict[int, dict[str, Any]] = {}
        dropped: dict[int, dict[str, Any]] = {}
        for partition in partitions:
            checkpoint = self._store.load(self._topic, partition, cluster_id=cluster_id)
            if checkpoint is not None and checkpoint.cluster_id == cluster_id:
                states[partition] = self._windows(checkpoint.state)
                offsets[partition] = max(checkpoint.offset, beginnings[partition])
                if checkpoint.alerts is not None:
                    alerts[partition] = checkpoint.alerts
                continue
            if checkpoint is not None:
                # The embedded broker starts empty with a new cluster id: old offsets and
                # windows belong to another log.
                log.warning(
                    "speed.cluster_changed",
                    partition=partition,
                    checkpoint_cluster=checkpoint.cluster_id,
                    cluster=cluster_id,
                )
                self._store.forget(self._topic, partition)
                if checkpoint.alerts is not None:
                    dropped[partition] = checkpoint.alerts
            states[partition] = self._windows()
            offsets[partition] = beginnings[partition]
        return states, offsets, alerts, dropped

    def run(
        self, *, stop: threading.Event | None = None, exit_when_idle_s: float | None = None
    ) -> SpeedStats:
        """Consume until ``stop`` is set or, with ``exit_when_idle_s``, until no record has come
        for that long; the final commit happens before returning."""
        stop = stop or threading.Event()
        kafka = self._settings.kafka
        fetcher = Fetcher(
            FetchSpec(
                kafka=kafka,
                contract=self._settings.contract,
                topic=self._topic,
                group_id=self._cfg.group_id,
                instance=self._cfg.instance,
                instances=self._cfg.instances,
                poll_timeout_ms=self._cfg.poll_timeout_ms,
            )
        )
        producer = None
        try:
            cluster_id, partitions, beginnings = fetcher.hello()
            producer = make_producer(kafka)
            dlq = DeadLetterWriter(producer, topic=kafka.topics.dlq.name, stage="speed")
            agg1m = Agg1mTopic(producer, kafka.topics.agg1m.name)
            tables = (SpeedTable(self._lake), LateTable(self._lake))
            states, offsets, alert_states, dropped = self._restore(
                partitions, beginnings, cluster_id
            )
            alerts = None
            if self._settings.alerts.enabled:
                alerts = StreamAlerts(
                    self._settings.alerts,
                    producer,
                    kafka.topics.alerts.name,
                    lake=self._lake,
                    reload=self.reload_alerts,
                )
                alerts.restore(alert_states.items())
                alerts.end_dropped(dropped.values())
            fetcher.seek(offsets)
            log.info("speed.started", topic=self._topic, partitions=partitions, offsets=offsets)
            sinks = _Sinks(producer, dlq, agg1m, alerts, *tables)
            _Loop(self, fetcher, sinks, states, offsets, cluster_id).run(stop, exit_when_idle_s)
            if alerts is not None:
                self.stats.alerts = dict(alerts.sent)
                self.stats.alerts_by_rule = alerts.sent_by_rule
        finally:
            fetcher.close()
            if producer is not None:
                producer.close(timeout=self._timeout_s)
        log.info("speed.stopped", **vars(self.stats))
        return self.stats


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (the collector would walk the whole heap)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Laps:
    """Records into ``steps`` the seconds since the previous lap (or since creation)."""

    def __init__(self, steps: dict[str, float]) -> None:
        self._steps = steps
        self._last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self._steps[name] = now - self._last
        self._last = now


@dataclass
class _SinkJob:
    """What one commit hands to the sink thread."""

    #: The windows closed since the last commit, and when they were handed over (epoch ms),
    #: or their rows, if they were aggregated (and their agg1m records sent) already.
    closed: list[OpenWindow]
    emitted_at_ms: int
    rows: pa.Table | None
    late: list[tuple[str, int, int, int]]
    acks: list[Any]
    #: (partition, offset, encoded checkpoint)
    checkpoints: list[tuple[int, int, bytes]]
    records: int
    started: float
    steps: dict[str, float]
    covers_last_batch: bool
    windows_closed: int = 0
    state_bytes: int = 0


@dataclass
class _Sinks:
    """Where the loop's outputs go."""

    producer: KafkaProducer
    dlq: DeadLetterWriter
    agg1m: Agg1mTopic
    alerts: StreamAlerts | None
    table: SpeedTable
    late_table: LateTable


class _Loop:
    """One run's moving parts; split from :class:`SpeedLayer` to keep each method short."""

    def __init__(
        self,
        layer: SpeedLayer,
        fetcher: Fetcher,
        sinks: _Sinks,
        states: dict[int, PartitionWindows],
        offsets: dict[int, int],
        cluster_id: str | None,
    ) -> None:
        self.layer = layer
        self.cfg = layer._cfg
        self.fetcher = fetcher
        self.producer = sinks.producer
        self.dlq = sinks.dlq
        self.agg1m = sinks.agg1m
        self.alerts = sinks.alerts
        self.table, self.late_table = sinks.table, sinks.late_table
        # Late counts already written, per partition: only changes are upserted.
        self.reported_late: dict[int, dict[int, int]] = {p: {} for p in states}
        self.states = states
        #: The next offset to process, per partition: what the checkpoints record.
        self.positions = dict(offsets)
        self.highwater: dict[int, int] = {}
        self.cluster_id = cluster_id
        self.metrics = layer._metrics
        self.stats = layer.stats
        self.pending: list[OpenWindow] = []
        self.pending_events = 0
        now = time.monotonic()
        self.last_record_at = dict.fromkeys(states, now)
        self.last_commit_at = self.last_checkpoint_at = now
        self.last_housekeeping_at = -float("inf")
        self.first_record_at: float | None = None
        self.last_batch_done_at = 0.0
        self.uncommitted_records = False
        #: The sink thread (Delta upserts release the GIL) and the commit it is writing.
        self.sinks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="speed-sinks")
        self.inflight: tuple[_SinkJob, Future[None]] | None = None

    def run(self, stop: threading.Event, exit_when_idle_s: float | None) -> None:
        try:
            self._run(stop, exit_when_idle_s)
            self.commit(wait=True)
        finally:
            self.sinks.shutdown(wait=True)

    def _run(self, stop: threading.Event, exit_when_idle_s: float | None) -> None:
        last_any = time.monotonic()
        poll_timeout_s = self.cfg.poll_timeout_ms / 1000
        while not stop.is_set():
            waiting = time.monotonic()
            batch = self.fetcher.poll(poll_timeout_s)
            now = time.monotonic()
            self.stats.fetch_wait_s += now - waiting
            if batch:
                last_any = now
                if self.first_record_at is None:
                    self.first_record_at = now
                self.uncommitted_records = True
                self._process(batch, now)
                self.last_batch_done_at = time.monotonic()
            self._advance_idle(now)
            if self.alerts is not None:
                self.alerts.tick(int(time.time() * 1000))
            for state in self.states.values():
                for window in state.close_ready():
                    self.pending.append(window)
                    self.pending_events += len(window.ts)
            # A catch-up closes windows faster than the interval drains them: bound the backlog.
            due = now - self.last_commit_at >= self.cfg.checkpoint_interval_s
            backlog = self.pending_events / self.cfg.max_pending_windows
            # While a commit is being written, the next one waits for it rather than stop a
            # live stream (a minute's windows close over a few polls) until the backlog is 4x
            # its bound; in a catch-up the stream waits at once: the commits' pace bounds its
            # memory, and no one waits for the records behind.
            busy = self.inflight is not None and not self.inflight[1].done()
            limit = 1 if self._behind() > self.cfg.max_pending_windows else 4
            if (due or backlog >= 1) and (not busy or backlog >= limit):
                self.commit()
            self.collect(wait=False)
            self.metrics.checkpoint_age.set(time.monotonic() - self.last_checkpoint_at)
            if exit_when_idle_s is not None and now - last_any >= exit_when_idle_s:
                break

    def _process(self, batch: list[PartitionRecords], now: float) -> None:
        topic = self.layer._topic
        alerts, now_ms = self.alerts, int(time.time() * 1000)
        records = points = dlq = 0
        before = {p: (s.duplicates, s.late_dropped) for p, s in self.states.items()}
        for chunk in batch:
            partition = chunk.partition
            state = self.states[partition]
            self.last_record_at[partition] = now
            if chunk.highwater is not None:
                self.highwater[partition] = chunk.highwater
            records += len(chunk.values)
            rejected = chunk.rejected
            for index, value in enumerate(chunk.values):
                if index in rejected:
                    self.dlq.send(
                        value=value,
                        key=chunk.keys[index],
                        reason=rejected[index],
                        source_topic=topic,
                        partition=partition,
                        offset=chunk.offsets[index],
                    )
                    dlq += 1
                    continue
                assert value is not None  # the fetcher rejects tombstones
                event = decode_canonical(value)
                points += len(event.metrics)
                if state.process(event) and alerts is not None:
                    alerts.observe(event, partition=partition, now_ms=now_ms)
            if chunk.offsets:
                self.positions[partition] = chunk.offsets[-1] + 1
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

    def _behind(self) -> int:
        """Records between the positions and the log ends the fetches last reported."""
        return sum(max(end - self.positions[p], 0) for p, end in self.highwater.items())

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

    def commit(self, *, wait: bool = False) -> None:
        """Start a commit: hand over the closed windows (in a catch-up, aggregate them and
        queue their agg1m records) and snapshot the checkpoints here; the rest follows in
        the sink thread, in order (see the module docstring),
        while this thread goes on with the next records. One commit runs at a time."""
        started = time.perf_counter()
        steps: dict[str, float] = {}
        lap = _Laps(steps)
        closed, self.pending, self.pending_events = self.pending, [], 0
        emitted_at_ms, rows = int(time.time() * 1000), None
        sent: list[Any] = []
        if closed and self._behind() > self.cfg.max_pending_windows:
            # A catch-up: throughput counts, and two threads of Python work share one GIL
            # slower than one does them; live, the stream's latency counts (the sink thread).
            (rows, sent), closed = self._aggregate(closed, emitted_at_ms), []
            lap("aggregate")
        with _gc_paused():  # the snapshot makes many small objects, all kept: no garbage
            alert_states = self.alerts.partition_states(self.states) if self.alerts else {}
            lap("snapshot_alerts")
            # Encoded at once, a partition at a time: the plain data is a copy of the state,
            # and holding it until the sink thread encodes it would hold the state twice.
            store = self.layer._store
            checkpoints = [
                (
                    partition,
                    self.positions[partition],
                    store.encode(
                        PartitionCheckpoint(
                            topic=self.layer._topic,
                            partition=partition,
                            offset=self.positions[partition],
                            cluster_id=self.cluster_id,
                            state=state.to_state(),
                            format=FORMAT,
                            alerts=alert_states.pop(partition, None),
                        )
                    ),
                )
                for partition, state in self.states.items()
            ]
            lap("snapshot")
        job = _SinkJob(
            closed=closed,
            emitted_at_ms=emitted_at_ms,
            rows=rows,
            late=self._late_changes(),
            acks=sent
            + self.dlq.take_pending()
            + (self.alerts.take_pending() if self.alerts else []),
            checkpoints=checkpoints,
            records=self.stats.records,
            started=started,
            steps=steps,
            covers_last_batch=self.uncommitted_records,
        )
        self.uncommitted_records = False
        self.last_commit_at = time.monotonic()
        self.collect(wait=True)  # the previous commit
        self.inflight = (job, self.sinks.submit(self._write, job))
        if wait:
            self.collect(wait=True)

    def _aggregate(
        self, closed: list[OpenWindow], emitted_at_ms: int
    ) -> tuple[pa.Table, list[Any]]:
        """The rows of ``closed`` and the futures of their agg1m records, sent."""
        rows = aggregate_windows(closed, sketch_k=self.cfg.sketch_k, emitted_at_ms=emitted_at_ms)
        return rows, self.agg1m.send(rows)

    def _write(self, job: _SinkJob) -> None:
        """The sink thread's part of a commit."""
        step = _Laps(job.steps)
        acks, rows = list(job.acks), job.rows
        if rows is None and job.closed:
            rows, sent = self._aggregate(job.closed, job.emitted_at_ms)
            acks += sent
            step("aggregate")
        if rows is not None:
            job.windows_closed = rows.num_rows
            self.table.write(rows)
            step("speed_1m")
        self.late_table.upsert(job.late, updated_at_ms=int(time.time() * 1000))
        step("late")
        wait_acknowledged(self.producer, acks, timeout_s=self.layer._timeout_s)
        step("acks")
        store, topic = self.layer._store, self.layer._topic
        job.state_bytes = sum(
            store.write(topic, partition, offset, data)
            for partition, offset, data in job.checkpoints
        )
        step("checkpoint")
        self._maybe_housekeep()
        step("housekeeping")
        release_freed_memory()
        step("trim")

    def collect(self, *, wait: bool) -> None:
        """Finish the commit in flight, if it is done (or once it is, with ``wait``): offsets
        to Kafka, metrics, the log line. Raises what the sink thread raised."""
        if self.inflight is None:
            return
        job, future = self.inflight
        if not wait and not future.done():
            return
        self.inflight = None
        future.result()
        done = time.perf_counter()
        self.fetcher.commit({p: offset for p, offset, _ in job.checkpoints})
        self.stats.windows_closed += job.windows_closed
        self.metrics.closed.inc(job.windows_closed)
        self.update_lag()
        elapsed = done - job.started
        self.last_checkpoint_at = time.monotonic()
        if job.covers_last_batch and self.first_record_at is not None:
            # Processing time up to the last batch, plus this commit (not any idle wait).
            busy = self.last_batch_done_at - self.first_record_at + elapsed
            self.stats.busy_s = round(max(busy, self.stats.busy_s), 3)
        self.stats.commits += 1
        self.metrics.checkpoint_seconds.observe(elapsed)
        self.metrics.state_bytes.set(job.state_bytes)
        self.metrics.open.set(sum(s.open_windows for s in self.states.values()))
        log.info(
            "speed.committed",
            seconds=round(elapsed, 3),
            steps={name: round(seconds, 3) for name, seconds in job.steps.items()},
            state_bytes=job.state_bytes,
            records=job.records,
            windows_closed=self.stats.windows_closed,
            late_dropped=self.stats.late_dropped,
            duplicates=self.stats.duplicates,
        )

    def _late_changes(self) -> list[tuple[str, int, int, int]]:
        """The late counts that changed since the last commit."""
        changed = []
        for partition, state in self.states.items():
            reported = self.reported_late[partition]
            for start, count in state.late_by_window.items():
                if reported.get(start) != count:
                    changed.append((self.layer._topic, partition, start, count))
            self.reported_late[partition] = dict(state.late_by_window)
        return changed

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
        """Refresh the lag gauge from the log end offsets the fetches reported."""
        for partition, highwater in self.highwater.items():
            lag = max(highwater - self.positions[partition], 0)
            self.metrics.lag.labels(partition=str(partition)).set(lag)
