"""The pipeline with its lake on S3 (moto's S3 server, a real process) and the embedded
broker: ``fleetlens archive`` and ``fleetlens speed run`` as child processes, the query
engine over what the speed layer wrote, and the batch layer's reach (Spark)."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from fleetlens.config import Settings, load_settings
from fleetlens.contract import Validator, encode_event
from fleetlens.demo import ServiceProcess
from fleetlens.kafka.clients import all_partitions, log_end_offsets, make_consumer, make_producer
from fleetlens.lake.paths import Lake
from fleetlens.lake.storage import spark_hadoop_conf
from fleetlens.serving.query import QueryEngine
from fleetlens.simulator.fleet import Fleet, FleetSpec
from fleetlens.simulator.live import build_payloads
from fleetlens.simulator.stream import simulated_stream
from speed_layer.app import SpeedLayer

pytestmark = pytest.mark.slow

MIN_MS = 60_000
LATENESS_MS = 30_000
KEY = ["server_id", "metric", "window_start"]
S3A = "org.apache.hadoop.fs.s3a.S3AFileSystem"


def object_keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key of ``bucket`` below ``prefix``, listed by boto3 (not by our code)."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def run_to_idle(name: str, args: list[str], env: dict[str, str], tmp_path: Path) -> None:
    service = ServiceProcess(name, args, log_dir=tmp_path / "logs", env=env)
    assert service.process.wait(180) == 0, service.log_path.read_text()[-3000:]


# -- archiver -----------------------------------------------------------------------------


def produce_events(settings: Settings, *, servers: int, slots: int, seed: int) -> list[str]:
    """Valid events of ``slots`` 10-second slots, plus two records that are not events;
    returns the event ids."""
    fleet = Fleet(FleetSpec(servers=servers, seed=seed, silences_per_day=0))
    validator = Validator(settings.contract)
    now = int(time.time())
    producer = make_producer(settings.kafka)
    topic = settings.kafka.topics.metrics.name
    ids: list[str] = []
    for slot in range(now - 10 * slots, now, 10):
        for item in build_payloads(fleet, slot, 10):
            event = validator.convert(item, now_ms=now * 1000)
            producer.send(topic, key=event.server_id.encode(), value=encode_event(event))
            ids.append(event.event_id)
    for raw in (b"not json", b"[]"):
        producer.send(topic, value=raw)
    producer.flush()
    producer.close()
    return ids


@pytest.mark.broker
def test_archiver_on_s3_lands_every_record_once_and_resumes_from_its_checkpoint(
    s3_settings: Settings, s3_env: dict[str, str], s3: Any, bucket: str, tmp_path: Path
) -> None:
    first = produce_events(s3_settings, servers=150, slots=6, seed=5)
    run_to_idle("archive-1", ["archive", "--exit-when-idle", "2"], s3_env, tmp_path)
    # The second run starts from the checkpoint the first left on S3, not from Kafka's start.
    second = produce_events(s3_settings, servers=150, slots=4, seed=6)
    run_to_idle("archive-2", ["archive", "--exit-when-idle", "2"], s3_env, tmp_path)

    landing = object_keys(s3, bucket, "fleet/landing/metrics/")
    assert landing and all(
        key.endswith(".parquet") and "/date=" in key and "/hour=" in key for key in landing
    )
    tables = [
        pq.read_table(pa.BufferReader(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
        for key in landing
    ]
    rows = pl.concat([pl.from_arrow(t) for t in tables])  # type: ignore[misc]
    assert isinstance(rows, pl.DataFrame)
    assert sorted(rows["event_id"]) == sorted(first + second)
    assert rows.select("kafka_partition", "kafka_offset").is_duplicated().sum() == 0
    assert not [k for k in object_keys(s3, bucket, "fleet/_staging/") if k.endswith(".parquet")]
    # The checkpoint holds the offsets after the last record of every partition.
    group = s3_settings.archive.group_id
    saved = s3.get_object(Bucket=bucket, Key=f"fleet/_state/archiver/{group}.json")["Body"]
    offsets = msgspec.json.decode(saved.read())["offsets"]
    consumer = make_consumer(s3_settings.kafka, group_id=None)
    partitions = all_partitions(consumer, s3_settings.kafka.topics.metrics.name)
    ends = log_end_offsets(consumer, partitions)
    consumer.close()
    assert {int(p): o for p, o in offsets.items()} == {tp.partition: ends[tp] for tp in ends}


# -- speed layer and query engine ---------------------------------------------------------


def produce_stream(
    settings: Settings, fleet: Fleet, start_s: int, end_s: int
) -> dict[int, list[dict[str, Any]]]:
    """The fleet's payloads of ``[start_s, end_s)`` on the metrics topic (no faults);
    returns them per partition, in log order."""
    producer = make_producer(settings.kafka)
    topic = settings.kafka.topics.metrics.name
    sent = []
    for arrival in simulated_stream(fleet, start_s=start_s, end_s=end_s):
        payload = arrival.payload
        value = msgspec.json.encode(payload)
        sent.append((payload, producer.send(topic, key=payload["server_id"].encode(), value=value)))
    producer.flush()
    producer.close()
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for payload, future in sent:
        out[future.get(timeout=10).partition].append(payload)
    return out


def closed_windows(per_partition: dict[int, list[dict[str, Any]]]) -> pl.DataFrame:
    """count, sum, min and max per server, metric and minute, of the windows each partition's
    watermark (its latest event time less the allowed lateness) has closed."""
    rows = []
    for events in per_partition.values():
        watermark = max(e["ts"] for e in events) - LATENESS_MS
        rows += [
            {"server_id": e["server_id"], "metric": m, "window_start": start, "value": v}
            for e in events
            for start in [e["ts"] - e["ts"] % MIN_MS]
            if start + MIN_MS <= watermark
            for m, v in e["metrics"].items()
        ]
    return (
        pl.DataFrame(rows)
        .group_by(KEY)
        .agg(
            count=pl.len().cast(pl.Int64),
            sum=pl.col("value").sum(),
            min=pl.col("value").min(),
            max=pl.col("value").max(),
        )
        .with_columns(pl.col("window_start").cast(pl.Datetime("ms", "UTC")))
        .sort(KEY)
    )


@pytest.mark.broker
def test_speed_layer_on_s3_resumes_from_its_checkpoints_and_the_engine_answers_from_it(
    s3_settings: Settings,
    s3_env: dict[str, str],
    s3: Any,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = s3_env | {
        "FLEETLENS_SPEED__CHECKPOINT_INTERVAL_S": "0.5",
        "FLEETLENS_SPEED__GROUP_ID": f"speed-{s3_env['FLEETLENS_ARCHIVE__GROUP_ID']}",
    }
    fleet = Fleet(FleetSpec(servers=40, seed=21))
    end = int(time.time()) // 60 * 60 - 60
    start = end - 8 * 60
    # Two runs, the second (in this process, for its counters) resuming from the first's
    # checkpoints on S3; the first stops mid-minute, so that windows span the two runs.
    events = produce_stream(s3_settings, fleet, start, start + 270)
    run = ["speed", "run", "--exit-when-idle", "2"]
    run_to_idle("speed-1", run, env, tmp_path)
    second = produce_stream(s3_settings, fleet, start + 270, end)
    for partition, later in second.items():
        events[partition] += later
    # One sample of the first minute again, long after its window closed: dropped as late.
    late = dict(events[0][0], event_id="late-sample-0001")
    producer = make_producer(s3_settings.kafka)
    topic = s3_settings.kafka.topics.metrics.name
    producer.send(topic, key=late["server_id"].encode(), value=msgspec.json.encode(late))
    producer.flush()
    producer.close()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    stats = SpeedLayer(load_settings()).run(exit_when_idle_s=2)
    # Only the records after the checkpoints were read again.
    assert stats.records == sum(len(later) for later in second.values()) + 1
    assert stats.late_dropped == 1

    expected = closed_windows(events)
    lake = Lake(s3_settings.lake)
    table = DeltaTable(lake.table_uri("speed_1m"), storage_options=lake.delta_options)
    got = (
        pl.from_arrow(table.to_pyarrow_table())
        .with_columns(pl.col("window_start").cast(pl.Datetime("ms", "UTC")))
        .select(expected.columns)
        .sort(KEY)
    )
    assert isinstance(got, pl.DataFrame)
    assert got.height == expected.height > 0
    assert got.select(KEY, "count", "min", "max").equals(
        expected.select(KEY, "count", "min", "max")
    )
    np.testing.assert_allclose(got["sum"].to_numpy(), expected["sum"].to_numpy(), rtol=1e-12)
    checkpoints = object_keys(s3, bucket, f"fleet/_state/speed/{env['FLEETLENS_SPEED__GROUP_ID']}/")
    assert len(checkpoints) == s3_settings.kafka.topics.metrics.partitions

    # The query engine, on the same settings, answers from speed_1m on S3.
    first = datetime.fromtimestamp(start, UTC)
    answer = QueryEngine(s3_settings).query(
        "cpu_pct",
        first,
        datetime.fromtimestamp(end, UTC) + timedelta(minutes=1),
        step="1m",
        aggs=("count", "sum", "min", "max"),
    )
    assert [s["table"] for s in answer.meta.sources] == ["speed_1m"]
    assert answer.meta.late_unmerged == 1
    cpu = expected.filter(pl.col("metric") == "cpu_pct").drop("metric")
    served = answer.select(
        "server_id", pl.col("window_start").cast(pl.Datetime("ms", "UTC")), "count", "min", "max"
    ).sort("server_id", "window_start")
    assert served.equals(cpu.select(served.columns).sort("server_id", "window_start"))


# -- batch layer --------------------------------------------------------------------------


@pytest.mark.spark
def test_spark_jobs_cannot_reach_s3_here_without_hadoop_aws(
    spark: Any, s3_root: str, s3_options: dict[str, str], tmp_path: Path
) -> None:
    jvm = spark.sparkContext._jvm
    try:
        jvm.java.lang.Class.forName(S3A)
    except Exception:  # py4j's error for ClassNotFoundException
        pytest.skip(
            f"{S3A} is not on Spark's classpath: s3a:// needs the hadoop-aws jar and the AWS "
            "SDK bundle from Maven, which this machine cannot reach, so the batch layer "
            "(compaction, rollups) is not tested on S3 here"
        )
    from fleetlens.simulator.history import write_history
    from spark_jobs.jobs import JobContext, run_job

    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    for key, value in spark_hadoop_conf(s3_options).items():
        hadoop.set(key.removeprefix("spark.hadoop."), value)
    settings = load_settings(
        lake={"root": s3_root, "storage_options": s3_options}, runtime_dir=tmp_path / "run"
    )
    lake = Lake(settings.lake)
    hour = datetime(2026, 11, 16, 22, tzinfo=UTC)
    fleet = Fleet(FleetSpec(servers=5, seed=3, anchor_s=int(hour.timestamp())))
    write_history(fleet, lake, start_s=int(hour.timestamp()), end_s=int(hour.timestamp()) + 3600)
    landing = (
        pl.scan_parquet(
            lake.uri("landing", "metrics", "**", "*.parquet"), storage_options=lake.polars_options
        )
        .select(pl.col("metrics").map.entries())
        .explode("metrics")
        .collect()
    )
    run_job(
        JobContext(settings=settings, spark=spark, lake=lake),
        "compact",
        hour,
        hour + timedelta(hours=1),
    )
    raw = DeltaTable(lake.table_uri("raw_points"), storage_options=lake.delta_options)
    assert raw.to_pyarrow_dataset().count_rows() == landing.height > 0
