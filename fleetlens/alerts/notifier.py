"""The notifier: delivers the notifications on ``fleet.alerts.v1`` to their channels.

Off the consuming path of the speed layer, which only writes the records: a slow or failing
receiver delays this process, never the stream. Each channel has a worker of its own, so a
slow webhook does not hold back the mail, and the next records are delivered while earlier
ones are still being retried. The ``alerts`` table is written by a recorder thread, not on
the way to the receivers. A failing delivery is retried with exponential
backoff for ``alerts.retry_for_s``, then reported (log ``alert.delivery_failed``, the
counter, the run's summary), never dropped silently.

Exactly once per channel as far as this process can: what was delivered is remembered by
idempotency key (a state file in the lake, written before the offsets of the records it
covers are committed, in log order), so
records the speed layer sent again after a restart are not delivered twice; webhooks also get
the key as an ``Idempotency-Key`` header for receivers that deduplicate.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import msgspec
from kafka import KafkaConsumer
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import CollectorRegistry, Counter
from tenacity import Retrying, stop_after_delay, wait_exponential

from fleetlens.alerts.channels import Delivery, make_delivery
from fleetlens.alerts.engine import AlertEvent
from fleetlens.alerts.history import AlertHistory
from fleetlens.alerts.rules import load_rules
from fleetlens.config import Settings
from fleetlens.kafka.clients import all_partitions, make_consumer
from fleetlens.lake.paths import Lake
from fleetlens.logging import get_logger

__all__ = ["Notifier", "NotifierStats"]

log = get_logger("alerts.notifier")

#: Delivered keys are remembered this long (a replay older than that is not expected).
_REMEMBER_MS = 7 * 86_400_000


@dataclass
class NotifierStats:
    """Counters of one run."""

    records: int = 0
    delivered: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    #: Notifications delivered, per rule (all channels).
    delivered_by_rule: dict[str, int] = field(default_factory=dict)


@dataclass
class _Pending:
    """A record of ``fleet.alerts.v1`` and its deliveries ``(key, channel, future)``."""

    tp: TopicPartition
    offset: int
    event: AlertEvent
    jobs: list[tuple[str, str, Future[None] | None]]


class Notifier:
    """Consumes ``fleet.alerts.v1`` and delivers each record to its channels.

    Args:
        settings: FleetLens settings (``alerts``, ``kafka``, ``lake``).
        registry: Prometheus registry for the notifier's metrics.
    """

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self._settings = settings
        self._cfg = settings.alerts
        self._topic = settings.kafka.topics.alerts.name
        self._lake = Lake(settings.lake)
        self._state_path = self._lake.path(
            "_state", "notifier", self._cfg.notifier_group_id, "delivered.msgpack"
        )
        rules = load_rules(self._cfg.rules_file)
        self._deliveries: dict[str, Delivery] = {
            name: make_delivery(channel, smtp=self._cfg.smtp)
            for name, channel in rules.channels.items()
        }
        self._workers = {
            name: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"notify-{name}")
            for name in self._deliveries
        }
        registry = registry or CollectorRegistry()
        self._delivered_total = Counter(
            "fleetlens_alert_notifications",
            "Notifications delivered",
            ["channel"],
            registry=registry,
        )
        self._failed_total = Counter(
            "fleetlens_alert_notifications_failed",
            "Notifications given up after retries",
            ["channel"],
            registry=registry,
        )
        self._history = AlertHistory(self._lake)
        #: Records in log order whose deliveries may be running; settled, waiting for the
        #: recorder; the recorder's write in flight and the offsets it covers.
        self._inflight: deque[_Pending] = deque()
        self._settled: list[_Pending] = []
        self._recording: tuple[Future[None], dict[TopicPartition, OffsetAndMetadata]] | None = None
        self._recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify-record")
        #: Keys being delivered, and keys given up since the last write.
        self._queued: set[str] = set()
        self._given_up: set[str] = set()
        self.stats = NotifierStats()
        self._delivered: dict[str, int] = self._load_state()

    def _load_state(self) -> dict[str, int]:
        data = self._lake.read_bytes(self._state_path)
        return {} if data is None else dict(msgspec.msgpack.decode(data))

    def _save_state(self, delivered: dict[str, int]) -> None:
        self._lake.write_bytes_atomically(self._state_path, msgspec.msgpack.encode(delivered))

    def run(
        self, *, stop: threading.Event | None = None, exit_when_idle_s: float | None = None
    ) -> NotifierStats:
        """Deliver until ``stop`` is set or, with ``exit_when_idle_s``, until no record came
        for that long (and every delivery has settled)."""
        stop = stop or threading.Event()
        consumer = make_consumer(self._settings.kafka, group_id=self._cfg.notifier_group_id)
        decoder = msgspec.json.Decoder(AlertEvent)
        try:
            partitions = all_partitions(consumer, self._topic)
            consumer.assign(partitions)
            for tp in partitions:
                committed = consumer.committed(tp)
                if committed is None:
                    consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)
            last_any = time.monotonic()
            while not stop.is_set():
                batch = consumer.poll(timeout_ms=100)
                now = time.monotonic()
                for tp, records in batch.items():
                    for record in records:
                        event = decoder.decode(record.value)
                        jobs = self._submit(event)
                        self._inflight.append(_Pending(tp, record.offset, event, jobs))
                if batch:
                    last_any = now
                self._settle(consumer)
                idle = not self._inflight and self._recording is None
                if exit_when_idle_s is not None and idle and now - last_any >= exit_when_idle_s:
                    break
            self._settle(consumer, wait=True)
        finally:
            consumer.close(autocommit=False)
            for worker in self._workers.values():
                worker.shutdown(wait=True)
            self._recorder.shutdown(wait=True)
        log.info("alerts.notifier_stopped", **vars(self.stats))
        return self.stats

    def _submit(self, event: AlertEvent) -> list[tuple[str, str, Future[None] | None]]:
        """Start delivering ``event`` to its channels, each in its channel's worker; returns
        ``(key, channel, future)`` (no future: a duplicate or an unknown channel, settled)."""
        self.stats.records += 1
        jobs: list[tuple[str, str, Future[None] | None]] = []
        for channel in event.channels:
            key = f"{event.idempotency_key}|{channel}"
            if key in self._delivered or key in self._queued:
                self.stats.duplicates += 1
                continue
            delivery = self._deliveries.get(channel)
            if delivery is None:
                log.error("alert.unknown_channel", channel=channel, key=key)
                self._count(self.stats.failed, channel)
                self._given_up.add(key)
                continue
            jobs.append((key, channel, self._workers[channel].submit(self._retry, delivery, event)))
            self._queued.add(key)
        return jobs

    def _settle(self, consumer: KafkaConsumer, *, wait: bool = False) -> None:
        """Account for the deliveries that finished, in log order; hand the records whose
        deliveries all settled to the recorder (the ``alerts`` table and the delivered
        keys, off this thread: a Delta write takes a few hundred ms, and deliveries do not
        wait for it), and commit their offsets once it has written them. With ``wait``,
        until everything has settled, been recorded and committed."""
        while True:
            if self._recording is not None and (wait or self._recording[0].done()):
                written, offsets = self._recording
                self._recording = None
                written.result()
                consumer.commit(offsets)
            while self._inflight and (
                wait or all(f is None or f.done() for _, _, f in self._inflight[0].jobs)
            ):
                pending = self._inflight.popleft()
                for key, channel, delivery in pending.jobs:
                    self._account(key, channel, pending.event.rule, delivery)
                    self._queued.discard(key)
                self._settled.append(pending)
            if self._settled and self._recording is None:
                settled, self._settled = self._settled, []
                offsets = {p.tp: OffsetAndMetadata(p.offset + 1, "", -1) for p in settled}
                horizon = int(time.time() * 1000) - _REMEMBER_MS
                self._delivered = {k: at for k, at in self._delivered.items() if at >= horizon}
                failed, self._given_up = self._given_up, set()
                job = self._recorder.submit(
                    self._record, [p.event for p in settled], dict(self._delivered), failed
                )
                self._recording = (job, offsets)
            if not wait or (not self._inflight and not self._settled and not self._recording):
                return

    def _account(self, key: str, channel: str, rule: str, future: Future[None] | None) -> None:
        if future is None:
            return
        try:
            future.result()
        except Exception as error:  # given up after the retries: reported, not dropped
            log.error("alert.delivery_failed", channel=channel, key=key, error=repr(error))
            self._count(self.stats.failed, channel)
            self._failed_total.labels(channel=channel).inc()
            self._given_up.add(key)
            return
        self._delivered[key] = int(time.time() * 1000)
        self._count(self.stats.delivered, channel)
        self._count(self.stats.delivered_by_rule, rule)
        self._delivered_total.labels(channel=channel).inc()

    def _record(
        self, events: list[AlertEvent], delivered: dict[str, int], failed: set[str]
    ) -> None:
        """The recorder's job: the ``alerts`` rows, then the delivered keys."""
        self._history.record(events, delivered=delivered, failed=failed)
        self._save_state(delivered)

    def _retry(self, delivery: Delivery, event: AlertEvent) -> None:
        for attempt in Retrying(
            stop=stop_after_delay(self._cfg.retry_for_s),
            wait=wait_exponential(multiplier=0.5, max=30),
            reraise=True,
        ):
            with attempt:
                delivery.deliver(event)

    @staticmethod
    def _count(counts: dict[str, int], channel: str) -> None:
        counts[channel] = counts.get(channel, 0) + 1
