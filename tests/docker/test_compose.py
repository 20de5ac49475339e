"""docker/compose.yaml, checked as far as this machine allows (no Docker engine here):
``docker-compose config`` accepts it, it holds the stack the production profile expects,
every FleetLens service runs a command the CLI has, and the image installs the project the
way ``make setup`` does."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetlens.config import load_settings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
EXPECTED = {
    "kafka-1", "kafka-2", "kafka-3", "kafka-users", "topics", "minio", "minio-init",
    "spark-master", "spark-worker-1", "spark-worker-2", "airflow-db", "airflow-init",
    "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "hive-metastore",
    "trino", "grafana", "jupyterlab", "api", "archiver", "speed-0", "speed-1", "notifier",
}  # fmt: skip


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The file as docker-compose resolves it (anchors merged, variables substituted)."""
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is missing: `make setup` installs Debian's docker-compose"
    done = subprocess.run(
        [tool, "--env-file", str(DOCKER / ".env.example"), "-f", str(DOCKER / "compose.yaml"),
         "config"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    resolved: dict[str, Any] = yaml.safe_load(done.stdout)
    return resolved


def _fleetlens_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image") == "fleetlens:latest"
    }


def test_the_stack_has_every_component(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= EXPECTED, EXPECTED - set(services)
    for name, service in _fleetlens_services(compose).items():
        assert service["build"]["dockerfile"] == "docker/fleetlens.Dockerfile", name


def test_kafka_is_three_kraft_brokers_with_replication_3_and_min_isr_2(
    compose: dict[str, Any],
) -> None:
    brokers = [compose["services"][f"kafka-{n}"]["environment"] for n in (1, 2, 3)]

    assert sorted(int(env["KAFKA_NODE_ID"]) for env in brokers) == [1, 2, 3]
    for env in brokers:
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].count("@") == 3
        assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == 3
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 3


def test_every_fleetlens_service_runs_a_command_the_image_has(compose: dict[str, Any]) -> None:
    for name, service in _fleetlens_services(compose).items():
        command = service["command"]
        assert (BIN / command[0]).is_file(), f"{name}: {command[0]} is not installed by setup"
        if command[0] != "fleetlens":
            continue
        words = [word for word in command[1:] if not word.startswith("-")][:3]
        # The leading sub-commands (`speed run`, `alerts notify`...): their --help must work.
        while words:
            done = subprocess.run(
                [str(BIN / "fleetlens"), *words, "--help"], capture_output=True, text=True,
                timeout=60,
            )  # fmt: skip
            if done.returncode == 0 and "Usage" in done.stdout:
                break
            words.pop()
        assert words, f"{name}: {command} is not a fleetlens command"
        options = {word for word in command if word.startswith("--")}
        for option in options:
            assert option in done.stdout, f"{name}: `fleetlens {' '.join(words)}` has no {option}"


def test_the_production_profile_matches_the_stack(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]["environment"]
    settings = load_settings("production", runtime_dir=Path("/tmp/fleetlens-compose-test"))

    # The profile's brokers are the three CLIENT listeners, with SCRAM credentials.
    advertised = {
        compose["services"][f"kafka-{n}"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        for n in (1, 2, 3)
    }
    clients = {a.split("CLIENT://")[1] for a in advertised}
    assert set(settings.kafka.bootstrap_servers.split(",")) == clients
    assert settings.kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert api["FLEETLENS_PROFILE"] == "production"
    # The lake is the bucket minio-init creates; the Spark master the compose one.
    bucket = settings.lake.root.removeprefix("s3://").split("/")[0]
    assert f"lake/{bucket}" in " ".join(compose["services"]["minio-init"]["command"])
    master = compose["services"]["spark-master"]["command"]
    host, port = master[master.index("--host") + 1], master[master.index("--port") + 1]
    assert settings.spark.master == f"spark://{host}:{port}"


def test_no_secret_is_committed() -> None:
    example = (DOCKER / ".env.example").read_text()
    secrets = [line.split("=", 1) for line in example.splitlines() if "=" in line]
    for key, value in secrets:
        if any(word in key for word in ("PASSWORD", "SECRET", "TOKEN", "KEY")):
            assert value.startswith("change-me"), key
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "docker/.env"], cwd=REPO, timeout=30
    ).returncode
    assert ignored == 0, "docker/.env must be git-ignored"
    production = yaml.safe_load((REPO / "conf" / "production.yaml").read_text())
    assert "sasl_password" not in production["kafka"]
    assert not {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"} & set(
        production["lake"].get("storage_options", {})
    )


def test_airflow_reaches_its_postgresql_database_with_an_installed_driver(
    compose: dict[str, Any],
) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(compose["services"]["airflow-scheduler"]["environment"][
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
    ])  # fmt: skip
    assert url.get_backend_name() == "postgresql" and url.host == "airflow-db"
    # The image's environment is this one: its dialect's driver must be installed.
    url.get_dialect().import_dbapi()
    for service in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor"):
        command = compose["services"][service]["command"]
        assert command[:2] == ["airflow", command[1]] and command[1] in service, command


def test_the_image_installs_the_project_like_make_setup() -> None:
    dockerfile = (DOCKER / "fleetlens.Dockerfile").read_text()
    setup = (REPO / "scripts" / "setup.sh").read_text()

    assert "COPY . /opt/fleetlens" in dockerfile
    assert "RUN bash scripts/setup.sh --runtime" in dockerfile
    assert "uv pip sync -q requirements.lock" in setup
    # delta-spark's jars at build time, for the version the lock pins.
    assert 'version("delta-spark")' in dockerfile and "delta-spark_" in dockerfile
