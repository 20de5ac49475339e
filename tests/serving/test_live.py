"""The live feed: closed windows and alert transitions read from Kafka (the embedded broker)
and fanned out to subscribers, filtered by tenant, server, metric and tags."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import msgspec
import polars as pl
import pytest

from fleetlens.alerts.engine import AlertEvent
from fleetlens.config import load_settings
from fleetlens.kafka.clients import ensure_topics, make_producer, wait_acknowledged
from fleetlens.serving.live import LiveFeed, LiveFilter, window_events
from fleetlens.simulator.lake import POINT_SCHEMA, rollup_rows
from speed_layer.sinks import Agg1mTopic

pytestmark = [pytest.mark.broker]

MINUTE = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)


def _windows() -> pl.DataFrame:
    points = pl.DataFrame(
        {
            "ts": [MINUTE + timedelta(seconds=10 * k) for k in range(6)] * 2,
            "server_id": ["web-1"] * 6 + ["db-1"] * 6,
            "metric": "cpu_pct",
            "value": [float(v) for v in range(12)],
            "tenant": ["acme"] * 6 + ["globex"] * 6,
            "region": "eu-west-1",
            "env": "prod",
            "service": ["web"] * 6 + ["db"] * 6,
            "cluster": "c1",
        }
    ).cast(POINT_SCHEMA)  # type: ignore[arg-type]
    rows = rollup_rows(points, window_s=60)
    return rows.with_columns(emitted_at=pl.lit(datetime.now(UTC)))


def test_a_record_becomes_one_event_per_server_and_metric() -> None:
    producer_rows = _windows()
    events = [
        {"server_id": r["server_id"], "metric": r["metric"], "sum": r["sum"]}
        for r in producer_rows.iter_rows(named=True)
    ]
    assert len(events) == 2
    record = msgspec.json.encode(
        {
            "window_start": int(MINUTE.timestamp() * 1000),
            "emitted_at": 0,
            "final": True,
            "windows": [
                {
                    "server_id": "web-1",
                    "tenant": "acme",
                    "region": None,
                    "env": None,
                    "service": "web",
                    "cluster": None,
                    "metrics": [
                        {"metric": "cpu_pct", "count": 6, "sum": 15.0, "min": 0.0, "max": 5.0,
                         "last": 5.0, "last_ts": 0, "sketch": "", "p50": 2.0, "p95": 5.0,
                         "p99": 5.0},
                    ],
                }
            ],
        }
    )  # fmt: skip
    (event,) = window_events(record)
    assert event["avg"] == 2.5
    assert event["window_start"] == MINUTE.strftime("%Y-%m-%dT%H:%M:%SZ")
    only_web = LiveFilter(tenant="acme", tags={"service": frozenset({"web"})})
    assert only_web.matches("window", event)
    assert not LiveFilter(tenant="globex").matches("window", event)
    assert not LiveFilter(tenant="acme", metrics=frozenset({"mem_pct"})).matches("window", event)


def test_subscribers_get_their_tenants_windows_and_alerts_from_kafka(
    fleet_env: dict[str, str],
) -> None:
    settings = load_settings(serving={"live_replay_s": 600})
    ensure_topics(settings.kafka)
    feed = LiveFeed(settings)

    async def run() -> tuple[
        list[tuple[str, dict[str, object]]], list[tuple[str, dict[str, object]]]
    ]:
        acme = feed.subscribe(LiveFilter(tenant="acme"))
        globex_db = feed.subscribe(LiveFilter(tenant="globex", servers=frozenset({"db-1"})))
        await asyncio.sleep(2)  # the reader assigns itself the partitions
        producer = make_producer(settings.kafka)
        futures = Agg1mTopic(producer, settings.kafka.topics.agg1m.name).send(_windows().to_arrow())
        alert = AlertEvent(
            alert_id="a1", rule="high-cpu", severity="critical", change="firing",
            state="firing", labels={"server": "web-1", "tenant": "acme"}, value=95.0,
            at=int(time.time() * 1000), started_at=None, firing_at=None, summary="cpu high",
            description="", channels=(), suppressed_by=(), idempotency_key="k1",
        )  # fmt: skip
        futures.append(producer.send(settings.kafka.topics.alerts.name, msgspec.json.encode(alert)))
        wait_acknowledged(producer, futures, timeout_s=10)
        producer.close()
        got_acme = [await asyncio.wait_for(acme.queue.get(), 20) for _ in range(2)]
        got_globex = [await asyncio.wait_for(globex_db.queue.get(), 20)]
        await asyncio.sleep(1)
        assert globex_db.queue.empty()  # not acme's alert
        return got_acme, got_globex  # type: ignore[return-value]

    try:
        acme, globex = asyncio.run(run())
    finally:
        feed.close()
    kinds = sorted(kind for kind, _ in acme)
    assert kinds == ["alert", "window"]
    window = next(e for k, e in acme if k == "window")
    assert (window["server_id"], window["count"], window["sum"]) == ("web-1", 6, 15.0)
    assert [(k, e["server_id"]) for k, e in globex] == [("window", "db-1")]
