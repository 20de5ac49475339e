"""The ``fleetlens`` command from any working directory: broker lifecycle and demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
def test_demo_bounded_run_archives_everything_accepted(
    own_env: dict[str, str], tmp_path: Path
) -> None:
    result = run(
        ["demo", "--duration", "40", "--servers", "200", "--json"], own_env, tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["archived"] == summary["accepted"] > 0
    assert summary["rejected"] > 0  # malformed payloads were injected
    assert summary["sent"] == summary["accepted"] + summary["rejected"]
    assert summary["dlq"] == summary["raw_malformed"] > 0
    assert summary["failed_requests"] == 0
    # The alert engine ran with the shipped rules (its incident needs minutes to fire).
    assert set(summary["alerts"]) == {
        "high-cpu",
        "memory-pressure",
        "disk-filling",
        "server-silent",
        "cpu-anomaly",
    }
    assert all(set(v) == {"fired", "resolved", "notifications"} for v in summary["alerts"].values())
    # The demo stopped the broker it started.
    assert run(["broker", "status"], own_env, tmp_path).returncode == 1


@pytest.mark.broker
@pytest.mark.slow
def test_demo_pages_its_cpu_incident_and_its_silent_server(
    own_env: dict[str, str], tmp_path: Path
) -> None:
    # Long enough for the shipped rules: high-cpu needs 2 min of hot samples and 1 min more,
    # server-silent 2 min of silence.
    result = run(
        ["demo", "--duration", "240", "--servers", "60", "--json"], own_env, tmp_path, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    alerts = json.loads(result.stdout.strip().splitlines()[-1])["alerts"]
    for rule in ("high-cpu", "server-silent"):
        assert alerts[rule]["fired"] >= 1, alerts
        assert alerts[rule]["notifications"] >= alerts[rule]["fired"], alerts
