"""The speed layer on the real embedded broker and a real Delta table.

A simulated stream with late, duplicate and out-of-order events goes onto the topic; the
reference is computed here, independently, from the records read back from Kafka.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import polars as pl
import psutil
import pytest
from datasketches import kll_doubles_sketch
from deltalake import DeltaTable

from fleetlens.config import Settings, load_settings
from fleetlens.demo import ServiceProcess
from fleetlens.kafka.clients import all_partitions, log_end_offsets, make_consumer, make_producer
from fleetlens.kafka.dlq import read_dlq_headers
from fleetlens.simulator.fleet import Fleet, FleetSpec
from fleetlens.simulator.live import FaultSpec
from fleetlens.simulator.stream import simulated_stream
from ports import free_port
from speed_layer.app import SpeedLayer
from speed_layer.sinks import Agg1mRecord

pytestmark = [pytest.mark.broker, pytest.mark.slow]

MIN_MS = 60_000
LATENESS_MS = 30_000
KEY = ["server_id", "metric", "window_start"]
FAULTS = FaultSpec(late=0.04, late_mean_s=60, duplicates=0.03, out_of_order=0.1)


def fill_topic(settings: Settings, *, servers: int, minutes: int) -> int:
    """Produce ``minutes`` of the simulated fleet (with faults) and two invalid records;
    returns the number of records produced (servers come and go, so it varies with the time)."""
    fleet = Fleet(FleetSpec(servers=servers, seed=21))
    end = int(time.time()) // 60 * 60 - 60
    stream = simulated_stream(fleet, start_s=end - minutes * 60, end_s=end, faults=FAULTS)
    producer = make_producer(settings.kafka)
    topic = settings.kafka.topics.metrics.name
    encode = msgspec.json.encode
    for arrival in stream:
        p = arrival.payload
        producer.send(topic, key=p["server_id"].encode(), value=encode(p))
    for raw in (b"garbage", b'{"schema_version": 1}'):
        producer.send(topic, value=raw)
    producer.flush()
    producer.close()
    return len(stream) + 2


def read_back(settings: Settings) -> dict[int, list[dict[str, Any]]]:
    """Valid events per partition, in log order."""
    consumer = make_consumer(settings.kafka, group_id=None)
    partitions = all_partitions(consumer, settings.kafka.topics.metrics.name)
    ends = log_end_offsets(consumer, partitions)
    consumer.seek_to_beginning(*partitions)
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    while any(consumer.position(tp) < ends[tp] for tp in partitions):
        for tp, records in consumer.poll(timeout_ms=500).items():
            for r in records:
                try:
                    event = msgspec.json.decode(r.value)
                except msgspec.DecodeError:
                    continue
                if isinstance(event, dict) and "metrics" in event:
                    out[tp.partition].append(event)
    consumer.close()
    return out


def read_topic_raw(settings: Settings, topic: str) -> list[tuple[int, bytes]]:
    """Every record's (partition, value) on ``topic``."""
    consumer = make_consumer(settings.kafka, group_id=None)
    partitions = all_partitions(consumer, topic)
    ends = log_end_offsets(consumer, partitions)
    consumer.seek_to_beginning(*partitions)
    out: list[tuple[int, bytes]] = []
    while any(consumer.position(tp) < ends[tp] for tp in partitions):
        for tp, records in consumer.poll(timeout_ms=500).items():
            out += [(tp.partition, r.value) for r in records]
    consumer.close()
    return out


def read_dead_letters(settings: Settings) -> list[dict[str, Any]]:
    consumer = make_consumer(settings.kafka, group_id=None)
    partitions = all_partitions(consumer, settings.kafka.topics.dlq.name)
    ends = log_end_offsets(consumer, partitions)
    consumer.seek_to_beginning(*partitions)
    out: list[dict[str, Any]] = []
    while any(consumer.position(tp) < ends[tp] for tp in partitions):
        for records in consumer.poll(timeout_ms=500).values():
            out += [read_dlq_headers(r.headers) for r in records]
    consumer.close()
    return out


def reference(
    per_partition: dict[int, list[dict[str, Any]]],
) -> tuple[pl.DataFrame, dict[int, int]]:
    """Windows closed by each partition's watermark, from first-seen, on-time events only;
    and the events dropped as late, per window start."""
    rows: list[dict[str, Any]] = []
    late: dict[int, int] = defaultdict(int)
    for events in per_partition.values():
        seen: set[str] = set()
        high: int | None = None
        kept: list[dict[str, Any]] = []
        for e in events:
            if e["event_id"] in seen:
                continue
            seen.add(e["event_id"])
            start = e["ts"] - e["ts"] % MIN_MS
            if high is not None and start + MIN_MS <= high - LATENESS_MS:
                late[start] += 1
                continue
            high = e["ts"] if high is None else max(high, e["ts"])
            kept += [
                {"server_id": e["server_id"], "metric": m, "window_start": start, "value": v}
                for m, v in e["metrics"].items()
            ]
        watermark = (high or 0) - LATENESS_MS
        rows += [r for r in kept if r["window_start"] + MIN_MS <= watermark]
    frame = pl.DataFrame(rows)
    agg = frame.group_by(KEY).agg(
        pl.len().alias("count"),
        pl.col("value").sum().alias("sum"),
        pl.col("value").min().alias("min"),
        pl.col("value").max().alias("max"),
        pl.col("value").alias("values"),
    )
    return agg, late


def speed_table(settings: Settings) -> pl.DataFrame:
    uri = str(Path(settings.lake.root, "tables", "speed_1m"))
    frame = pl.from_arrow(DeltaTable(uri).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(pl.col("window_start").dt.epoch("ms").alias("window_start")).sort(KEY)


@pytest.fixture
def speed_env(fleet_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    extra = {
        "FLEETLENS_SPEED__CHECKPOINT_INTERVAL_S": "0.5",
        "FLEETLENS_SPEED__GROUP_ID": f"speed-{fleet_env['FLEETLENS_ARCHIVE__GROUP_ID']}",
    }
    for k, v in extra.items():
        monkeypatch.setenv(k, v)
    return fleet_env | extra


def test_closed_windows_equal_an_independent_reference(
    settings: Settings, speed_env: dict[str, str]
) -> None:
    fill_topic(settings, servers=150, minutes=12)
    stats = SpeedLayer(load_settings()).run(exit_when_idle_s=2)

    expected, late = reference(read_back(settings))
    got = speed_table(settings)
    assert stats.dlq == 2
    dead = read_dead_letters(settings)
    assert [d["stage"] for d in dead] == ["speed", "speed"]
    metrics_topic = settings.kafka.topics.metrics.name
    assert all(d["reason"] and d["source.topic"] == metrics_topic for d in dead)
    assert stats.duplicates > 0 and sum(late.values()) > 0
    assert stats.late_dropped == sum(late.values())
    # Per window, as the speed layer reports them in speed_late_1m.
    late_table = pl.from_arrow(
        DeltaTable(str(Path(settings.lake.root, "tables", "speed_late_1m"))).to_pyarrow_table()
    )
    assert isinstance(late_table, pl.DataFrame)
    per_window = late_table.group_by(pl.col("window_start").dt.epoch("ms").alias("start")).agg(
        pl.col("late_dropped").sum()
    )
    assert dict(per_window.iter_rows()) == dict(late)
    assert got.height == expected.height > 0
    joined = got.join(expected, on=KEY, how="inner", suffix="_ref")
    assert joined.height == expected.height
    for column in ("count", "min", "max"):
        assert (joined[column] == joined[f"{column}_ref"]).all(), column
    assert np.allclose(joined["sum"], joined["sum_ref"], rtol=1e-12)
    eps = kll_doubles_sketch(200).normalized_rank_error(False)
    for row in joined.select("p50", "p95", "p99", "values").iter_rows():
        ordered = np.sort(row[3])
        for q, estimate in zip((0.5, 0.95, 0.99), row[:3], strict=True):
            # With ties an estimate covers a range of ranks: q must fall inside it.
            low = np.searchsorted(ordered, estimate, side="left") / len(ordered)
            high = np.searchsorted(ordered, estimate, side="right") / len(ordered)
            slack = eps + 1 / len(ordered)
            assert low - slack <= q <= high + slack, (q, estimate, row[3])
    # Tags travel with the windows.
    assert got["tenant"].null_count() == 0 and got["service"].null_count() == 0
    # fleet.agg1m.v1 carries the same windows, one per server and minute, each server's always
    # on the same partition.
    decoder = msgspec.json.Decoder(Agg1mRecord)
    windows = [
        (partition, record, window)
        for partition, value in read_topic_raw(settings, settings.kafka.topics.agg1m.name)
        for record in [decoder.decode(value)]
        for window in record.windows
    ]
    assert len(windows) == got.select("server_id", "window_start").n_unique()
    flat = {
        (window.server_id, metric.metric, record.window_start): (
            metric.count,
            metric.sum,
            metric.p99,
        )
        for _, record, window in windows
        for metric in window.metrics
    }
    assert flat == {
        (row[0], row[1], row[2]): (row[3], row[4], row[5])
        for row in got.select(*KEY, "count", "sum", "p99").iter_rows()
    }
    assert all(record.final and window.tenant for _, record, window in windows)
    servers = {window.server_id for _, _, window in windows}
    assert len({(window.server_id, p) for p, _, window in windows}) == len(servers)


def run_to_idle(name: str, env: dict[str, str], tmp_path: Path, *extra: str) -> None:
    service = ServiceProcess(
        name, ["speed", "run", "--exit-when-idle", "3", *extra], log_dir=tmp_path / "logs", env=env
    )
    assert service.process.wait(240) == 0, service.log_path.read_text()[-3000:]


def comparable(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.drop("emitted_at").sort(KEY)


def run_in_own_lake(name: str, env: dict[str, str], tmp_path: Path) -> pl.DataFrame:
    """One uninterrupted run over the whole topic, into a lake of its own."""
    lake = str(tmp_path / f"{name}-lake")
    run_to_idle(
        f"speed-{name}",
        env | {"FLEETLENS_LAKE__ROOT": lake, "FLEETLENS_SPEED__GROUP_ID": name},
        tmp_path,
    )
    return comparable(speed_table(load_settings(lake={"root": lake})))


def test_kill9_five_times_gives_the_uninterrupted_result(
    settings: Settings, speed_env: dict[str, str], tmp_path: Path
) -> None:
    fill_topic(settings, servers=400, minutes=15)
    slow = speed_env | {
        "FLEETLENS_KAFKA__CONSUMER__MAX_POLL_RECORDS": "400",
        "FLEETLENS_SPEED__CHECKPOINT_INTERVAL_S": "0.3",
    }
    rng = random.Random(3)
    state_dir = Path(settings.lake.root, "_state", "speed")
    kills_mid_stream = 0
    for kill in range(5):
        service = ServiceProcess(
            f"speed-{kill}", ["speed", "run"], log_dir=tmp_path / "logs", env=slow
        )
        stamp = max((p.stat().st_mtime_ns for p in state_dir.rglob("*.ckpt")), default=0)
        deadline = time.monotonic() + 60
        checkpointed = False
        while not checkpointed and time.monotonic() < deadline:
            newest = max((p.stat().st_mtime_ns for p in state_dir.rglob("*.ckpt")), default=0)
            checkpointed = newest > stamp  # this process has written a checkpoint
            assert service.process.poll() is None, service.log_path.read_text()[-3000:]
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        fetchers = psutil.Process(service.process.pid).children(recursive=True)
        os.kill(service.process.pid, signal.SIGKILL)
        service.process.wait(10)
        kills_mid_stream += checkpointed
        # The fetcher child dies with the layer: no orphan keeps reading.
        assert fetchers and not psutil.wait_procs(fetchers, timeout=10)[1]
    run_to_idle("speed-final", slow, tmp_path)
    crashed = comparable(speed_table(settings))

    clean = run_in_own_lake("clean", speed_env, tmp_path)

    assert kills_mid_stream == 5
    assert clean.height > 0
    assert crashed.equals(clean)


def test_two_processes_share_the_partitions_and_match_one(
    settings: Settings, speed_env: dict[str, str], tmp_path: Path
) -> None:
    fill_topic(settings, servers=200, minutes=10)
    pair = [
        ServiceProcess(
            f"speed-{i}",
            ["speed", "run", "--exit-when-idle", "3", "--instance", str(i), "--instances", "2"],
            log_dir=tmp_path / "logs",
            env=speed_env,
        )
        for i in range(2)
    ]
    for service in pair:
        assert service.process.wait(240) == 0, service.log_path.read_text()[-3000:]
    logs = [s.log_path.read_text() for s in pair]
    assert "partitions=[0, 2, 4]" in logs[0] and "partitions=[1, 3, 5]" in logs[1]
    shared = comparable(speed_table(settings))

    single = run_in_own_lake("single", speed_env, tmp_path)
    assert single.height > 0
    assert shared.equals(single)


def test_prometheus_endpoint_reports_the_run(
    settings: Settings, speed_env: dict[str, str], tmp_path: Path
) -> None:
    produced = fill_topic(settings, servers=50, minutes=3)
    port = free_port()
    service = ServiceProcess(
        "speed-metrics",
        ["speed", "run", "--exit-when-idle", "20", "--metrics-port", str(port)],
        log_dir=tmp_path / "logs",
        env=speed_env,
    )
    wanted = {
        "fleetlens_speed_records_total",
        "fleetlens_speed_points_total",
        "fleetlens_speed_dlq_total",
        "fleetlens_speed_duplicates_total",
        "fleetlens_speed_late_dropped_total",
        "fleetlens_speed_open_windows",
        "fleetlens_speed_checkpoint_age_seconds",
        "fleetlens_speed_checkpoint_seconds_count",
        "fleetlens_speed_state_bytes",
    }
    values: dict[str, float] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert service.process.poll() is None, service.log_path.read_text()[-3000:]
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        values = {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("fleetlens_speed_") and "{" not in line.split()[0]
        }
        committed = values.get("fleetlens_speed_checkpoint_seconds_count", 0) >= 1
        if committed and values.get("fleetlens_speed_records_total", 0) == produced:
            break
        time.sleep(0.2)
    service.stop()
    assert wanted <= values.keys(), wanted - values.keys()
    assert values["fleetlens_speed_records_total"] == produced
    assert values["fleetlens_speed_points_total"] == 6 * (
        values["fleetlens_speed_records_total"] - values["fleetlens_speed_dlq_total"]
    )
    assert values["fleetlens_speed_dlq_total"] == 2
    assert values["fleetlens_speed_state_bytes"] > 0
    assert 'fleetlens_speed_lag{partition="0"} 0.0' in text
