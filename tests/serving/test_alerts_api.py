"""The alert endpoints over a real lake: tenant scoping, acknowledgements and silences, bad
requests answered with the field at fault, and what the speed layer's engine does with them
once it has read them from the lake (escalation stopped, notifications held back)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fleetlens.alerts.control import AlertControl, ControlFollower
from fleetlens.alerts.engine import AlertEngine, AlertEvent
from fleetlens.alerts.history import AlertHistory
from fleetlens.alerts.rules import parse_rules
from fleetlens.config import Settings, load_settings
from fleetlens.lake.paths import Lake
from fleetlens.serving.app import create_app

ACME = {"Authorization": "Bearer dev-token-acme"}
GLOBEX = {"Authorization": "Bearer dev-token-globex"}
S = 1_000
RULES = {
    "defaults": {"for": "0s", "keep_firing_for": "0s", "repeat_interval": "4h"},
    "channels": {"page": {"type": "log"}, "boss": {"type": "log"}},
    "routes": [
        {"name": "page", "channels": ["page"], "escalate_after": "5m", "escalate_to": "boss"},
        {"name": "boss", "channels": ["boss"]},
    ],
    "rules": [
        {
            "name": "high-cpu",
            "type": "threshold",
            "severity": "critical",
            "metric": "cpu_pct",
            "aggregation": "last",
            "window": "1m",
            "op": ">",
            "value": 90,
        }
    ],
}


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("FLEETLENS_PROFILE", "embedded")
    monkeypatch.setenv("FLEETLENS_LAKE__ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("FLEETLENS_RUNTIME_DIR", str(tmp_path / "run"))
    return load_settings()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def engine_with_firing(now: int) -> tuple[AlertEngine, list[AlertEvent]]:
    """acme's web-1 and web-2 and globex's db-1 over 90 % CPU at ``now``."""
    engine = AlertEngine(parse_rules(RULES))
    events = []
    for server, tenant in (("web-1", "acme"), ("web-2", "acme"), ("db-1", "globex")):
        tags = {"tenant": tenant, "env": "prod", "service": "api"}
        events += engine.observe(server, tags, now, {"cpu_pct": 99.0}, partition=0, now=now)
    return engine, events


def recorded_firing(settings: Settings) -> tuple[AlertEngine, int]:
    """:func:`engine_with_firing` now, its records in the alerts table (as the notifier
    leaves them); the engine and the time."""
    now = now_ms()
    engine, events = engine_with_firing(now)
    record_events(settings, events)
    return engine, now


def record_events(settings: Settings, events: list[AlertEvent]) -> None:
    """What the notifier does with records of fleet.alerts.v1."""
    AlertHistory(Lake(settings.lake)).record(events, delivered={}, failed=set())


def alert_of(client: TestClient, server: str, headers: dict[str, str]) -> dict[str, Any]:
    alerts = client.get("/api/v1/alerts", headers=headers).json()["alerts"]
    return next(a for a in alerts if a["labels"]["server"] == server)


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def test_every_endpoint_needs_a_known_token(client: TestClient) -> None:
    for method, path in [
        ("GET", "/api/v1/alerts"),
        ("POST", "/api/v1/alerts/x/ack"),
        ("GET", "/api/v1/silences"),
        ("POST", "/api/v1/silences"),
        ("DELETE", "/api/v1/silences/x?by=ana"),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            response = client.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["www-authenticate"] == "Bearer"


def test_a_tenant_sees_and_acknowledges_only_its_own_alerts(
    client: TestClient, settings: Settings
) -> None:
    recorded_firing(settings)
    acme = client.get("/api/v1/alerts", headers=ACME).json()["alerts"]
    assert sorted(a["labels"]["server"] for a in acme) == ["web-1", "web-2"]
    assert {a["state"] for a in acme} == {"firing"} and acme[0]["acked_by"] is None
    globex = client.get("/api/v1/alerts", headers=GLOBEX).json()["alerts"]
    assert [a["labels"]["server"] for a in globex] == ["db-1"]
    filtered = client.get("/api/v1/alerts", params={"server": "web-2"}, headers=ACME).json()
    assert [a["labels"]["server"] for a in filtered["alerts"]] == ["web-2"]

    db = globex[0]["id"]
    hidden = client.post(f"/api/v1/alerts/{db}/ack", json={"by": "ana"}, headers=ACME)
    assert hidden.status_code == 404  # another tenant's alert does not exist for acme
    web1 = alert_of(client, "web-1", ACME)["id"]
    missing = client.post(f"/api/v1/alerts/{web1}/ack", json={}, headers=ACME)
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "by"]
    acked = client.post(f"/api/v1/alerts/{web1}/ack", json={"by": "ana"}, headers=ACME)
    assert acked.status_code == 202, acked.text
    assert acked.json()["acked_by"] == "ana"
    again = client.post(f"/api/v1/alerts/{web1}/ack", json={"by": "bob"}, headers=ACME)
    assert again.status_code == 200 and again.json()["acked_by"] == "ana"
    assert alert_of(client, "web-1", ACME)["acked_by"] == "ana"
    assert alert_of(client, "web-2", ACME)["acked_by"] is None


def test_an_acknowledgement_reaches_the_engine_and_stops_only_that_escalation(
    client: TestClient, settings: Settings
) -> None:
    engine, now = recorded_firing(settings)
    web1 = alert_of(client, "web-1", ACME)["id"]
    assert client.post(f"/api/v1/alerts/{web1}/ack", json={"by": "ana"}, headers=ACME).is_success

    follower = ControlFollower(
        AlertControl(Lake(settings.lake)),
        set_silences=engine.set_silences,
        acknowledge=lambda a: engine.acknowledge(
            a.alert_id, by=a.acked_by, at=a.acked_at, firing_at=a.firing_at
        ),
    )
    follower.refresh(now + S)
    escalated = engine.tick(now + 6 * 60 * S)  # past escalate_after (5 m)
    assert sorted((e.change, e.labels["server"], e.channels) for e in escalated) == [
        ("escalate", "db-1", ("boss",)),
        ("escalate", "web-2", ("boss",)),
    ]
    acked = next(a for a in engine.alerts() if a["id"] == web1)
    assert acked["acked_by"] == "ana"


def test_a_silence_holds_back_notifications_of_its_tenant_until_it_is_expired(
    client: TestClient, settings: Settings
) -> None:
    now = datetime.now(UTC)
    body = {
        "matchers": [{"name": "server", "value": "web-.*", "is_regex": True}],
        "ends_at": (now + timedelta(hours=2)).isoformat(),
        "comment": "deploying web",
        "created_by": "ana",
    }
    created = client.post("/api/v1/silences", json=body, headers=ACME)
    assert created.status_code == 201, created.text
    silence = created.json()
    assert silence["state"] == "active" and silence["created_by"] == "ana"
    listed = client.get("/api/v1/silences", headers=ACME).json()["silences"]
    assert [s["id"] for s in listed] == [silence["id"]]
    assert client.get("/api/v1/silences", headers=GLOBEX).json()["silences"] == []
    assert client.get(f"/api/v1/silences/{silence['id']}", headers=GLOBEX).status_code == 404

    engine = AlertEngine(parse_rules(RULES))
    follower = ControlFollower(
        AlertControl(Lake(settings.lake)),
        set_silences=engine.set_silences,
        acknowledge=lambda a: None,
        check_every_s=0.001,
    )
    at = now_ms()  # the silence started when it was made
    follower.refresh(at)
    fired = []
    for server, tenant in (("web-1", "acme"), ("web-1b", "globex")):
        tags = {"tenant": tenant, "env": "prod"}
        fired += engine.observe(server, tags, at, {"cpu_pct": 99.0}, partition=0, now=at)
    held = {e.labels["server"]: (e.channels, e.suppressed_by) for e in fired}
    # acme's web-1 is held back; globex's web-1b matches the matcher but is another tenant's.
    assert held == {"web-1": ((), (silence["id"],)), "web-1b": (("page",), ())}

    other = client.delete(f"/api/v1/silences/{silence['id']}?by=eve", headers=GLOBEX)
    assert other.status_code == 404
    expired = client.delete(f"/api/v1/silences/{silence['id']}?by=ana", headers=ACME)
    assert expired.status_code == 200
    assert expired.json()["state"] == "expired" and expired.json()["expired_by"] == "ana"
    follower.refresh(at + 10 * S)
    released = engine.tick(at + 10 * S)
    assert [(e.change, e.labels["server"], e.channels) for e in released] == [
        ("firing", "web-1", ("page",))
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"matchers": []}, ["body", "matchers"]),
        (
            {"matchers": [{"name": "server", "value": "(", "is_regex": True}]},
            ["body", "matchers", 0],
        ),
        ({"ends_at": "2026-01-01T00:00:00"}, ["body", "ends_at"]),  # no time zone
        ({"comment": ""}, ["body", "comment"]),
        ({"starts_at": "2099-01-02T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z"}, ["body"]),
        ({"colour": "red"}, ["body", "colour"]),
    ],
)
def test_a_bad_silence_is_refused_naming_the_field(
    client: TestClient, change: dict[str, Any], field: list[Any]
) -> None:
    body = {
        "matchers": [{"name": "server", "value": "web-1"}],
        "ends_at": "2099-01-01T00:00:00Z",
        "comment": "maintenance",
        "created_by": "ana",
    } | change
    response = client.post("/api/v1/silences", json=body, headers=ACME)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][: len(field)] == field


def test_a_silence_cannot_reach_another_tenant_or_end_in_the_past(client: TestClient) -> None:
    body = {
        "matchers": [{"name": "tenant", "value": "globex"}],
        "ends_at": "2099-01-01T00:00:00Z",
        "comment": "x",
        "created_by": "ana",
    }
    response = client.post("/api/v1/silences", json=body, headers=ACME)
    assert response.status_code == 400
    assert response.json()["detail"]["field"] == "matchers"
    past = body | {"matchers": [{"name": "server", "value": "a"}], "ends_at": "2020-01-01T00:00Z"}
    response = client.post("/api/v1/silences", json=past, headers=ACME)
    assert response.status_code == 400 and response.json()["detail"]["field"] == "ends_at"


def test_an_episode_ended_by_a_reset_is_no_longer_active(
    client: TestClient, settings: Settings
) -> None:
    engine, now = recorded_firing(settings)
    states = engine.partition_states([0]).values()
    reset = AlertEngine(parse_rules(RULES)).end_dropped(states, now=now + S)
    assert {e.change for e in reset} == {"reset"} and len(reset) == 3
    record_events(settings, reset)
    assert client.get("/api/v1/alerts", headers=ACME).json()["alerts"] == []
