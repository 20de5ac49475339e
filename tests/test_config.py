"""Unit tests of fleetlens.config: source layering, profiles, secrets (no broker needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from fleetlens.config import CONF_DIR, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
FLEETLENS_BIN = next(
    (
        path
        for path in (Path(sys.executable).with_name("fleetlens"), REPO / ".venv/bin/fleetlens")
        if path.is_file()
    ),
    REPO / ".venv/bin/fleetlens",
)

BASE_YAML = """\
runtime_dir: {runtime}
log: {{level: INFO, format: console}}
lake: {{root: {lake}}}
kafka:
  bootstrap_servers: base-host:9092
  client_id: base-client
  topics:
    metrics: {{name: m.base, partitions: 2, replication_factor: 1}}
    dlq: {{name: d.base, partitions: 1, replication_factor: 1}}
    agg1m: {{name: a.base, partitions: 2, replication_factor: 1}}
    alerts: {{name: al.base, partitions: 1, replication_factor: 1}}
contract:
  tag_keys: [tenant]
  metrics:
    cpu_pct: {{min: 0, max: 100}}
collector:
  port: 1111
  retry_after_s: 7
  tokens: {{acme: base-acme}}
simulator:
  tenants: [acme]
  regions: [eu-west-1]
  envs: [prod]
  services: [api]
"""

PROFILE_YAML = """\
collector:
  port: 2222
  tokens: {globex: profile-globex}
kafka:
  client_id: profile-client
  topics:
    metrics: {name: m.profile, partitions: 4, replication_factor: 1}
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FLEETLENS_* variable of the caller's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("FLEETLENS_"):
            monkeypatch.delenv(name)


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """A configuration folder of its own: base.yaml and a ``staging`` profile."""
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "base.yaml").write_text(
        BASE_YAML.format(runtime=tmp_path / "run", lake=tmp_path / "lake")
    )
    (folder / "staging.yaml").write_text(PROFILE_YAML)
    return folder


def test_custom_conf_dir_base_only(conf_dir: Path):
    settings = load_settings("base", conf_dir=conf_dir)

    assert settings.profile == "base"
    assert settings.collector.port == 1111
    assert settings.kafka.client_id == "base-client"
    assert settings.kafka.topics.metrics.name == "m.base"
    assert settings.contract.tag_keys == ("tenant",)
    # Defaults of the model fill what the YAML leaves out.
    assert settings.collector.max_batch == 1_000


def test_profile_overrides_base_and_keeps_siblings(conf_dir: Path):
    settings = load_settings("staging", conf_dir=conf_dir)

    assert settings.profile == "staging"
    assert settings.collector.port == 2222
    assert settings.collector.retry_after_s == 7  # only in base
    assert settings.kafka.client_id == "profile-client"
    assert settings.kafka.bootstrap_servers == "base-host:9092"  # only in base
    assert settings.kafka.topics.metrics.name == "m.profile"
    assert settings.kafka.topics.metrics.partitions == 4
    assert settings.kafka.topics.dlq.name == "d.base"
    # Maps merge key by key.
    tokens = {k: v.get_secret_value() for k, v in settings.collector.tokens.items()}
    assert tokens == {"acme": "base-acme", "globex": "profile-globex"}


def test_layering_base_profile_env_init(conf_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLEETLENS_COLLECTOR__PORT", "3333")
    monkeypatch.setenv("FLEETLENS_KAFKA__CLIENT_ID", "env-client")

    from_env = load_settings("staging", conf_dir=conf_dir)
    assert from_env.collector.port == 3333  # env > profile
    assert from_env.kafka.client_id == "env-client"
    assert from_env.collector.retry_after_s == 7  # base still shows through

    from_init = load_settings(
        "staging", conf_dir=conf_dir, collector={"port": 4444}, log={"level": "DEBUG"}
    )
    assert from_init.collector.port == 4444  # init > env
    assert from_init.kafka.client_id == "env-client"
    assert from_init.log.level == "DEBUG"
    assert from_init.log.format == "console"
    # A partial init override of a section keeps the section's other keys.
    assert from_init.collector.retry_after_s == 7
    assert set(from_init.collector.tokens) == {"acme", "globex"}


def test_env_nested_map_key_keeps_siblings(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLEETLENS_COLLECTOR__TOKENS__ACME", "from-env")

    settings = load_settings("embedded")

    tokens = {k: v.get_secret_value() for k, v in settings.collector.tokens.items()}
    assert tokens == {
        "acme": "from-env",
        "globex": "dev-token-globex",
        "initech": "dev-token-initech",
    }


def test_env_deeply_nested_key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLEETLENS_KAFKA__TOPICS__METRICS__PARTITIONS", "12")

    topic = load_settings("embedded").kafka.topics.metrics

    assert topic.partitions == 12
    assert topic.name == "fleet.metrics.v1"
    assert topic.replication_factor == 1


def test_profile_from_environment(conf_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLEETLENS_PROFILE", "staging")

    settings = load_settings(conf_dir=conf_dir)

    assert settings.profile == "staging"
    assert settings.collector.port == 2222
    # An explicit profile wins over the variable.
    assert load_settings("base", conf_dir=conf_dir).collector.port == 1111


def test_default_profile_is_embedded():
    settings = load_settings()

    assert settings.profile == "embedded"
    assert settings.broker.mode == "embedded"
    assert settings.kafka.consumer.max_poll_interval_ms == 5_000  # from embedded.yaml
    assert settings.kafka.consumer.session_timeout_ms == 10_000  # from base.yaml


def test_unknown_profile_names_known_profiles(conf_dir: Path):
    with pytest.raises(FileNotFoundError) as info:
        load_settings("nope", conf_dir=conf_dir)

    message = str(info.value)
    assert "'nope'" in message
    assert "staging" in message
    assert "'base'" not in message


def test_unknown_profile_in_shipped_conf():
    with pytest.raises(FileNotFoundError, match=r"embedded.*production"):
        load_settings("does-not-exist")


def test_invalid_value_is_a_validation_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLEETLENS_KAFKA__SECURITY_PROTOCOL", "CARRIER_PIGEON")

    with pytest.raises(ValidationError, match="security_protocol"):
        load_settings("embedded")


def test_unknown_yaml_key_is_rejected(conf_dir: Path):
    (conf_dir / "typo.yaml").write_text("collector: {prot: 1}\n")

    with pytest.raises(ValidationError, match="prot"):
        load_settings("typo", conf_dir=conf_dir)


def test_settings_are_frozen():
    settings = load_settings("embedded")

    with pytest.raises(ValidationError):
        settings.collector.port = 1  # type: ignore[misc]


def test_relative_lake_root_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)

    settings = load_settings("embedded", lake={"root": "data/lake"}, runtime_dir="run")

    assert Path(settings.lake.root).is_absolute()
    assert Path(settings.lake.root) == tmp_path.resolve() / "data" / "lake"
    assert settings.runtime_dir == tmp_path.resolve() / "run"


def test_relative_lake_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLEETLENS_LAKE__ROOT", "./lake")

    assert load_settings("embedded").lake.root == str(tmp_path.resolve() / "lake")


def test_home_in_lake_root_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", str(tmp_path))

    settings = load_settings("embedded")

    assert settings.lake.root == str(tmp_path.resolve() / ".fleetlens" / "lake")
    assert "~" not in str(settings.runtime_dir)


def test_object_store_root_is_kept():
    settings = load_settings("embedded", lake={"root": "s3://bucket/prefix/"})

    assert settings.lake.root == "s3://bucket/prefix"


def test_production_profile_loads(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLEETLENS_KAFKA__SASL_PASSWORD", "kafka-secret")
    monkeypatch.setenv("FLEETLENS_LAKE__STORAGE_OPTIONS__AWS_SECRET_ACCESS_KEY", "s3-secret")
    monkeypatch.setenv("FLEETLENS_COLLECTOR__TOKENS__ACME", "prod-acme")

    settings = load_settings("production")

    assert settings.profile == "production"
    assert settings.broker.mode == "external"
    assert settings.log.format == "json"
    assert settings.lake.root == "s3://fleetlens-lake/prod"
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.topics.metrics.replication_factor == 3
    assert settings.kafka.first_host_port == ("kafka-1", 9092)
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "kafka-secret"
    assert settings.collector.host == "0.0.0.0"
    # Production has no development tokens: only what the environment gives.
    assert {k: v.get_secret_value() for k, v in settings.collector.tokens.items()} == {
        "acme": "prod-acme"
    }
    options = {k: v.get_secret_value() for k, v in settings.lake.storage_options.items()}
    assert options == {"AWS_REGION": "us-east-1", "AWS_SECRET_ACCESS_KEY": "s3-secret"}


def test_env_overrides_yaml_storage_option(monkeypatch: pytest.MonkeyPatch):
    # The variable's key arrives lower-cased; it must replace the YAML's AWS_REGION, not
    # sit next to it.
    monkeypatch.setenv("FLEETLENS_LAKE__STORAGE_OPTIONS__AWS_REGION", "eu-west-1")

    settings = load_settings("production")

    options = {k: v.get_secret_value() for k, v in settings.lake.storage_options.items()}
    assert options == {"AWS_REGION": "eu-west-1"}


def test_init_overrides_env_storage_option(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLEETLENS_LAKE__STORAGE_OPTIONS__AWS_REGION", "from-env")

    settings = load_settings("production", lake={"storage_options": {"aws_region": "from-init"}})

    options = {k: v.get_secret_value() for k, v in settings.lake.storage_options.items()}
    assert options == {"AWS_REGION": "from-init"}
    assert settings.lake.root == "s3://fleetlens-lake/prod"


def _walk(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _walk(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _walk(item)]
    return [value]


def test_redacted_masks_every_secret(monkeypatch: pytest.MonkeyPatch):
    secrets = {
        "FLEETLENS_KAFKA__SASL_PASSWORD": "kafka-pw-123",
        "FLEETLENS_LAKE__STORAGE_OPTIONS__AWS_SECRET_ACCESS_KEY": "aws-key-456",
        "FLEETLENS_COLLECTOR__TOKENS__GLOBEX": "tok-789",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)

    settings = load_settings("embedded")
    redacted = settings.redacted()
    dumped = json.dumps(redacted)

    for value in [*secrets.values(), "dev-token-acme", "dev-token-initech"]:
        assert value not in dumped
    assert redacted["kafka"]["sasl_password"] == "**********"
    assert redacted["collector"]["tokens"]["globex"] == "**********"
    assert redacted["lake"]["storage_options"]["AWS_SECRET_ACCESS_KEY"] == "**********"
    # Everything else is plain JSON data, unmasked.
    assert redacted["kafka"]["bootstrap_servers"] == "127.0.0.1:19092"
    assert redacted["collector"]["port"] == 8088
    assert not any(isinstance(leaf, SecretStr) for leaf in _walk(redacted))
    # The settings object itself still holds the real values.
    assert settings.collector.tokens["globex"].get_secret_value() == "tok-789"


def test_repr_does_not_leak_secrets():
    settings = load_settings("embedded")

    assert "dev-token-acme" not in repr(settings)
    assert "dev-token-acme" not in str(settings.collector)


def test_shipped_conf_dir_is_the_repository_conf():
    assert (CONF_DIR / "base.yaml").read_text() == (REPO / "conf" / "base.yaml").read_text()
    assert isinstance(load_settings("base"), Settings)


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLENS_")}
    env["HOME"] = str(tmp_path / "home")
    return env | extra


def test_cli_config_show_json_from_any_directory(tmp_path: Path):
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    env = _cli_env(
        tmp_path,
        FLEETLENS_KAFKA__SASL_PASSWORD="cli-kafka-secret",
        FLEETLENS_COLLECTOR__TOKENS__ACME="cli-acme-token",
        FLEETLENS_LAKE__ROOT="rel-lake",
    )

    result = subprocess.run(
        [str(FLEETLENS_BIN), "config", "show", "--json"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "cli-kafka-secret" not in result.stdout
    assert "cli-acme-token" not in result.stdout
    assert "dev-token-globex" not in result.stdout
    shown = json.loads(result.stdout)
    assert shown["profile"] == "embedded"
    assert shown["kafka"]["topics"]["metrics"]["name"] == "fleet.metrics.v1"  # base.yaml found
    assert shown["kafka"]["consumer"]["max_poll_interval_ms"] == 5_000  # embedded.yaml found
    assert shown["kafka"]["sasl_password"] == "**********"
    assert shown["collector"]["tokens"] == {
        "acme": "**********",
        "globex": "**********",
        "initech": "**********",
    }
    # A relative root is resolved against the working directory of the command.
    assert shown["lake"]["root"] == str(elsewhere.resolve() / "rel-lake")


def test_cli_config_show_production_profile(tmp_path: Path):
    env = _cli_env(tmp_path, FLEETLENS_COLLECTOR__TOKENS__ACME="prod-token")

    result = subprocess.run(
        [str(FLEETLENS_BIN), "--profile", "production", "config", "show", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "prod-token" not in result.stdout
    shown = json.loads(result.stdout)
    assert shown["profile"] == "production"
    assert shown["lake"]["root"] == "s3://fleetlens-lake/prod"
    assert shown["collector"]["tokens"] == {"acme": "**********"}


def test_cli_unknown_profile_fails(tmp_path: Path):
    result = subprocess.run(
        [str(FLEETLENS_BIN), "--profile", "nope", "config", "show", "--json"],
        cwd=tmp_path,
        env=_cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode != 0
    assert "nope" in result.stdout + result.stderr
