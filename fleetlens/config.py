"""The one typed settings object, loaded once by the CLI and passed down.

Sources, highest priority first: keyword arguments, ``FLEETLENS_*`` environment variables
(``__`` separates nesting levels, e.g. ``FLEETLENS_LAKE__ROOT``), ``conf/<profile>.yaml``,
``conf/base.yaml``. The profile is ``embedded`` unless ``FLEETLENS_PROFILE`` or the CLI's
``--profile`` says otherwise.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

__all__ = [
    "CONF_DIR",
    "DEFAULT_PROFILE",
    "AlertSettings",
    "ArchiveSettings",
    "BrokerSettings",
    "CollectorSettings",
    "ContractSettings",
    "KafkaSettings",
    "LakeSettings",
    "MetricSpec",
    "ServingSettings",
    "Settings",
    "SimulatorSettings",
    "SmtpSettings",
    "SpeedSettings",
    "TopicSpec",
    "load_settings",
]

#: The shipped configuration; ``fleetlens/conf`` links to the repository's top-level ``conf/``.
CONF_DIR = Path(__file__).resolve().parent / "conf"
DEFAULT_PROFILE = "embedded"

_yaml_files: ContextVar[tuple[Path, ...]] = ContextVar("_yaml_files", default=())


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TopicSpec(_Section):
    name: str
    partitions: int = Field(ge=1)
    replication_factor: int = Field(ge=1)


class TopicsSettings(_Section):
    metrics: TopicSpec
    dlq: TopicSpec
    agg1m: TopicSpec
    alerts: TopicSpec


class ProducerSettings(_Section):
    linger_ms: int = 5
    batch_size: int = 262_144
    max_request_size: int = 4_194_304
    request_timeout_ms: int = 5_000
    delivery_timeout_ms: int = 10_000
    max_block_ms: int = 3_000


class ConsumerSettings(_Section):
    max_poll_records: int = 5_000
    fetch_max_bytes: int = 52_428_800
    max_partition_fetch_bytes: int = 10_485_760
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 10_000
    #: How long the broker may hold a fetch that has no new data (Kafka's default: 500 ms);
    #: what a record waits at most at each hop when traffic is light.
    fetch_max_wait_ms: int = Field(default=500, ge=0)


class KafkaSettings(_Section):
    bootstrap_servers: str
    client_id: str = "fleetlens"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    topics: TopicsSettings
    producer: ProducerSettings = ProducerSettings()
    consumer: ConsumerSettings = ConsumerSettings()

    @property
    def first_host_port(self) -> tuple[str, int]:
        """Host and port of the first bootstrap server (where the embedded broker listens)."""
        host, _, port = self.bootstrap_servers.split(",")[0].strip().rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


class BrokerSettings(_Section):
    mode: Literal["embedded", "external"] = "embedded"
    startup_timeout_s: float = 30.0


class LakeSettings(_Section):
    root: str
    storage_options: dict[str, SecretStr] = {}

    @field_validator("root")
    @classmethod
    def _absolute_local_root(cls, value: str) -> str:
        # A relative root would change meaning with the working directory.
        if "://" in value:
            return value.rstrip("/")
        return str(Path(value).expanduser().resolve())


class MetricSpec(_Section):
    min: float | None = None
    max: float | None = None
    unit: str = ""


class ContractSettings(_Section):
    max_payload_bytes: int = 16_384
    max_metrics: int = 64
    max_tags: int = 16
    max_tag_value_length: int = 128
    tag_keys: tuple[str, ...]
    max_future_skew_s: float = 300
    max_age_s: float = 7 * 86_400
    metrics: dict[str, MetricSpec]


class CollectorSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 8088
    max_body_bytes: int = 4_194_304
    max_batch: int = 1_000
    produce_timeout_s: float = 10.0
    retry_after_s: int = 5
    tokens: dict[str, SecretStr] = {}


class ArchiveSettings(_Section):
    group_id: str = "fleetlens-archiver"
    flush_max_rows: int = Field(default=200_000, ge=1)
    flush_interval_s: float = Field(default=30.0, gt=0)
    poll_timeout_ms: int = 500


class SpeedSettings(_Section):
    """The speed layer: event-time windows over ``fleet.metrics.v1``."""

    group_id: str = "fleetlens-speed"
    window_s: int = Field(default=60, ge=1)
    allowed_lateness_s: int = Field(default=30, ge=0)
    #: How long an event id is remembered; at least lateness + window (the default).
    dedup_ttl_s: int | None = None
    #: Cadence of a commit: sinks flushed (Delta ``speed_1m``, Kafka), then the checkpoint.
    checkpoint_interval_s: float = Field(default=10.0, gt=0)
    #: Commit early once the closed windows waiting for the sinks hold this many events
    #: (about as many (server, metric) aggregates at a 10 s cadence); bounds a catch-up's
    #: memory. A live fleet of 10,000 servers closes 60,000 aggregates a minute.
    max_pending_windows: int = Field(default=100_000, ge=1)
    #: A partition with no record for this long, and caught up, stops holding windows open.
    idle_partition_s: float = Field(default=30.0, gt=0)
    sketch_k: int = Field(default=200, ge=8)
    #: Rows of ``speed_1m`` older than this are deleted (the batch layer has them by then).
    retention_h: float = Field(default=48.0, gt=0)
    #: Cadence of retention and maintenance (compaction, checkpoint, log clean-up, vacuum)
    #: of ``speed_1m`` and ``speed_late_1m``; the first runs at the first commit.
    housekeeping_interval_s: float = Field(default=3600.0, gt=0)
    #: Static scale-out: this process handles the partitions p with p % instances == instance.
    instance: int = Field(default=0, ge=0)
    instances: int = Field(default=1, ge=1)
    metrics_port: int | None = None
    poll_timeout_ms: int = 200

    @property
    def effective_dedup_ttl_s(self) -> int:
        """The dedup memory's TTL: never shorter than a window plus the allowed lateness."""
        floor = self.window_s + self.allowed_lateness_s
        return max(self.dedup_ttl_s or 0, floor + 60)


class SmtpSettings(_Section):
    """The mail server of ``email`` channels."""

    host: str = "127.0.0.1"
    port: int = 25
    sender: str = "fleetlens@localhost"
    username: str | None = None
    password: SecretStr | None = None
    #: ``starttls``: upgrade a plain connection; ``ssl``: TLS from the start (port 465).
    security: Literal["none", "starttls", "ssl"] = "none"
    timeout_s: float = Field(default=10.0, gt=0)


class AlertSettings(_Section):
    """The alert engine, run by the speed layer on the samples it consumes, and the
    notifier that delivers its notifications."""

    enabled: bool = True
    #: The rules file; relative paths are taken from the shipped ``conf/``.
    rules_path: Path = Path("alerts.yaml")
    #: Cadence of the wall-clock work: absences, repeats, escalations, rules-file changes.
    tick_interval_s: float = Field(default=1.0, gt=0)
    #: How often the speed layer looks for new silences and acknowledgements (API-made).
    control_check_s: float = Field(default=2.0, gt=0)
    notifier_group_id: str = "fleetlens-notifier"
    #: How long a notification is retried (exponential backoff) before it is reported failed.
    retry_for_s: float = Field(default=300.0, ge=0)
    smtp: SmtpSettings = SmtpSettings()

    @property
    def rules_file(self) -> Path:
        """The rules file's absolute path."""
        return self.rules_path if self.rules_path.is_absolute() else CONF_DIR / self.rules_path


class SimulatorSettings(_Section):
    collector_url: str = "http://127.0.0.1:8088"
    tenants: tuple[str, ...]
    regions: tuple[str, ...]
    envs: tuple[str, ...]
    services: tuple[str, ...]
    clusters_per_service: int = 3
    batch_size: int = 200
    concurrency: int = 8


#: A JVM memory size as Spark spells it: ``512m``, ``2g``.
_MEMORY = r"^\d+[kmgt]$"


class SparkClusterSettings(_Section):
    """The Spark standalone cluster ``fleetlens spark cluster start`` runs on this machine:
    a master and workers from the installed pyspark, all on loopback."""

    workers: int = Field(default=2, ge=1)
    #: Cores and memory each worker offers its executors (one executor per worker and app).
    worker_cores: int = Field(default=1, ge=1)
    worker_memory: str = Field(default="2g", pattern=_MEMORY)
    #: Heap of the master and worker daemons themselves (``SPARK_DAEMON_MEMORY``).
    daemon_memory: str = Field(default="512m", pattern=_MEMORY)
    master_port: int = Field(default=7077, ge=1, le=65_535)
    #: The master's web UI, which also serves the cluster's state as JSON (``/json/``).
    webui_port: int = Field(default=8080, ge=1, le=65_535)
    #: How long ``start`` waits for every worker to register ALIVE.
    startup_timeout_s: float = Field(default=90.0, gt=0)
    #: How long ``stop`` waits after SIGTERM before SIGKILL.
    stop_grace_s: float = Field(default=10.0, ge=0)


class SparkSettings(_Section):
    """The Spark session of the batch jobs (``spark.master`` is any Spark master URL)."""

    master: str = "local[*]"
    app_name: str = "fleetlens"
    driver_memory: str = "4g"
    shuffle_partitions: int = Field(default=8, ge=1)
    #: How tables are committed: ``native`` needs delta-spark's classes on the classpath,
    #: ``delta-rs`` has Spark write the Parquet files and delta-rs commit them, ``auto``
    #: picks ``native`` when the classes are there.
    delta_mode: Literal["auto", "native", "delta-rs"] = "auto"
    #: Extra Spark configuration, e.g. ``spark.executor.memory`` for a cluster.
    conf: dict[str, str] = {}
    cluster: SparkClusterSettings = SparkClusterSettings()


class RetentionSettings(_Section):
    """How long each table keeps its partitions, in days (``None``: kept)."""

    raw_points_days: int | None = Field(default=7, ge=1)
    rollup_1m_days: int | None = Field(default=30, ge=1)
    rollup_1h_days: int | None = Field(default=365, ge=1)
    rollup_1d_days: int | None = None
    quarantine_days: int | None = Field(default=30, ge=1)
    #: Vacuum keeps removed files this long (at least the tables' 24 h minimum).
    vacuum_hours: int = Field(default=168, ge=24)


class BatchSettings(_Section):
    """The batch layer: compaction, rollups, baseline, quality and retention."""

    sketch_k: int = Field(default=200, ge=8)
    baseline_weeks: int = Field(default=4, ge=1)
    #: Backfills are cut into chunks of this many hours, each committed on its own.
    backfill_chunk_hours: int = Field(default=24, ge=1)
    #: How far back a scheduled run looks for late landing files and the partitions they
    #: changed (the contract accepts events up to ``contract.max_age_s`` old).
    late_lookback_hours: int = Field(default=168, ge=0)
    #: The quality job fails an interval whose newest point is older than this at its end.
    freshness_minutes: int = Field(default=15, ge=1)
    retention: RetentionSettings = RetentionSettings()


class ServingSettings(_Section):
    """The query engine, the HTTP API's queries and the live feed."""

    #: Buckets per series ``step="auto"`` aims at.
    auto_points: int = Field(default=1000, ge=10)
    #: The most buckets a series may have; a finer step is refused with one that works.
    max_points_per_series: int = Field(default=50_000, ge=100)
    #: Answers kept in memory (those wholly before the batch watermark: they only change
    #: when the batch layer recomputes a partition).
    cache_entries: int = Field(default=256, ge=0)
    #: Memory for the batch rows of a query's range from its first whole hour (day, for the
    #: hourly and daily tables) to the watermark, kept per table version: a refresh of the
    #: same range scans only its first chunk and the speed layer's minutes. 0: off.
    segment_cache_mb: int = Field(default=256, ge=0)
    #: Events a slow ``/api/v1/live`` subscriber may fall behind before it is dropped.
    live_queue: int = Field(default=10_000, ge=10)
    #: ``/api/v1/live`` starts this far back in the topics (so a new page has a window).
    live_replay_s: int = Field(default=120, ge=0)


class ReportSettings(_Section):
    """The capacity-planning report (``fleetlens report capacity``)."""

    #: Utilisation limits per metric, in the metric's unit: the report dates their crossing.
    thresholds: dict[str, float] = {"disk_pct": 85.0, "cpu_pct": 70.0, "mem_pct": 90.0}
    #: The daily statistic forecast per group: a quantile of the day's samples.
    quantile: str = Field(default="p95", pattern=r"^p\d{1,2}(\.\d+)?$")
    #: The seasonality of the candidate models (7: weekly, on daily data).
    season_length: int = Field(default=7, ge=1)
    #: Prediction interval of the forecast band, in percent.
    band_level: int = Field(default=80, ge=50, le=99)
    #: Backtest windows (the last ones of the history) models are chosen on.
    backtest_windows: int = Field(default=2, ge=1)
    #: Servers listed as most at risk.
    servers_at_risk: int = Field(default=10, ge=0)
    #: Where reports go when ``--out`` is not given: ``<out_dir>/capacity/<end date>``.
    out_dir: Path = Path("~/.fleetlens/reports")

    @field_validator("out_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser().resolve()


class LogSettings(_Section):
    level: str = "INFO"
    format: Literal["console", "json"] = "console"


class Settings(BaseSettings):
    """Everything FleetLens can be configured with; see ``conf/base.yaml`` for the defaults."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="FLEETLENS_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
    )

    profile: str = DEFAULT_PROFILE
    runtime_dir: Path
    log: LogSettings = LogSettings()
    lake: LakeSettings
    kafka: KafkaSettings
    broker: BrokerSettings = BrokerSettings()
    contract: ContractSettings
    collector: CollectorSettings = CollectorSettings()
    archive: ArchiveSettings = ArchiveSettings()
    speed: SpeedSettings = SpeedSettings()
    alerts: AlertSettings = AlertSettings()
    spark: SparkSettings = SparkSettings()
    batch: BatchSettings = BatchSettings()
    serving: ServingSettings = ServingSettings()
    report: ReportSettings = ReportSettings()
    simulator: SimulatorSettings

    @field_validator("runtime_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Later YAML files override earlier ones, so they come first in priority order.
        yaml_sources = [
            YamlConfigSettingsSource(settings_cls, yaml_file=path)
            for path in reversed(_yaml_files.get())
        ]
        sources = (init_settings, env_settings, *yaml_sources)
        return tuple(_UpperCaseStorageOptions(source) for source in sources)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as JSON-ready data, secrets masked."""
        return self.model_dump(mode="json")


class _UpperCaseStorageOptions(PydanticBaseSettingsSource):
    """A source whose ``lake.storage_options`` keys are upper case (``AWS_REGION``).

    Environment variables arrive lower-cased (``FLEETLENS_LAKE__STORAGE_OPTIONS__AWS_REGION``
    gives ``aws_region``) while YAML spells the keys ``AWS_REGION``: with one spelling per
    source, a higher-priority source overrides a key instead of adding a second one.
    """

    def __init__(self, source: PydanticBaseSettingsSource) -> None:
        super().__init__(source.settings_cls)
        self._source = source

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._source.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        data = self._source()
        lake = data.get("lake")
        if isinstance(lake, dict) and isinstance(lake.get("storage_options"), dict):
            options = {str(key).upper(): value for key, value in lake["storage_options"].items()}
            data = {**data, "lake": {**lake, "storage_options": options}}
        return data


def load_settings(
    profile: str | None = None, *, conf_dir: Path | None = None, **overrides: Any
) -> Settings:
    """Load the settings for ``profile`` (default: ``$FLEETLENS_PROFILE`` or ``embedded``).

    Args:
        profile: Name of ``conf/<profile>.yaml`` to layer over ``conf/base.yaml``.
        conf_dir: Folder holding the YAML files (default: the shipped ``conf/``).
        **overrides: Top-level fields that win over every other source (tests use this).

    Raises:
        FileNotFoundError: the profile has no YAML file.
    """
    # The profile selects the files, so it is read before the settings object exists.
    profile = profile or os.environ.get("FLEETLENS_PROFILE") or DEFAULT_PROFILE
    conf_dir = conf_dir or CONF_DIR
    files = [conf_dir / "base.yaml"]
    profile_file = conf_dir / f"{profile}.yaml"
    if profile != "base":
        if not profile_file.is_file():
            known = sorted(p.stem for p in conf_dir.glob("*.yaml") if p.stem != "base")
            raise FileNotFoundError(f"no profile {profile!r} in {conf_dir} (known: {known})")
        files.append(profile_file)
    token = _yaml_files.set(tuple(files))
    try:
        return Settings(profile=profile, **overrides)
    finally:
        _yaml_files.reset(token)
