"""Fixtures of the object-storage tests: moto's S3 server as a real process on loopback, a
bucket per test, and the FLEETLENS_* settings that put the lake in it."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from fleetlens.config import Settings, load_settings
from fleetlens.kafka.clients import ensure_topics
from ports import free_port

#: The prefix of the lake inside each test's bucket.
PREFIX = "fleet"


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a moto S3 server started for this test session."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with log_path.open("wb") as log_out:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("moto_server")),
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, log_path.read_text()
        try:
            httpx.get(endpoint, timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
    yield endpoint
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture(scope="session")
def s3_options(s3_endpoint: str) -> dict[str, str]:
    """``lake.storage_options`` for the moto server, as delta-rs and polars spell them."""
    return {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_ALLOW_HTTP": "true",
    }


@pytest.fixture(scope="session")
def s3(s3_endpoint: str) -> Any:
    """A boto3 S3 client of the moto server: the tests' own view of the bucket."""
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture
def bucket(s3: Any) -> str:
    """A new, empty bucket for one test."""
    name = f"lake-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_root(bucket: str) -> str:
    """The lake root of one test: ``s3://<bucket>/fleet``."""
    return f"s3://{bucket}/{PREFIX}"


@pytest.fixture
def s3_env(
    fleet_env: dict[str, str],
    s3_root: str,
    s3_options: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """``fleet_env`` with the lake on S3: root and storage options as environment variables
    (set here too, like ``fleet_env``), the way the production profile gets its secrets."""
    extra = {"FLEETLENS_LAKE__ROOT": s3_root} | {
        f"FLEETLENS_LAKE__STORAGE_OPTIONS__{key}": value for key, value in s3_options.items()
    }
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    return fleet_env | extra


@pytest.fixture
def s3_settings(s3_env: dict[str, str]) -> Settings:
    """Settings of one test (see ``s3_env``), with its topics created."""
    loaded = load_settings()
    ensure_topics(loaded.kafka)
    return loaded
