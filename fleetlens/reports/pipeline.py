"""The pipeline's own health, as frames for the ``04_pipeline_health`` notebook: consumer
lag and dead letters from Kafka, late samples, duplicated payloads, quarantined rows and
quality results from the lake."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime

import polars as pl
import pyarrow.fs as pafs
from kafka import KafkaAdminClient

from fleetlens.config import Settings
from fleetlens.kafka.clients import all_partitions, log_end_offsets, make_admin, make_consumer
from fleetlens.kafka.dlq import read_dlq_headers
from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import QUARANTINE, SPEED_LATE_1M

__all__ = [
    "consumer_lag",
    "dead_letters",
    "duplicate_payloads",
    "late_samples",
    "quality_results",
    "quarantined",
]


def consumer_lag(
    settings: Settings, groups: tuple[str, ...] | None = None, *, timeout_ms: int = 5000
) -> pl.DataFrame:
    """Per consumer group and partition of the metrics topic: the committed offset, the log
    end and the lag (``end - committed``; the whole partition if nothing is committed).

    The speed layer keeps its exact offsets in its checkpoints and commits them to Kafka
    after each checkpoint for this purpose; the archiver commits after each fsync.

    Raises:
        kafka.errors.KafkaError: The brokers cannot be reached within ``timeout_ms``.
    """
    topic = settings.kafka.topics.metrics.name
    groups = groups or (settings.archive.group_id, settings.speed.group_id)
    admin: KafkaAdminClient = make_admin(settings.kafka, bootstrap_timeout_ms=timeout_ms)
    consumer = make_consumer(settings.kafka, group_id=None, bootstrap_timeout_ms=timeout_ms)
    try:
        partitions = all_partitions(consumer, topic)
        ends = log_end_offsets(consumer, partitions)
        rows = []
        for group in groups:
            # One group a request: brokers before OffsetFetch v8 take no more.
            committed = admin.list_group_offsets({group: partitions}).get(group, {})
            for tp in partitions:
                found = committed.get(tp)
                offset = found.offset if found is not None and found.offset >= 0 else None
                rows.append(
                    {
                        "group": group,
                        "topic": topic,
                        "partition": tp.partition,
                        "committed": offset,
                        "end": ends[tp],
                        "lag": ends[tp] - (offset or 0),
                    }
                )
    finally:
        consumer.close()
        admin.close()
    schema = {
        "group": pl.String,
        "topic": pl.String,
        "partition": pl.Int64,
        "committed": pl.Int64,
        "end": pl.Int64,
        "lag": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema)


def dead_letters(
    settings: Settings, *, limit: int = 100_000, timeout_ms: int = 5000
) -> pl.DataFrame:
    """Records in the dead-letter topic (up to ``limit``), counted by stage and reason.

    Raises:
        kafka.errors.KafkaError: The brokers cannot be reached within ``timeout_ms``.
    """
    topic = settings.kafka.topics.dlq.name
    consumer = make_consumer(settings.kafka, group_id=None, bootstrap_timeout_ms=timeout_ms)
    counts: Counter[tuple[str, str]] = Counter()
    try:
        partitions = all_partitions(consumer, topic)
        ends = log_end_offsets(consumer, partitions)
        consumer.seek_to_beginning(*partitions)
        seen = 0
        while seen < limit and any(consumer.position(tp) < ends[tp] for tp in partitions):
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    headers = read_dlq_headers(list(record.headers or []))
                    # The reason's first clause: the details (field values) vary per record.
                    reason = headers.get("reason", "?").split(":")[0]
                    counts[(headers.get("stage", "?"), reason)] += 1
                    seen += 1
    finally:
        consumer.close()
    return pl.DataFrame(
        [{"stage": s, "reason": r, "records": n} for (s, r), n in counts.most_common()],
        schema={"stage": pl.String, "reason": pl.String, "records": pl.Int64},
    )


def late_samples(lake: Lake, *, since: datetime) -> pl.DataFrame:
    """Samples the speed layer dropped as late, per hour since ``since``."""
    if not delta.table_exists(lake, SPEED_LATE_1M):
        return pl.DataFrame(schema={"hour": pl.Datetime("us", "UTC"), "late_dropped": pl.Int64})
    return (
        pl.scan_delta(delta.open_table(lake, SPEED_LATE_1M))
        .filter(pl.col("window_start") >= since)
        .group_by(pl.col("window_start").dt.truncate("1h").alias("hour"))
        .agg(pl.col("late_dropped").sum())
        .sort("hour")
        .collect()
    )


def duplicate_payloads(lake: Lake) -> pl.DataFrame:
    """Per landing hour: payloads, and how many repeat an earlier ``event_id`` (agents'
    retries; the compaction keeps one of each)."""
    base = lake.path(Lake.LANDING_METRICS)
    empty = pl.DataFrame(
        schema={"hour": pl.Datetime("ms", "UTC"), "payloads": pl.UInt32, "duplicates": pl.Int64}
    )
    files = [lake.uri_of(path) for path in _listing(lake, base, ".parquet")]
    if not files:
        return empty
    return (
        pl.scan_parquet(files, hive_partitioning=False, storage_options=lake.polars_options)
        .select("event_id", "ts")
        .group_by(pl.col("ts").dt.truncate("1h").alias("hour"))
        .agg(payloads=pl.len(), duplicates=pl.len() - pl.col("event_id").n_unique())
        .sort("hour")
        .collect()
    )


def quarantined(lake: Lake) -> pl.DataFrame:
    """Rows the compaction quarantined, per hour of arrival and reason."""
    if not delta.table_exists(lake, QUARANTINE):
        return pl.DataFrame(
            schema={"hour": pl.Datetime("us", "UTC"), "reason": pl.String, "rows": pl.UInt32}
        )
    return (
        pl.scan_delta(delta.open_table(lake, QUARANTINE))
        .group_by(pl.col("ingest_ts").dt.truncate("1h").alias("hour"), "reason")
        .agg(rows=pl.len())
        .sort("hour", "reason")
        .collect()
    )


def _listing(lake: Lake, folder: str, suffix: str) -> list[str]:
    """The files below ``folder`` ending in ``suffix``, sorted; none if it does not exist."""
    selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    found = lake.fs.get_file_info(selector)
    return sorted(f.path for f in found if f.type == pafs.FileType.File and f.path.endswith(suffix))


def quality_results(lake: Lake) -> pl.DataFrame:
    """The quality job's kept reports: ``name, start, end, success, summary``."""
    rows = []
    for path in _listing(lake, lake.path("_quality"), ".json"):
        with lake.fs.open_input_stream(path) as handle:
            report = json.loads(handle.read())
        rows.append({key: report[key] for key in ("name", "start", "end", "success", "summary")})
    return pl.DataFrame(
        rows,
        schema={
            "name": pl.String,
            "start": pl.String,
            "end": pl.String,
            "success": pl.Boolean,
            "summary": pl.String,
        },
    ).with_columns(pl.col("start", "end").str.to_datetime(time_zone="UTC"))
