"""The lambda architecture end to end: simulated history through the batch jobs (local
Spark), a live stream through the speed layer (a ``fleetlens speed run`` process on the
embedded broker) on top, and a query spanning both equals the reference computed from every
point."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl
import pytest

from fleetlens.config import load_settings
from fleetlens.demo import ServiceProcess
from fleetlens.kafka.clients import ensure_topics, make_producer
from fleetlens.lake.paths import Lake
from fleetlens.serving.query import QueryEngine
from fleetlens.simulator.fleet import Fleet, FleetSpec
from fleetlens.simulator.history import write_history
from fleetlens.simulator.live import FaultSpec
from fleetlens.simulator.stream import simulated_stream
from landing_reference import landing_points
from spark_jobs.jobs import JobContext, run_job

pytestmark = [pytest.mark.spark, pytest.mark.broker, pytest.mark.slow]

SERVERS = 12
SEED = 5


def _stream_points(payloads: list[dict[str, Any]]) -> pl.DataFrame:
    rows = [
        (p["event_id"], p["server_id"], p["ts"], metric, value)
        for p in payloads
        for metric, value in p["metrics"].items()
    ]
    frame = pl.DataFrame(
        rows, schema=["event_id", "server_id", "ts", "metric", "value"], orient="row"
    )
    return frame.unique(["event_id", "metric"], keep="first", maintain_order=True).select(
        "server_id",
        "metric",
        "value",
        ts=pl.from_epoch("ts", time_unit="ms").dt.replace_time_zone("UTC").dt.cast_time_unit("us"),
    )


def test_a_query_across_batch_and_speed_equals_the_reference(
    fleet_env: dict[str, str], spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETLENS_SPEED__CHECKPOINT_INTERVAL_S", "0.5")
    monkeypatch.setenv(
        "FLEETLENS_SPEED__GROUP_ID", f"speed-{fleet_env['FLEETLENS_ARCHIVE__GROUP_ID']}"
    )
    settings = load_settings()
    lake = Lake(settings.lake)
    now = datetime.now(UTC)
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    boundary = start + timedelta(hours=2)
    fleet = Fleet(
        FleetSpec.from_settings(
            settings.simulator, servers=SERVERS, seed=SEED, anchor_s=int(start.timestamp())
        )
    )

    # History: two hours through the batch layer, verified and watermarked.
    write_history(
        fleet,
        lake,
        start_s=int(start.timestamp()),
        end_s=int(boundary.timestamp()),
        duplicate_fraction=0.02,
    )
    ctx = JobContext(settings=settings, spark=spark, lake=lake)
    run_job(ctx, "backfill", start, boundary)

    # Live: from ten minutes before the watermark (the speed layer saw those too) to now,
    # with duplicates and out-of-order arrivals within the allowed lateness.
    ensure_topics(settings.kafka)
    end_s = int(time.time()) // 60 * 60
    stream = simulated_stream(
        fleet,
        start_s=int(boundary.timestamp()) - 600,
        end_s=end_s,
        faults=FaultSpec(duplicates=0.03, out_of_order=0.1),
    )
    producer = make_producer(settings.kafka)
    for arrival in stream:
        producer.send(
            settings.kafka.topics.metrics.name,
            key=arrival.payload["server_id"].encode(),
            value=msgspec.json.encode(arrival.payload),
        )
    producer.flush()
    producer.close()
    service = ServiceProcess(
        "speed",
        ["speed", "run", "--exit-when-idle", "3"],
        log_dir=tmp_path / "logs",
        env=fleet_env
        | {
            "FLEETLENS_SPEED__CHECKPOINT_INTERVAL_S": "0.5",
            "FLEETLENS_SPEED__GROUP_ID": settings.speed.group_id,
        },
    )
    assert service.process.wait(240) == 0, service.log_path.read_text()[-3000:]
    # Every arrival was consumed, each duplicate recognised, none too late: a mismatch below
    # is then the merge's, not a short run's.
    stats = json.loads(service.log_path.read_text().splitlines()[-1])
    assert (stats["records"], stats["duplicates"], stats["late_dropped"]) == (
        len(stream),
        sum(a.duplicate for a in stream),
        0,
    ), stats

    engine = QueryEngine(settings)
    freshness = engine.freshness()
    assert freshness.watermarks["rollup_1m"] == boundary
    assert freshness.last_speed_window is not None
    # The speed layer closes a window once event time passes its end plus the lateness.
    until = freshness.last_speed_window + timedelta(minutes=1)
    assert until >= boundary + timedelta(minutes=30)

    batch = landing_points(settings).filter(pl.col("ts") < boundary)
    live = _stream_points([a.payload for a in stream]).filter(
        pl.col("ts") >= boundary, pl.col("ts") < until
    )
    points = pl.concat([batch, live.select(batch.columns)])
    for step, group_by, metric in (("5m", (), "cpu_pct"), ("1m", ("server_id",), "mem_pct")):
        got = engine.query(
            metric,
            start,
            until,
            step=step,
            group_by=group_by,
            aggs=("count", "sum", "min", "max"),
        )
        assert [s["table"] for s in got.meta.sources] == ["rollup_1m", "speed_1m"]
        assert got.meta.late_unmerged == 0
        want = (
            points.filter(pl.col("metric") == metric)
            .group_by(pl.col("ts").dt.truncate(step).alias("window_start"), *group_by)
            .agg(
                count=pl.len().cast(pl.Int64),
                sum=pl.col("value").sum(),
                min=pl.col("value").min(),
                max=pl.col("value").max(),
            )
            .sort("window_start", *group_by)
        )
        assert want.height > 0
        keys = ["window_start", *group_by]
        differ = got.join(want, on=keys, how="full", suffix="_want", nulls_equal=True).filter(
            pl.any_horizontal(
                pl.col(c).ne_missing(pl.col(f"{c}_want")) for c in ("count", "min", "max")
            )
        )
        assert differ.is_empty(), (step, group_by, metric, until, differ)
        np.testing.assert_allclose(got["sum"].to_numpy(), want["sum"].to_numpy(), rtol=1e-9)
