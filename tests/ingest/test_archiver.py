"""The archiver against the real embedded broker: exactly once per offset, even under SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import tenacity

from fleetlens.config import Settings
from fleetlens.contract import Validator, encode_event
from fleetlens.demo import ServiceProcess
from fleetlens.kafka.clients import all_partitions, make_consumer, make_producer
from fleetlens.kafka.dlq import read_dlq_headers
from fleetlens.lake.landing import LANDING_SCHEMA
from fleetlens.simulator.fleet import Fleet, FleetSpec
from fleetlens.simulator.live import build_payloads

pytestmark = [pytest.mark.broker, pytest.mark.slow]

RAW_BAD = [b"not json", b'{"schema_version": 1}', b"[]"]


def landing(settings: Settings) -> pl.DataFrame:
    files = sorted(Path(settings.lake.root, "landing", "metrics").rglob("*.parquet"))
    if not files:
        return pl.DataFrame(schema={"event_id": pl.String})
    return pl.concat([pl.read_parquet(f) for f in files])


def produce(settings: Settings, *, servers: int, slots: int, bad_every: int = 0) -> dict[str, Any]:
    """Write valid canonical events (and raw invalid records) straight to the metrics topic."""
    fleet = Fleet(FleetSpec(servers=servers, seed=7, silences_per_day=0))
    validator = Validator(settings.contract)
    now = int(time.time())
    producer = make_producer(settings.kafka)
    topic = settings.kafka.topics.metrics.name
    event_ids: list[str] = []
    bad = 0
    for slot in range(now - 10 * slots, now, 10):
        for i, item in enumerate(build_payloads(fleet, slot, 10)):
            event = validator.convert(item, now_ms=now * 1000)
            producer.send(topic, key=event.server_id.encode(), value=encode_event(event))
            event_ids.append(event.event_id)
            if bad_every and i % bad_every == 0:
                producer.send(topic, value=RAW_BAD[bad % len(RAW_BAD)])
                bad += 1
    producer.flush()
    producer.close()
    return {"event_ids": event_ids, "bad": bad}


def read_dlq(settings: Settings) -> list[Any]:
    consumer = make_consumer(settings.kafka, group_id=None, consumer_timeout_ms=2000)
    partitions = all_partitions(consumer, settings.kafka.topics.dlq.name)
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    records = list(consumer)
    consumer.close()
    return records


def archive_to_idle(settings: Settings, env: dict[str, str], tmp_path: Path) -> None:
    service = ServiceProcess(
        "archiver-final", ["archive", "--exit-when-idle", "3"], log_dir=tmp_path / "logs", env=env
    )
    assert service.process.wait(120) == 0, service.log_path.read_text()


def assert_exactly_once(settings: Settings, expected_ids: list[str]) -> pl.DataFrame:
    rows = landing(settings)
    assert rows.height == len(expected_ids)
    assert rows.select("kafka_partition", "kafka_offset").is_duplicated().sum() == 0
    assert sorted(rows["event_id"].to_list()) == sorted(expected_ids)
    staging = Path(settings.lake.root, "_staging")
    assert not list(staging.rglob("*.parquet")), "staged files left behind"
    return rows


def test_collector_to_archive_end_to_end(
    settings: Settings, fleet_env: dict[str, str], tmp_path: Path
) -> None:
    collector = ServiceProcess("collector", ["collector"], log_dir=tmp_path / "logs", env=fleet_env)
    url = f"http://127.0.0.1:{settings.collector.port}"
    try:
        for attempt in tenacity.Retrying(
            stop=tenacity.stop_after_delay(20), wait=tenacity.wait_fixed(0.2), reraise=True
        ):
            with attempt:
                httpx.get(f"{url}/healthz").raise_for_status()
        fleet = Fleet(FleetSpec(servers=120, seed=3, silences_per_day=0))
        now = int(time.time())
        accepted_ids: list[str] = []
        for slot in range(now - 300, now, 10):
            batch = build_payloads(fleet, slot, 10)
            response = httpx.post(
                f"{url}/api/v1/metrics",
                json=batch,
                headers={"authorization": "Bearer dev-token-globex"},
            )
            assert response.status_code == 202, response.text
            accepted_ids += [p["event_id"] for p in batch]
    finally:
        collector.stop()
    producer = make_producer(settings.kafka)
    for raw in RAW_BAD:
        producer.send(settings.kafka.topics.metrics.name, value=raw)
    producer.flush()
    producer.close()

    archive_to_idle(settings, fleet_env, tmp_path)

    rows = assert_exactly_once(settings, accepted_ids)
    assert rows.height == len(set(accepted_ids))
    for file in Path(settings.lake.root, "landing", "metrics").rglob("*.parquet"):
        assert file.parent.name.startswith("hour=") and file.parent.parent.name.startswith("date=")
        table = pq.read_table(file)
        assert table.schema.remove_metadata().equals(LANDING_SCHEMA)
        tenants = pc.map_lookup(table["tags"], "tenant", "first")
        assert set(tenants.to_pylist()) == {"globex"}
    dead = read_dlq(settings)
    assert sorted(r.value for r in dead) == sorted(RAW_BAD)
    for record in dead:
        headers = read_dlq_headers(record.headers)
        assert headers["source.topic"] == settings.kafka.topics.metrics.name
        assert headers["reason"]
        assert headers["stage"] == "archive"
        assert int(headers["source.offset"]) >= 0


def test_sigkill_three_times_loses_and_repeats_nothing(
    settings: Settings, fleet_env: dict[str, str], tmp_path: Path
) -> None:
    produced = produce(settings, servers=1500, slots=40, bad_every=500)
    env = fleet_env | {
        "FLEETLENS_ARCHIVE__FLUSH_MAX_ROWS": "1000",
        "FLEETLENS_ARCHIVE__FLUSH_INTERVAL_S": "0.3",
        # Small polls keep the archiver busy long enough for three kills mid-stream.
        "FLEETLENS_KAFKA__CONSUMER__MAX_POLL_RECORDS": "100",
    }
    rng = random.Random(11)
    checkpoint = Path(settings.lake.root, "_state", "archiver", f"{settings.archive.group_id}.json")
    for kill in range(3):
        service = ServiceProcess(
            f"archiver-{kill}", ["archive"], log_dir=tmp_path / "logs", env=env
        )
        # Kill only once this run has made progress, at a random moment after that.
        before = checkpoint.stat().st_mtime_ns if checkpoint.exists() else 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            not checkpoint.exists() or checkpoint.stat().st_mtime_ns == before
        ):
            assert service.process.poll() is None, service.log_path.read_text()
            time.sleep(0.05)
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(service.process.pid, signal.SIGKILL)
        service.process.wait(10)
    partial = landing(settings).height
    assert 0 < partial < len(produced["event_ids"]), "the kills should land mid-stream"

    archive_to_idle(settings, env, tmp_path)

    assert_exactly_once(settings, produced["event_ids"])
    # The DLQ may repeat a record whose flush was interrupted, but misses none.
    dead = {
        (int(h["source.partition"]), int(h["source.offset"]))
        for h in (read_dlq_headers(r.headers) for r in read_dlq(settings))
    }
    assert len(dead) == produced["bad"]
