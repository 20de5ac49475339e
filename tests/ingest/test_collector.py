"""The collector against the real embedded broker: acknowledgements, errors, auth, limits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from kafka import TopicPartition

from fleetlens.config import Settings, load_settings
from fleetlens.contract import ContractViolation, Validator
from fleetlens.ingest.collector import create_app
from fleetlens.kafka.clients import all_partitions, log_end_offsets, make_consumer

pytestmark = pytest.mark.broker

AUTH = {"authorization": "Bearer dev-token-acme"}
fleet_settings = load_settings("embedded")


def payload(i: int = 0, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema_version": 1,
        "event_id": f"evt-{i:06d}",
        "server_id": f"srv-{i % 7:05d}",
        "ts": int(time.time() * 1000) - 1000,
        "metrics": {"cpu_pct": 12.5, "mem_pct": 40.0, "conns": 3},
        "tags": {"region": "eu-west-1", "service": "api", "tenant": "spoofed"},
    }
    body.update(changes)
    return body


def read_topic(settings: Settings) -> list[Any]:
    consumer = make_consumer(settings.kafka, group_id=None)
    try:
        partitions = all_partitions(consumer, settings.kafka.topics.metrics.name)
        ends = log_end_offsets(consumer, partitions)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_batch_is_acknowledged_and_written_with_tenant_from_token(
    client: TestClient, settings: Settings
) -> None:
    response = client.post("/api/v1/metrics", json=[payload(i) for i in range(50)], headers=AUTH)

    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 50
    records = read_topic(settings)
    assert len(records) == 50
    validator = Validator(settings.contract)
    events = [validator.decode(r.value, now_ms=int(time.time() * 1000)) for r in records]
    assert {e.event_id for e in events} == {f"evt-{i:06d}" for i in range(50)}
    assert {e.tags["tenant"] for e in events} == {"acme"}
    # Keyed by server: one server's events share a partition.
    partitions_of = {}
    for r in records:
        partitions_of.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in partitions_of.values())


def test_single_payload_and_rfc3339_timestamp(client: TestClient, settings: Settings) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    response = client.post("/api/v1/metrics", json=payload(1, ts=stamp), headers=AUTH)
    assert response.status_code == 202
    (record,) = read_topic(settings)
    assert msgspec.json.decode(record.value)["ts"] % 1000 == 0


def test_invalid_items_are_named_and_valid_ones_still_accepted(
    client: TestClient, settings: Settings
) -> None:
    items = [
        payload(0),
        payload(1, metrics={"cpu_pct": 101}),
        payload(2),
        {"schema_version": 1},
        payload(4, tags={"owner": "x"}),
    ]
    response = client.post("/api/v1/metrics", json=items, headers=AUTH)

    assert response.status_code == 400
    body = response.json()
    assert body["accepted"] == 2
    assert [(e["index"], e["field"]) for e in body["errors"]] == [
        (1, "metrics.cpu_pct"),
        (3, "event_id"),
        (4, "tags.owner"),
    ]
    assert len(read_topic(settings)) == 2


def test_not_json_is_400(client: TestClient) -> None:
    response = client.post("/api/v1/metrics", content=b"{nope", headers=AUTH)
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["errors"][0]["reason"]


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": "Basic dev-token-acme"}]
)
def test_missing_or_bad_token_is_401(client: TestClient, headers: dict[str, str]) -> None:
    response = client.post("/api/v1/metrics", json=payload(), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_too_large_is_413(client: TestClient, settings: Settings) -> None:
    too_many = [payload(i) for i in range(settings.collector.max_batch + 1)]
    assert client.post("/api/v1/metrics", json=too_many, headers=AUTH).status_code == 413
    huge = b"[" + b" " * settings.collector.max_body_bytes + b"]"
    assert client.post("/api/v1/metrics", content=huge, headers=AUTH).status_code == 413
    assert read_topic(settings) == []


def test_metrics_endpoint_counts(client: TestClient) -> None:
    client.post("/api/v1/metrics", json=[payload(0), payload(1, ts="soon")], headers=AUTH)
    text = client.get("/metrics/").text
    assert 'fleetlens_collector_payloads_accepted_total{tenant="acme"} 1.0' in text
    assert 'fleetlens_collector_payloads_rejected_total{reason="ts"} 1.0' in text
    assert "fleetlens_collector_produce_latency_seconds_count 1.0" in text
    assert client.get("/healthz").json() == {"status": "ok"}


def test_topic_partitions_match_config(settings: Settings) -> None:
    consumer = make_consumer(settings.kafka, group_id=None)
    try:
        parts = all_partitions(consumer, settings.kafka.topics.metrics.name)
    finally:
        consumer.close()
    assert parts == [
        TopicPartition(settings.kafka.topics.metrics.name, p)
        for p in range(settings.kafka.topics.metrics.partitions)
    ]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def mutated_payloads() -> st.SearchStrategy[dict[str, Any]]:
    """A valid payload with one field replaced, removed or added."""
    keys = st.sampled_from(
        ["schema_version", "event_id", "server_id", "ts", "metrics", "tags", "extra"]
    )
    return st.builds(
        lambda i, key, value, drop: (
            {k: v for k, v in payload(i).items() if k != key} if drop else payload(i) | {key: value}
        ),
        st.integers(0, 10**6),
        keys,
        json_values,
        st.booleans(),
    )


@hypothesis_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=st.lists(mutated_payloads() | json_values, min_size=1, max_size=5))
def test_fuzzed_batches_get_named_errors_and_never_a_5xx(
    client: TestClient, items: list[Any]
) -> None:
    response = client.post("/api/v1/metrics", json=items, headers=AUTH)

    assert response.status_code in (202, 400), response.text
    body = response.json()
    validator = Validator(fleet_settings.contract)
    now_ms = int(time.time() * 1000)
    expected_errors = {}
    for index, item in enumerate(items):
        try:
            validator.convert(item, now_ms=now_ms, tenant="acme")
        except ContractViolation as violation:
            expected_errors[index] = violation.field
    got = {e["index"]: e["field"] for e in body.get("errors", [])}
    assert got == expected_errors
    assert body["accepted"] == len(items) - len(expected_errors)
    assert response.status_code == (400 if expected_errors else 202)
