"""The built-in dashboard in headless Chromium over the real API, a simulated lake and the
embedded broker: it signs in, shows the fleet with data, follows range changes and a
drill-down, draws a live window seconds after it is produced, and lists, takes in live and
acknowledges alerts. Screenshots go to the test's directory and to ``/tmp/dashboard_shots/``.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import polars as pl
import pytest
import uvicorn
from fastapi.testclient import TestClient
from playwright.sync_api import Page, expect, sync_playwright

from browser import launch_chromium
from fleetlens.alerts.engine import AlertEngine, AlertEvent
from fleetlens.alerts.history import AlertHistory
from fleetlens.alerts.rules import parse_rules
from fleetlens.config import Settings, load_settings
from fleetlens.kafka.clients import make_producer, wait_acknowledged
from fleetlens.lake.paths import Lake
from fleetlens.serving import ui
from fleetlens.serving.app import create_app
from fleetlens.simulator.lake import day_floor, rollup_rows, write_simulated_lake
from ports import free_port
from speed_layer.sinks import Agg1mTopic

SHOTS = Path("/tmp/dashboard_shots")
ACME = {"Authorization": "Bearer dev-token-acme"}
METRICS = {"cpu_pct": 30.0, "mem_pct": 55.0, "disk_pct": 40.0, "latency_ms": 20.0}
#: (server, tenant, service). api-2 runs hot; globex's servers hotter still, so a leak of
#: another tenant's data would top acme's charts.
SERVERS = [
    *((f"{svc}-{i}", "acme", svc) for svc in ("api", "web", "db", "cache") for i in (1, 2, 3)),
    ("gx-1", "globex", "api"),
    ("gx-2", "globex", "db"),
]
HOT = "api-2"
RULES = {
    "defaults": {"for": "0s", "keep_firing_for": "0s", "repeat_interval": "4h"},
    "channels": {"page": {"type": "log"}},
    "routes": [{"name": "page", "channels": ["page"]}],
    "rules": [
        {
            "name": name,
            "type": "threshold",
            "severity": severity,
            "metric": metric,
            "aggregation": "last",
            "window": "1m",
            "op": ">",
            "value": 80,
        }
        for name, severity, metric in (
            ("high-cpu", "critical", "cpu_pct"),
            ("high-mem", "warning", "mem_pct"),
        )
    ],
}


def simulated_points(now: datetime) -> pl.DataFrame:
    """Two days per server and metric, ending two minutes ago: a sample a minute, every 15 s
    in the last three hours (so that the speed layer's minutes have a spread); a daily wave,
    noise, and a level per server."""
    recent = now - timedelta(hours=3)
    ts = pl.concat(
        [
            pl.datetime_range(
                now - timedelta(days=2),
                recent,
                "1m",
                closed="left",
                time_unit="us",
                time_zone="UTC",
                eager=True,
            ),
            pl.datetime_range(
                recent,
                now - timedelta(minutes=2),
                "15s",
                time_unit="us",
                time_zone="UTC",
                eager=True,
            ),
        ]
    )
    hours = ts.dt.epoch("s").to_numpy() / 3600
    rng = np.random.default_rng(7)
    frames = []
    for k, (server, tenant, service) in enumerate(SERVERS):
        for metric, base in METRICS.items():
            level = 97.0 if tenant == "globex" else base + 8 * rng.standard_normal()
            if server == HOT and metric == "cpu_pct":
                level = 88.0
            wave = 8 * np.sin(2 * np.pi * (hours + 3 * k) / 24)
            values = np.clip(level + wave + 3 * rng.standard_normal(len(ts)), 0, 100)
            frames.append(
                pl.DataFrame(
                    {
                        "ts": ts,
                        "server_id": server,
                        "metric": metric,
                        "value": values,
                        "tenant": tenant,
                        "region": "eu-west-1",
                        "env": "prod",
                        "service": service,
                        "cluster": f"{service}-a",
                    }
                )
            )
    return pl.concat(frames)


def fill_lake(settings: Settings, now: datetime) -> None:
    """Batch tables verified up to three hours ago, the speed layer's windows after that."""
    verified = now.replace(minute=0) - timedelta(hours=3)
    write_simulated_lake(
        Lake(settings.lake),
        simulated_points(now),
        watermarks={"rollup_1m": verified, "rollup_1h": verified, "rollup_1d": day_floor(verified)},
        speed_from=verified,
        raw=False,
    )


def alert_events(engine: AlertEngine, metric: str, at_ms: int) -> list[AlertEvent]:
    """HOT over 80 in ``metric`` at ``at_ms``: the engine's transitions (pending, firing)."""
    tags = {"tenant": "acme", "region": "eu-west-1", "env": "prod", "service": "api"}
    return engine.observe(HOT, tags, at_ms, {metric: 99.0}, partition=0, now=at_ms)


def live_window(start: datetime, cpu: float) -> pl.DataFrame:
    """HOT's closed minute at ``start`` (six samples of ``cpu``), as the speed layer emits it."""
    points = pl.DataFrame(
        {
            "ts": [start + timedelta(seconds=10 * i) for i in range(6)],
            "server_id": HOT,
            "metric": "cpu_pct",
            "value": [cpu] * 6,
            "tenant": "acme",
            "region": "eu-west-1",
            "env": "prod",
            "service": "api",
            "cluster": "api-a",
        }
    ).with_columns(pl.col("ts").dt.cast_time_unit("us"))
    return rollup_rows(points, window_s=60).with_columns(emitted_at=pl.lit(datetime.now(UTC)))


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    """The API (and so the dashboard) on a free port, in a thread."""
    if not (ui.DASHBOARD_DIST / "index.html").is_file():
        pytest.fail("the dashboard is not built: run `make setup`")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=2,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        tab = browser.new_page(viewport={"width": 1600, "height": 1000})
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        yield tab
        browser.close()
        assert errors == [], errors  # no uncaught exception in the page


def chart(page: Page, element_id: str) -> dict[str, str]:
    """The data-* attributes a chart's container shows (what it last drew)."""
    found: dict[str, str] = page.eval_on_selector(f"#{element_id}", "e => ({...e.dataset})")
    return found


def wait_ready(page: Page, renders_before: int) -> None:
    """Until the page has finished a render after the ``renders_before``-th."""
    page.wait_for_function(
        "n => document.body.dataset.status === 'ready'"
        " && Number(document.body.dataset.renders) > n",
        arg=renders_before,
        timeout=15_000,
    )


def renders(page: Page) -> int:
    return int(page.evaluate("Number(document.body.dataset.renders || 0)"))


def shoot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    SHOTS.mkdir(exist_ok=True)
    shutil.copy(path, SHOTS / path.name)


def acme_alerts(api_url: str) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = httpx.get(f"{api_url}/api/v1/alerts", headers=ACME).json()[
        "alerts"
    ]
    return alerts


@pytest.mark.broker
@pytest.mark.slow
def test_the_dashboard_shows_the_fleet_drills_down_goes_live_and_acknowledges(
    settings: Settings, api_url: str, page: Page, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    fill_lake(settings, now)
    engine = AlertEngine(parse_rules(RULES))
    history = AlertHistory(Lake(settings.lake))
    history.record(
        alert_events(engine, "cpu_pct", int(now.timestamp() * 1000)), delivered={}, failed=set()
    )

    # Sign in through the box: a wrong token is refused, the right one kept.
    page.goto(f"{api_url}/")
    page.fill("#signin-token", "not-a-token")
    page.click("button[type=submit]")
    expect(page.locator(".problem")).to_contain_text("not accepted")
    page.fill("#signin-token", "dev-token-acme")
    page.fill("#signin-user", "ana")
    page.click("button[type=submit]")
    wait_ready(page, 0)
    assert page.evaluate("localStorage.getItem('fleetlens.token')") == "dev-token-acme"

    # The overview over 24 h: acme's servers only, the hot one first; every service by hour.
    cpu = chart(page, "top-cpu_pct")
    assert cpu["servers"].split(",")[0] == HOT
    assert int(cpu["points"]) == 10 and cpu["series"] == "2"
    shown = {
        s
        for m in ("cpu_pct", "mem_pct", "disk_pct")
        for s in chart(page, f"top-{m}")["servers"].split(",")
    }
    assert shown <= {s for s, tenant, _ in SERVERS if tenant == "acme"}
    heat = chart(page, "heatmap")
    assert (heat["rows"], heat["step"]) == ("4", "3600")
    assert 24 <= int(heat["columns"]) <= 25 and int(heat["points"]) == 4 * int(heat["columns"])
    expect(page.locator("#stat-servers")).to_have_text("12")
    fresh = page.locator("#freshness")
    expect(fresh).to_have_attribute(
        "data-batch-watermark", (now.replace(minute=0) - timedelta(hours=3)).isoformat()
    )
    last_window = (now - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    expect(fresh).to_have_attribute("data-last-speed-window", last_window)
    cards = page.locator("#alert-list .alert")
    expect(cards).to_have_count(1)
    expect(cards.first).to_have_attribute("data-state", "firing")
    shoot(page, tmp_path, "overview")

    # One hour: the charts are drawn again from answers at a finer step.
    before = renders(page)
    page.click("#range .seg[data-range='1h']")
    wait_ready(page, before)
    heat = chart(page, "heatmap")
    assert heat["step"] == "300" and 12 <= int(heat["columns"]) <= 13
    assert chart(page, "top-cpu_pct")["servers"].split(",")[0] == HOT

    # Drill into the hot server: every metric, band, average and p95 a minute apart.
    before = renders(page)
    page.fill("#server-search", HOT)
    page.press("#server-search", "Enter")
    wait_ready(page, before)
    assert page.evaluate("document.body.dataset.view") == "server"
    for metric in METRICS:
        drawn = chart(page, f"metric-{metric}")
        assert drawn["series"] == "4" and drawn["step"] == "60", (metric, drawn)
        assert 57 <= int(drawn["points"]) <= 61, (metric, drawn)
    before = renders(page)
    page.click("#range .seg[data-range='24h']")
    wait_ready(page, before)
    day = chart(page, "metric-cpu_pct")
    assert day["step"] == "300" and 287 <= int(day["points"]) <= 290
    shoot(page, tmp_path, "drill-down")

    # Live: the minute that just closed appears within seconds of being produced.
    before = renders(page)
    page.click("#range .seg[data-range='1h']")
    wait_ready(page, before)
    page.wait_for_function("document.body.dataset.live === 'open'", timeout=10_000)
    drawn = chart(page, "metric-cpu_pct")
    closed = now - timedelta(minutes=1)
    assert drawn["last"] == (now - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    producer = make_producer(settings.kafka)
    try:
        sent = Agg1mTopic(producer, settings.kafka.topics.agg1m.name).send(
            live_window(closed, 42.5).to_arrow()
        )
        wait_acknowledged(producer, sent, timeout_s=10)
        produced = time.monotonic()
        page.wait_for_function(
            "t => document.querySelector('#metric-cpu_pct').dataset.last === t",
            arg=closed.strftime("%Y-%m-%dT%H:%M:%SZ"),
            timeout=10_000,
        )
        assert time.monotonic() - produced < 10
        live = chart(page, "metric-cpu_pct")
        assert int(live["points"]) == int(drawn["points"]) + 1
        assert float(live["lastAvg"]) == pytest.approx(42.5)
        expect(page.locator("#now-cpu_pct")).to_have_text("42.5%")
        shoot(page, tmp_path, "after-live")

        # A new alert comes in over the stream (long before the panel's next poll)...
        fired = alert_events(engine, "mem_pct", int(time.time() * 1000))
        history.record(fired, delivered={}, failed=set())
        alerts_topic = settings.kafka.topics.alerts.name
        sent = [producer.send(alerts_topic, value=msgspec.json.encode(e)) for e in fired]
        wait_acknowledged(producer, sent, timeout_s=10)
    finally:
        producer.close()
    expect(cards).to_have_count(2, timeout=5_000)

    # ...and the critical one is acknowledged from the panel, as the API then says.
    critical = page.locator("#alert-list .alert.sev-critical")
    critical.locator("button.ack").click()
    expect(critical).to_have_attribute("data-acked", "ana")
    by_rule = {a["rule"]: a for a in acme_alerts(api_url)}
    assert by_rule["high-cpu"]["acked_by"] == "ana"
    assert by_rule["high-mem"]["acked_by"] is None
    warning = page.locator("#alert-list .alert.sev-warning")
    expect(warning.locator("button.ack")).to_be_visible()
    shoot(page, tmp_path, "after-ack")

    # The other one is silenced for its server, for four hours by default.
    warning.locator("button.silence").click()
    warning.locator(".silence-form input").fill("memory leak, fix deploying")
    warning.locator(".silence-form button[type=submit]").click()
    expect(page.locator(".panel-foot")).to_have_text("1 silence in force")
    (silence,) = httpx.get(f"{api_url}/api/v1/silences", headers=ACME).json()["silences"]
    assert silence["matchers"][0] | {"is_regex": False} == {
        "name": "server",
        "value": HOT,
        "is_regex": False,
        "is_equal": True,
    }
    assert silence["created_by"] == "ana" and silence["state"] == "active"
    hours = (datetime.fromisoformat(silence["ends_at"]) - datetime.now(UTC)) / timedelta(hours=1)
    assert 3.9 < hours <= 4

    # A token in the fragment signs in too, and is taken out of the address.
    page.evaluate("localStorage.clear()")
    page.goto("about:blank")  # else a new fragment would not load the page again
    page.goto(f"{api_url}/#token=dev-token-globex&range=24h")
    page.wait_for_function("document.body.dataset.status === 'ready'", timeout=15_000)
    assert "token" not in page.evaluate("location.hash")
    assert set(chart(page, "top-cpu_pct")["servers"].split(",")) == {"gx-1", "gx-2"}
    expect(page.locator("#alert-list .alert")).to_have_count(0)


def test_without_a_build_the_root_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ui, "DASHBOARD_DIST", tmp_path / "missing")
    settings = load_settings(
        "embedded", lake={"root": str(tmp_path / "lake")}, runtime_dir=tmp_path / "run"
    )
    with TestClient(create_app(settings)) as client:
        root = client.get("/")
        assert root.status_code == 503 and "make setup" in root.text
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/v1/servers").status_code == 401
        unknown = client.get("/api/v1/no-such-thing")
        assert unknown.status_code == 404 and unknown.json() == {"detail": "Not Found"}
