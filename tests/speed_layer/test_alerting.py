"""The speed layer's alert engine wrapper: rules reloaded on a change of the file or on
request (SIGHUP), alert state kept, a bad file refused; records sent to fleet.alerts.v1."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from kafka import KafkaProducer
from test_speed_e2e import read_topic_raw

from fleetlens.alerts.control import Acknowledgement, AlertControl
from fleetlens.alerts.engine import AlertEvent
from fleetlens.config import AlertSettings, Settings
from fleetlens.contract import Event
from fleetlens.kafka.clients import make_producer, wait_acknowledged
from fleetlens.lake.paths import Lake
from speed_layer.alerting import StreamAlerts

pytestmark = [pytest.mark.broker]

RULES = """
channels: {log: {type: log}}
routes: [{name: all, channels: [log]}]
rules:
  - {name: high-cpu, type: threshold, metric: cpu_pct, window: 10s, op: ">", value: 80}
"""


def sample(ts: int, cpu: float) -> Event:
    return Event(event_id=f"e{ts}", server_id="s1", ts=ts, metrics={"cpu_pct": cpu}, tags={})


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    path = tmp_path / "alerts.yaml"
    path.write_text(RULES)
    return path


@pytest.fixture
def producer(settings: Settings) -> Iterator[KafkaProducer]:
    producer = make_producer(settings.kafka)
    yield producer
    producer.close()


def stream_alerts(
    settings: Settings,
    producer: KafkaProducer,
    rules_path: Path,
    *,
    reload: threading.Event | None = None,
) -> StreamAlerts:
    """The wrapper as the speed layer builds it, on the test's rules file."""
    return StreamAlerts(
        AlertSettings(rules_path=rules_path, tick_interval_s=0.001),
        producer,
        settings.kafka.topics.alerts.name,
        lake=Lake(settings.lake),
        reload=reload,
    )


def test_rules_reload_on_change_and_on_request_keeping_state(
    settings: Settings, producer: KafkaProducer, rules_path: Path
) -> None:
    reload = threading.Event()
    alerts = stream_alerts(settings, producer, rules_path, reload=reload)
    now = int(time.time() * 1000)
    alerts.observe(sample(now, 95.0), partition=0, now_ms=now)
    assert [a["state"] for a in alerts.engine.alerts()] == ["firing"]

    # A new rule in the file: picked up at the next tick; the firing alert is kept.
    rules_path.write_text(
        RULES + '  - {name: low-cpu, type: threshold, metric: cpu_pct, op: "<", value: 1}\n'
    )
    os.utime(rules_path, (time.time() + 5, time.time() + 5))
    alerts.tick(now + 10)
    assert [r.name for r in alerts.engine.rules.rules] == ["high-cpu", "low-cpu"]
    assert [a["rule"] for a in alerts.engine.alerts()] == ["high-cpu"]

    # A file that does not validate is refused; the rules in force stay.
    rules_path.write_text(RULES.replace("value: 80", "value: eighty"))
    reload.set()  # as SIGHUP does
    alerts.tick(now + 20)
    assert [r.name for r in alerts.engine.rules.rules] == ["high-cpu", "low-cpu"]
    assert not reload.is_set()

    # The records went to fleet.alerts.v1, keyed by alert id, acknowledged.
    wait_acknowledged(producer, alerts.take_pending(), timeout_s=10)
    decoder = msgspec.json.Decoder(AlertEvent)
    records = [
        decoder.decode(v) for _, v in read_topic_raw(settings, settings.kafka.topics.alerts.name)
    ]
    assert [(r.rule, r.change) for r in records] == [("high-cpu", "firing")]


def test_an_acknowledgement_made_while_the_layer_was_down_reaches_the_restored_alert(
    settings: Settings, producer: KafkaProducer, rules_path: Path
) -> None:
    now = int(time.time() * 1000)
    first = stream_alerts(settings, producer, rules_path)
    first.observe(sample(now, 95.0), partition=0, now_ms=now)
    (alert,) = first.engine.alerts()
    states = msgspec.msgpack.decode(msgspec.msgpack.encode(first.partition_states([0])))
    # The layer is down; someone acknowledges the alert through the API meanwhile.
    AlertControl(Lake(settings.lake)).acknowledge(
        Acknowledgement(
            alert_id=alert["id"],
            firing_at=alert["firing_at"],
            tenant="acme",
            acked_by="ana",
            acked_at=now + 1_000,
        )
    )
    second = stream_alerts(settings, producer, rules_path)
    second.restore((int(p), state) for p, state in states.items())
    (restored,) = second.engine.alerts()
    assert (restored["id"], restored["acked_by"]) == (alert["id"], "ana")
