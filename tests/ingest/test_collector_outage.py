"""Broker outage: the collector answers 503 with Retry-After, never 202, and recovers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tenacity
from fastapi.testclient import TestClient

from fleetlens.config import Settings, load_settings
from fleetlens.ingest.collector import create_app
from fleetlens.kafka.broker import EmbeddedBroker
from ports import free_port

pytestmark = [pytest.mark.broker, pytest.mark.slow]

AUTH = {"authorization": "Bearer dev-token-initech"}


def body(i: int) -> dict[str, object]:
    return {
        "schema_version": 1,
        "event_id": f"e{i}",
        "server_id": "srv-1",
        "ts": int(time.time() * 1000),
        "metrics": {"cpu_pct": 50.0},
    }


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[Settings, EmbeddedBroker]]:
    """A broker of this test's own, since the test stops and restarts it."""
    settings = load_settings(
        "embedded",
        kafka={
            "bootstrap_servers": f"127.0.0.1:{free_port()}",
            "producer": {
                "max_block_ms": 2000,
                "request_timeout_ms": 2000,
                "delivery_timeout_ms": 4000,
            },
        },
        collector={"produce_timeout_s": 5, "retry_after_s": 3},
        runtime_dir=tmp_path / "run",
        lake={"root": str(tmp_path / "lake")},
    )
    broker = EmbeddedBroker(settings)
    broker.start()
    yield settings, broker
    broker.stop()


def test_503_while_broker_is_down_then_202_again(
    own_broker: tuple[Settings, EmbeddedBroker],
) -> None:
    settings, broker = own_broker
    with TestClient(create_app(settings)) as client:
        assert client.post("/api/v1/metrics", json=body(1), headers=AUTH).status_code == 202

        broker.stop()
        started = time.monotonic()
        down = client.post("/api/v1/metrics", json=[body(2), body(3)], headers=AUTH)
        assert down.status_code == 503, down.text
        assert down.headers["retry-after"] == "3"
        assert down.json()["accepted"] == 0
        assert time.monotonic() - started < 15

        broker.start()
        for attempt in tenacity.Retrying(
            stop=tenacity.stop_after_delay(60), wait=tenacity.wait_fixed(1), reraise=True
        ):
            with attempt:
                up = client.post("/api/v1/metrics", json=[body(2), body(3)], headers=AUTH)
                assert up.status_code == 202, up.text
        assert up.json()["accepted"] == 2
        text = client.get("/metrics/").text
        assert 'fleetlens_collector_requests_total{code="503"}' in text
