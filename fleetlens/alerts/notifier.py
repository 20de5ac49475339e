"""The notifier: delivers the notifications on ``fleet.alerts.v1`` to their channels.

Off the consuming path of the speed layer, which only writes the records: a slow or failing
receiver delays this process, never the stream. Each channel has a worker of its own, so a
slow webhook does not hold back the mail. A failing delivery is retried with exponential
backoff for ``alerts.retry_for_s``, then reported (log ``alert.delivery_failed``, the
counter, the run's summary), never dropped silently.

Exactly once per channel as far as this process can: what was delivered is remembered by
idempotency key (a state file in the lake, written before the offsets are committed), so
records the speed layer sent again after a restart are not delivered twice; webhooks also get
the key as an ``Idempotency-Key`` header for receivers that deduplicate.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import msgspec
from kafka.structs import OffsetAndMetadata
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
        self.stats = NotifierStats()
        self._delivered: dict[str, int] = self._load_state()

    def _load_state(self) -> dict[str, int]:
        data = self._lake.read_bytes(self._state_path)
        return {} if data is None else dict(msgspec.msgpack.decode(data))

    def _save_state(self, now_ms: int) -> None:
        horizon = now_ms - _REMEMBER_MS
        self._delivered = {k: at for k, at in self._delivered.items() if at >= horizon}
        self._lake.write_bytes_atomically(self._state_path, msgspec.msgpack.encode(self._delivered))

    def run(
        self, *, stop: threading.Event | None = None, exit_when_idle_s: float | None = None
    ) -> NotifierStats:
        """Deliver until ``stop`` is set or, with ``exit_when_idle_s``, until no record came
        for that long."""
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
                batch = consumer.poll(timeout_ms=200)
                now = time.monotonic()
                if not batch:
                    if exit_when_idle_s is not None and now - last_any >= exit_when_idle_s:
                        break
                    continue
                last_any = now
                events = [decoder.decode(r.value) for rs in batch.values() for r in rs]
                failed = self._deliver_all(events)
                self._history.record(events, delivered=self._delivered, failed=failed)
                self._save_state(int(time.time() * 1000))
                consumer.commit(
                    {tp: OffsetAndMetadata(rs[-1].offset + 1, "", -1) for tp, rs in batch.items()}
                )
        finally:
            consumer.close(autocommit=False)
            for worker in self._workers.values():
                worker.shutdown(wait=True)
        log.info("alerts.notifier_stopped", **vars(self.stats))
        return self.stats

    def _deliver_all(self, events: list[AlertEvent]) -> set[str]:
        """Deliver a poll's records, each channel in its own worker; wait for all. Returns
        the ``key|channel`` of the deliveries given up."""
        given_up: set[str] = set()
        self.stats.records += len(events)
        jobs: list[tuple[str, str, str, Future[None]]] = []
        queued: set[str] = set()
        for event in events:
            for channel in event.channels:
                key = f"{event.idempotency_key}|{channel}"
                if key in self._delivered or key in queued:
                    self.stats.duplicates += 1
                    continue
                delivery = self._deliveries.get(channel)
                if delivery is None:
                    log.error("alert.unknown_channel", channel=channel, key=key)
                    self._count(self.stats.failed, channel)
                    given_up.add(key)
                    continue
                future = self._workers[channel].submit(self._retry, delivery, event)
                jobs.append((key, channel, event.rule, future))
                queued.add(key)
        for key, channel, rule, future in jobs:
            try:
                future.result()
            except Exception as error:  # given up after the retries: reported, not dropped
                log.error("alert.delivery_failed", channel=channel, key=key, error=repr(error))
                self._count(self.stats.failed, channel)
                self._failed_total.labels(channel=channel).inc()
                given_up.add(key)
                continue
            self._delivered[key] = int(time.time() * 1000)
            self._count(self.stats.delivered, channel)
            self._count(self.stats.delivered_by_rule, rule)
            self._delivered_total.labels(channel=channel).inc()
        return given_up

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
