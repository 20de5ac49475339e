"""Alert rules evaluated by the speed layer on the real embedded broker: a CPU incident on
one server gives one firing and one resolved record on fleet.alerts.v1, at the event times the
rule implies; a restart from the checkpoints does not fire it again."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pytest
from aiosmtpd.controller import Controller
from deltalake import DeltaTable, write_deltalake
from fastapi.testclient import TestClient
from kafka.partitioner.default import murmur2
from test_speed_e2e import read_topic_raw

from fleetlens.alerts.engine import AlertEvent, hour_of_week
from fleetlens.alerts.notifier import Notifier
from fleetlens.config import Settings, load_settings
from fleetlens.demo import ServiceProcess
from fleetlens.kafka.clients import make_producer
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import BASELINE_SCHEMA
from fleetlens.serving.app import create_app
from ports import free_port
from speed_layer.app import SpeedLayer

pytestmark = [pytest.mark.broker, pytest.mark.slow]

RULES = """
defaults: {for: 30s, keep_firing_for: 0s, repeat_interval: 4h}
channels: {log: {type: log}}
routes: [{name: all, channels: [log]}]
rules:
  - name: high-cpu
    type: threshold
    severity: critical
    labels: {env: prod}
    metric: cpu_pct
    aggregation: avg
    window: 30s
    op: ">"
    value: 90
    summary: "CPU {{ value | round(1) }} on {{ labels.server }}"
"""
SERVERS = ("web-1", "web-2", "web-hot", "db-1")


def produce(settings: Settings, *, start_s: int, ticks: range) -> None:
    """Every server every 10 s; web-hot at 99 % from 120 s to 240 s, the rest at 20 %."""
    producer = make_producer(settings.kafka)
    for tick in ticks:
        ts_ms = (start_s + tick * 10) * 1000
        for server in SERVERS:
            hot = server == "web-hot" and 120 <= tick * 10 < 240
            metrics = {"cpu_pct": 99.0 if hot else 20.0, "mem_pct": 40.0}
            send_sample(settings, producer, server, ts_ms, metrics)
    producer.flush()
    producer.close()


def send_sample(
    settings: Settings, producer: Any, server: str, ts_ms: int, metrics: dict[str, float]
) -> None:
    """One event of an acme prod web server."""
    event = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "server_id": server,
        "ts": ts_ms,
        "metrics": metrics,
        "tags": {"tenant": "acme", "env": "prod", "service": "web"},
    }
    producer.send(
        settings.kafka.topics.metrics.name, key=server.encode(), value=msgspec.json.encode(event)
    )


def alert_records(settings: Settings) -> list[AlertEvent]:
    decoder = msgspec.json.Decoder(AlertEvent)
    return [
        decoder.decode(v) for _, v in read_topic_raw(settings, settings.kafka.topics.alerts.name)
    ]


@pytest.fixture
def cpu_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed layer evaluates RULES and commits every 0.5 s."""
    rules = tmp_path / "alerts.yaml"
    rules.write_text(RULES)
    monkeypatch.setenv("FLEETLENS_ALERTS__RULES_PATH", str(rules))
    monkeypatch.setenv("FLEETLENS_SPEED__CHECKPOINT_INTERVAL_S", "0.5")


@pytest.mark.usefixtures("cpu_rules")
def test_an_incident_fires_and_resolves_once_and_a_restart_does_not_fire_again(
    settings: Settings,
) -> None:
    start_s = int(time.time()) // 60 * 60 - 900
    # First run: up to the middle of the incident (firing, not yet resolved).
    produce(settings, start_s=start_s, ticks=range(0, 20))
    first = SpeedLayer(load_settings()).run(exit_when_idle_s=2)
    assert first.alerts == {"pending": 1, "firing": 1}
    # Second run, from the checkpoints: the incident ends; nothing fires a second time.
    produce(settings, start_s=start_s, ticks=range(20, 36))
    second = SpeedLayer(load_settings()).run(exit_when_idle_s=2)
    assert second.alerts == {"resolved": 1}

    records = alert_records(settings)
    assert [(r.change, r.labels["server"], (r.at // 1000) - start_s) for r in records] == [
        ("pending", "web-hot", 140),  # avg over (110, 140] s: 99, 99, 99
        ("firing", "web-hot", 170),  # held for 30 s
        ("resolved", "web-hot", 240),  # the first sample back at 20 %: avg 72.7
    ]
    firing = records[1]
    assert firing.channels == ("log",) and firing.summary == "CPU 99.0 on web-hot"
    assert records[2].channels == ("log",)
    assert len({r.idempotency_key for r in records}) == 3


@pytest.mark.usefixtures("cpu_rules")
def test_a_silence_made_through_the_api_holds_back_the_firing_until_it_is_expired(
    settings: Settings,
) -> None:
    auth = {"Authorization": "Bearer dev-token-acme"}
    silence = {
        "matchers": [{"name": "server", "value": "web-hot"}],
        "ends_at": "2099-01-01T00:00:00Z",
        "comment": "known hot spot",
        "created_by": "ana",
    }
    with TestClient(create_app(load_settings())) as api:
        created = api.post("/api/v1/silences", json=silence, headers=auth)
        assert created.status_code == 201, created.text
        silence_id = created.json()["id"]
        start_s = int(time.time()) // 60 * 60 - 900
        produce(settings, start_s=start_s, ticks=range(0, 20))
        assert SpeedLayer(load_settings()).run(exit_when_idle_s=2).alerts == {
            "pending": 1,
            "firing": 1,
        }
        held = alert_records(settings)[-1]
        assert (held.change, held.channels, held.suppressed_by) == ("firing", (), (silence_id,))
        expired = api.delete(f"/api/v1/silences/{silence_id}", params={"by": "ana"}, headers=auth)
        assert expired.json()["state"] == "expired"
    # No new samples: the layer's clock finds the silence gone and lets the firing go out.
    assert SpeedLayer(load_settings()).run(exit_when_idle_s=3).alerts == {"firing": 1}
    released = alert_records(settings)[-1]
    assert (released.change, released.channels, released.suppressed_by) == (
        "firing",
        ("log",),
        (),
    )
    assert released.idempotency_key == held.idempotency_key  # the same notification, now sent


def use_rules(path: Path, monkeypatch: pytest.MonkeyPatch, *rules: str) -> None:
    """The speed layer evaluates ``rules`` (YAML flow mappings), routed to the log."""
    path.write_text(
        "channels: {log: {type: log}}\n"
        "routes: [{name: all, channels: [log]}]\n"
        "rules:\n" + "".join(f"  - {rule}\n" for rule in rules)
    )
    monkeypatch.setenv("FLEETLENS_ALERTS__RULES_PATH", str(path))


def test_a_server_going_silent_pages_once_and_resolves_when_it_is_back(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_rules(
        tmp_path / "alerts.yaml",
        monkeypatch,
        "{name: server-silent, type: absence, absent_for: 4s, known_for: 1h, for: 0s, "
        "keep_firing_for: 0s}",
    )
    monkeypatch.setenv("FLEETLENS_ALERTS__TICK_INTERVAL_S", "0.2")
    # Two servers on one partition: when one goes quiet, its partition still talks, so it
    # is the server that is silent, not the pipeline.
    partitions = settings.kafka.topics.metrics.partitions
    by_partition: dict[int, list[str]] = {}
    for i in range(100):
        name = f"web-{i}"
        by_partition.setdefault((murmur2(name.encode()) & 0x7FFFFFFF) % partitions, []).append(name)
    quiet, talker = next(names[:2] for names in by_partition.values() if len(names) >= 2)
    producer = make_producer(settings.kafka)
    stop = threading.Event()

    def agents() -> None:
        started = time.monotonic()
        while not stop.is_set():
            elapsed = time.monotonic() - started
            # quiet: talks for 2 s, is silent for 8 s, then talks again.
            senders = [talker] + ([quiet] if elapsed < 2 or elapsed > 10 else [])
            for server in senders:
                send_sample(settings, producer, server, int(time.time() * 1000), {"cpu_pct": 20.0})
            producer.flush()
            time.sleep(0.5)

    layer_stop = threading.Event()
    layer = SpeedLayer(load_settings())
    runner = threading.Thread(target=lambda: layer.run(stop=layer_stop))
    feeder = threading.Thread(target=agents)
    runner.start()
    feeder.start()
    try:
        time.sleep(14)
    finally:
        stop.set()
        feeder.join()
        producer.close()
        layer_stop.set()
        runner.join(30)
    records = [r for r in alert_records(settings) if r.rule == "server-silent"]
    assert [(r.change, r.labels["server"], r.labels.get("scope")) for r in records] == [
        ("firing", quiet, None),
        ("resolved", quiet, None),
    ]
    assert records[0].channels == ("log",) and records[0].value is not None
    assert records[0].value >= 4  # seconds since it was last heard of


class Receiver(BaseHTTPRequestHandler):
    """A real HTTP receiver: records each POST's body and Idempotency-Key."""

    received: list[tuple[str, dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((self.headers["Idempotency-Key"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class Mailbox:
    """aiosmtpd handler keeping the messages."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


def test_the_notifier_delivers_once_per_channel_even_when_records_are_replayed(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    Receiver.received = []
    try:
        rules = tmp_path / "alerts.yaml"
        rules.write_text(
            RULES.replace(
                "channels: {log: {type: log}}",
                "channels: {log: {type: log}, hook: {type: webhook, url: "
                f"'http://127.0.0.1:{http.server_address[1]}/alerts'}}, "
                "mail: {type: email, to: [sre@example.com]}}",
            ).replace("channels: [log]", "channels: [hook, mail, log]")
        )
        monkeypatch.setenv("FLEETLENS_ALERTS__RULES_PATH", str(rules))
        monkeypatch.setenv("FLEETLENS_ALERTS__SMTP__PORT", str(smtp.port))
        monkeypatch.setenv("FLEETLENS_ALERTS__RETRY_FOR_S", "5")
        start_s = int(time.time()) // 60 * 60 - 900
        produce(settings, start_s=start_s, ticks=range(0, 36))
        assert SpeedLayer(load_settings()).run(exit_when_idle_s=2).alerts == {
            "pending": 1,
            "firing": 1,
            "resolved": 1,
        }
        stats = Notifier(load_settings()).run(exit_when_idle_s=2)
        assert stats.delivered == {"hook": 2, "mail": 2, "log": 2}
        assert [body["change"] for _, body in Receiver.received] == ["firing", "resolved"]
        assert sorted(m["Subject"].split("]")[0] for m in mailbox.messages) == [
            "[FIRING",
            "[RESOLVED",
        ]
        # A restarted speed layer sends records again with the same keys: not delivered twice.
        (firing,) = [r for r in alert_records(settings) if r.change == "firing"]
        producer = make_producer(settings.kafka)
        producer.send(
            settings.kafka.topics.alerts.name,
            key=firing.alert_id.encode(),
            value=msgspec.json.encode(firing),
        )
        producer.flush()
        producer.close()
        again = Notifier(load_settings()).run(exit_when_idle_s=2)
        assert (again.records, again.duplicates, again.delivered) == (1, 3, {})
        assert len(Receiver.received) == 2 and len(mailbox.messages) == 2
        assert Receiver.received[0][0] == firing.idempotency_key
        # The history: one row per record, the replayed one included once, with its deliveries.
        history = DeltaTable(Lake(settings.lake).table_uri("alerts")).to_pyarrow_table()
        rows = sorted(history.to_pylist(), key=lambda r: r["at"])
        assert [(r["change"], r["server_id"], r["delivered"]) for r in rows] == [
            ("pending", "web-hot", []),
            ("firing", "web-hot", ["hook", "mail", "log"]),
            ("resolved", "web-hot", ["hook", "mail", "log"]),
        ]
    finally:
        http.shutdown()
        smtp.stop()


def alert_event(server: str, channels: tuple[str, ...]) -> AlertEvent:
    now = int(time.time() * 1000)
    return AlertEvent(
        alert_id=f"id-{server}",
        rule="high-cpu",
        severity="critical",
        change="firing",
        state="firing",
        labels={"tenant": "acme", "server": server},
        value=99.0,
        at=now,
        started_at=now,
        firing_at=now,
        summary=f"hot {server}",
        description="",
        channels=channels,
        suppressed_by=(),
        idempotency_key=f"id-{server}:{now}:firing",
    )


def test_a_failing_receiver_does_not_hold_back_the_next_notifications(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    Receiver.received = []
    hook = f"http://127.0.0.1:{http.server_address[1]}/alerts"
    down = f"http://127.0.0.1:{free_port()}/alerts"  # nothing listens there
    rules = tmp_path / "alerts.yaml"
    rules.write_text(
        RULES.replace(
            "channels: {log: {type: log}}",
            f"channels: {{hook: {{type: webhook, url: '{hook}'}}, "
            f"down: {{type: webhook, url: '{down}', timeout_s: 1}}}}",
        ).replace("channels: [log]", "channels: [hook, down]")
    )
    monkeypatch.setenv("FLEETLENS_ALERTS__RULES_PATH", str(rules))
    monkeypatch.setenv("FLEETLENS_ALERTS__RETRY_FOR_S", "6")
    producer = make_producer(settings.kafka)

    def send(event: AlertEvent) -> None:
        producer.send(settings.kafka.topics.alerts.name, value=msgspec.json.encode(event))
        producer.flush()

    def hook_got(server: str, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if any(body["labels"]["server"] == server for _, body in Receiver.received):
                return True
            time.sleep(0.05)
        return False

    notifier = Notifier(load_settings())
    stats: list[Any] = []
    runner = threading.Thread(target=lambda: stats.append(notifier.run(exit_when_idle_s=2)))
    try:
        send(alert_event("web-1", ("hook", "down")))
        runner.start()
        assert hook_got("web-1", within_s=5)
        # down is being retried (for 6 s); the next record reaches hook all the same.
        sent = time.monotonic()
        send(alert_event("web-2", ("hook",)))
        assert hook_got("web-2", within_s=2)
        assert time.monotonic() - sent < 2
        runner.join(30)
        assert not runner.is_alive()
    finally:
        producer.close()
        http.shutdown()
    assert stats[0].delivered == {"hook": 2} and stats[0].failed == {"down": 1}
    history = DeltaTable(Lake(settings.lake).table_uri("alerts")).to_pyarrow_table()
    rows = {r["server_id"]: (r["delivered"], r["failed"]) for r in history.to_pylist()}
    assert rows == {"web-1": (["hook"], ["down"]), "web-2": (["hook"], [])}


def test_an_anomaly_rule_reads_the_batch_layers_baseline(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_rules(
        tmp_path / "alerts.yaml",
        monkeypatch,
        "{name: cpu-anomaly, type: anomaly, metric: cpu_pct, window: 30s, k: 3, for: 0s}",
    )
    start_s = int(time.time()) // 3600 * 3600 - 3600  # a whole hour of the week, an hour ago
    how = hour_of_week(start_s * 1000)
    baselines = pa.table(
        {
            "server_id": ["web-hot", "web-1"],
            "metric": ["cpu_pct", "cpu_pct"],
            "hour_of_week": pa.array([how, how], pa.int32()),
            "mean": [20.0, 20.0],
            "stddev": [2.0, 2.0],
            "samples": [10, 10],
            "computed_at": pa.array([start_s * 10**6] * 2, pa.timestamp("us", tz="UTC")),
        },
        schema=BASELINE_SCHEMA,
    )
    write_deltalake(Lake(settings.lake).table_uri("baseline_hourly"), baselines)
    produce(settings, start_s=start_s, ticks=range(0, 18))
    stats = SpeedLayer(load_settings()).run(exit_when_idle_s=2)
    # web-hot is 13 standard deviations above its baseline at the first hot sample; web-2
    # and db-1 have no baseline and stay silent.
    records = alert_records(settings)
    assert [(r.change, r.labels["server"], r.at // 1000 - start_s) for r in records] == [
        ("firing", "web-hot", 120)
    ]
    assert records[0].value == pytest.approx((46.333333 - 20) / 2, rel=1e-4)
    assert stats.alerts == {"firing": 1}


def test_a_kill_9_while_an_alert_fires_does_not_page_twice(
    settings: Settings, fleet_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    Receiver.received = []
    try:
        rules = tmp_path / "alerts.yaml"
        hook = f"'http://127.0.0.1:{http.server_address[1]}/alerts'"
        rules.write_text(
            RULES.replace(
                "channels: {log: {type: log}}",
                f"channels: {{hook: {{type: webhook, url: {hook}}}}}",
            ).replace("channels: [log]", "channels: [hook]")
        )
        env = fleet_env | {
            "FLEETLENS_ALERTS__RULES_PATH": str(rules),
            # No checkpoint before the kill: the restart replays the records of the firing.
            "FLEETLENS_SPEED__CHECKPOINT_INTERVAL_S": "3600",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        start_s = int(time.time()) // 60 * 60 - 900
        produce(settings, start_s=start_s, ticks=range(0, 20))
        speed = ServiceProcess("speed-killed", ["speed", "run"], log_dir=tmp_path, env=env)
        deadline = time.monotonic() + 120
        while not any(r.change == "firing" for r in alert_records(settings)):
            assert time.monotonic() < deadline and speed.process.poll() is None
            time.sleep(0.5)
        os.kill(speed.process.pid, signal.SIGKILL)
        speed.process.wait(10)
        produce(settings, start_s=start_s, ticks=range(20, 36))
        again = ServiceProcess(
            "speed-again", ["speed", "run", "--exit-when-idle", "3"], log_dir=tmp_path, env=env
        )
        assert again.process.wait(240) == 0, again.log_path.read_text()[-3000:]
        firings = [r for r in alert_records(settings) if r.change == "firing"]
        assert len(firings) == 2  # sent again by the restarted layer...
        assert len({r.idempotency_key for r in firings}) == 1  # ...with the same key
        stats = Notifier(load_settings()).run(exit_when_idle_s=2)
        assert [body["change"] for _, body in Receiver.received] == ["firing", "resolved"]
        assert stats.duplicates == 1
    finally:
        http.shutdown()
