"""The alert engine on the speed layer's stream.

Every sample the layer folds is evaluated at once (:class:`fleetlens.alerts.engine.AlertEngine`),
and every transition and notification is sent to ``fleet.alerts.v1`` as soon as it happens,
keyed by alert id (so an alert's records stay in order), not at the next commit: the
notifier reads them from there. The commit acknowledges them before it writes the
checkpoints, which hold each partition's alert state, so a crash neither forgets an alert nor
loses a record of it; records replayed after a crash carry the same idempotency keys, which
the notifier delivers once.

Silences and acknowledgements made through the API are read from the lake on the same clock
(:class:`fleetlens.alerts.control.ControlFollower`). The rules file is reloaded when it
changes or on SIGHUP; a file that does not validate is
refused with the reason logged, and the rules in force stay in force.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec
from kafka import KafkaProducer

from fleetlens.alerts.baselines import DeltaBaselines
from fleetlens.alerts.control import Acknowledgement, AlertControl, ControlFollower
from fleetlens.alerts.engine import AlertEngine, AlertEvent
from fleetlens.alerts.rules import RulesError, load_rules
from fleetlens.config import AlertSettings
from fleetlens.contract import Event
from fleetlens.lake.paths import Lake
from fleetlens.logging import get_logger

__all__ = ["StreamAlerts"]

log = get_logger("speed.alerts")


class StreamAlerts:
    """Rules evaluated on the layer's samples, transitions sent to ``fleet.alerts.v1``.

    Args:
        settings: The ``alerts`` settings (rules file, tick cadence).
        producer: The layer's producer.
        topic: ``fleet.alerts.v1``.
        reload: Set (by a SIGHUP handler) to reload the rules file at the next tick.
        lake: Where anomaly rules find ``baseline_hourly``.
    """

    def __init__(
        self,
        settings: AlertSettings,
        producer: KafkaProducer,
        topic: str,
        *,
        lake: Lake,
        reload: threading.Event | None = None,
    ) -> None:
        self._path = settings.rules_file
        self._tick_ms = int(settings.tick_interval_s * 1000)
        self._producer = producer
        self._topic = topic
        self._reload = reload or threading.Event()
        self._mtime = _mtime(self._path)
        rules = load_rules(self._path)
        self._baselines = DeltaBaselines(lake, rules.anomaly_metrics)
        self.engine = AlertEngine(rules, baselines=self._baselines)
        self._control = ControlFollower(
            AlertControl(lake),
            set_silences=self.engine.set_silences,
            acknowledge=self._acknowledge,
            check_every_s=settings.control_check_s,
        )
        self._encoder = msgspec.json.Encoder()
        self._pending: list[Any] = []
        self._next_tick = 0
        #: Records sent, by change (firing, resolved...), and by rule and change.
        self.sent: dict[str, int] = {}
        self.sent_by_rule: dict[str, dict[str, int]] = {}
        log.info("alerts.rules_loaded", path=str(self._path), rules=len(self.engine.rules.rules))

    def observe(self, event: Event, *, partition: int, now_ms: int) -> None:
        """Evaluate the rules on one folded sample."""
        self._send(
            self.engine.observe(
                event.server_id,
                event.tags,
                event.ts,
                event.metrics,
                partition=partition,
                now=now_ms,
            )
        )

    def tick(self, now_ms: int) -> None:
        """The wall-clock work, at most every ``tick_interval_s``: a changed rules file,
        absences, held-back notifications, repeats and escalations."""
        if now_ms < self._next_tick:
            return
        self._next_tick = now_ms + self._tick_ms
        self._maybe_reload(now_ms)
        self._baselines.refresh(now_ms)
        self._control.refresh(now_ms)
        self._send(self.engine.tick(now_ms))

    def _acknowledge(self, ack: Acknowledgement) -> None:
        self.engine.acknowledge(
            ack.alert_id, by=ack.acked_by, at=ack.acked_at, firing_at=ack.firing_at
        )

    def _maybe_reload(self, now_ms: int) -> None:
        mtime = _mtime(self._path)
        if not self._reload.is_set() and mtime == self._mtime:
            return
        self._reload.clear()
        self._mtime = mtime
        try:
            rules = load_rules(self._path)
        except (RulesError, OSError) as error:
            log.error("alerts.reload_refused", path=str(self._path), error=str(error))
            return
        self._baselines.set_metrics(rules.anomaly_metrics)
        self._send(self.engine.reload(rules, now=now_ms))
        log.info("alerts.rules_reloaded", path=str(self._path), rules=len(rules.rules))

    def _send(self, events: list[AlertEvent]) -> None:
        for event in events:
            future = self._producer.send(
                self._topic, key=event.alert_id.encode(), value=self._encoder.encode(event)
            )
            self._pending.append(future)
            self.sent[event.change] = self.sent.get(event.change, 0) + 1
            by_rule = self.sent_by_rule.setdefault(event.rule, {})
            by_rule[event.change] = by_rule.get(event.change, 0) + 1
            log.info(
                f"alert.{event.change}",
                rule=event.rule,
                alert_id=event.alert_id,
                server=event.labels.get("server"),
                value=event.value,
                channels=list(event.channels),
                suppressed_by=list(event.suppressed_by),
            )

    def take_pending(self) -> list[Any]:
        """Futures of the records sent since the last call (acknowledged by the commit)."""
        pending, self._pending = self._pending, []
        return pending

    def partition_states(self, partitions: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Each partition's alert state, for its checkpoint."""
        return self.engine.partition_states(partitions)

    def restore(self, states: Iterable[tuple[int, Mapping[str, Any]]]) -> None:
        """Resume from the partitions' checkpoints, then read the API's silences and
        acknowledgements: in force before the first sample is evaluated, and applied to the
        restored alerts (one acknowledged while the layer was down included)."""
        self.engine.restore(states)
        self._control.refresh(int(time.time() * 1000))

    def end_dropped(self, states: Iterable[Mapping[str, Any]]) -> None:
        """End the alerts of checkpoints dropped with their log (another Kafka cluster:
        the embedded broker restarted empty), so that they do not stay open in the
        ``alerts`` history for ever: ``reset`` records, not notified."""
        self._send(self.engine.end_dropped(states, now=int(time.time() * 1000)))


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
