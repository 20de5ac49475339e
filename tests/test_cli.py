"""The ``fleetlens`` command from any working directory: broker lifecycle and demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ports import free_port

FLEETLENS = str(Path(sys.executable).with_name("fleetlens"))


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> Any:
    return subprocess.run(
        [FLEETLENS, *args],
        env=os.environ | env,
        cwd=cwd,
        timeout=timeout,
        capture_output=True,
        text=True,
    )


@pytest.fixture
def own_env(tmp_path: Path) -> dict[str, str]:
    """A port, lake and runtime folder of the test's own (the demo starts its own broker)."""
    return {
        "FLEETLENS_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "FLEETLENS_COLLECTOR__PORT": str(free_port()),
        "FLEETLENS_LAKE__ROOT": str(tmp_path / "lake"),
        "FLEETLENS_RUNTIME_DIR": str(tmp_path / "run"),
    }


@pytest.mark.broker
def test_broker_start_status_stop(own_env: dict[str, str], tmp_path: Path) -> None:
    down = run(["broker", "status"], own_env, tmp_path)
    assert down.returncode == 1
    assert json.loads(down.stdout)["reachable"] is False

    started = run(["broker", "start"], own_env, tmp_path)
    assert started.returncode == 0, started.stderr
    status = json.loads(started.stdout)
    assert status["reachable"] is True and status["pid"] > 0
    assert status["topics"] == {
        "fleet.metrics.v1": 6,
        "fleet.dlq.v1": 1,
        "fleet.agg1m.v1": 6,
        "fleet.alerts.v1": 1,
    }
    again = run(["broker", "start"], own_env, tmp_path)  # idempotent: same broker
    assert json.loads(again.stdout)["pid"] == status["pid"]

    stopped = run(["broker", "stop"], own_env, tmp_path)
    assert json.loads(stopped.stdout) == {"stopped": True}
    assert run(["broker", "status"], own_env, tmp_path).returncode == 1


def test_production_profile_starts_nothing(tmp_path: Path) -> None:
    shown = run(["--profile", "production", "config", "show", "--json"], {}, tmp_path)
    assert shown.returncode == 0, shown.stderr
    config = json.loads(shown.stdout)
    assert config["broker"]["mode"] == "external"
    assert config["lake"]["root"].startswith("s3://")


def test_unknown_profile_is_a_clear_error(tmp_path: Path) -> None:
    result = run(["--profile", "nope", "config", "show"], {}, tmp_path)
    assert result.returncode == 2
    assert "no profile 'nope'" in result.stderr


@pytest.mark.broker
@pytest.mark.slow
def test_demo_archives_everything_and_pages_its_incident_and_silent_server(
    own_env: dict[str, str], tmp_path: Path
) -> None:
    # Long enough for the shipped rules: high-cpu needs 2 min of hot samples and 1 min more,
    # server-silent 2 min of silence.
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"  # files: no pipe to fill up
    with out.open("w") as stdout_file, err.open("w") as stderr_file:
        demo = subprocess.Popen(
            [FLEETLENS, "demo", "--duration", "240", "--servers", "100", "--json"],
            env=os.environ | own_env,
            cwd=tmp_path,
            stdout=stdout_file,
            stderr=stderr_file,
        )
    try:
        # Meanwhile, through the API the demo serves: the incident, as its tenant sees it.
        api = f"http://127.0.0.1:{own_env['FLEETLENS_COLLECTOR__PORT']}/api/v1"
        firing = wait_for_firing(api, deadline_s=300)
        alert = next(a for a in firing if a["rule"] == "high-cpu")
        acked = httpx.post(
            f"{api}/alerts/{alert['id']}/ack",
            json={"by": "test"},
            headers=token(alert["labels"]["tenant"]),
        )
        assert acked.status_code == 202, acked.text
        demo.wait(timeout=400)
    finally:
        demo.kill()
    assert demo.returncode == 0, err.read_text()[-3000:]
    summary = json.loads(out.read_text().strip().splitlines()[-1])
    assert summary["archived"] == summary["accepted"] > 0
    assert summary["rejected"] > 0  # malformed payloads were injected
    assert summary["sent"] == summary["accepted"] + summary["rejected"]
    assert summary["dlq"] == summary["raw_malformed"] > 0
    assert summary["failed_requests"] == 0
    alerts = summary["alerts"]
    assert set(alerts) == {
        "high-cpu",
        "memory-pressure",
        "disk-filling",
        "server-silent",
        "cpu-anomaly",
    }
    assert all(set(v) == {"fired", "resolved", "notifications"} for v in alerts.values())
    for rule in ("high-cpu", "server-silent"):
        assert alerts[rule]["fired"] >= 1, alerts
        assert alerts[rule]["notifications"] >= alerts[rule]["fired"], alerts
    # The demo stopped the broker it started.
    assert run(["broker", "status"], own_env, tmp_path).returncode == 1


def token(tenant: str) -> dict[str, str]:
    """The embedded profile's development token of ``tenant``."""
    return {"Authorization": f"Bearer dev-token-{tenant}"}


def wait_for_firing(api: str, *, deadline_s: float) -> list[dict[str, Any]]:
    """The firing alerts of the first tenant that has a high-cpu one, once there is one."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for tenant in ("acme", "globex", "initech"):
            try:
                response = httpx.get(
                    f"{api}/alerts", params={"state": "firing"}, headers=token(tenant)
                )
            except httpx.TransportError:  # not up yet
                continue
            if response.status_code == 200:
                firing = response.json()["alerts"]
                if any(a["rule"] == "high-cpu" for a in firing):
                    return firing
        time.sleep(2)
    raise AssertionError("no high-cpu alert came through the API")
