"""`fleetlens spark cluster`: the command lines and the master's JSON (pure), and the batch
jobs run as `fleetlens spark run` on a real standalone cluster (a master and two workers on
loopback), whose tables must equal those of the same jobs on local Spark."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import psutil
import pyarrow as pa
import pytest
from datasketches import kll_doubles_sketch

from fleetlens.config import load_settings
from fleetlens.lake.landing import LANDING_SCHEMA, write_landing_file
from fleetlens.lake.paths import Lake
from fleetlens.simulator.fleet import Fleet, FleetSpec
from fleetlens.simulator.history import write_history
from ports import free_port
from spark_jobs.cluster import (
    SparkCluster,
    alive_workers,
    application_names,
    master_command,
    worker_command,
)

VENV_BIN = Path(sys.executable).parent
START = datetime(2026, 11, 20, 13, tzinfo=UTC)
END = START + timedelta(hours=2)
SPAN = ["--start", "2026-11-20T13:00:00Z", "--end", "2026-11-20T15:00:00Z"]
JOBS = ("compact", "rollup_1m", "rollup_1h")
KEYS = {
    "raw_points": ["event_id", "metric"],
    "quarantine": ["event_id", "metric"],
    "rollup_1m": ["server_id", "metric", "window_start"],
    "rollup_1h": ["server_id", "metric", "window_start"],
}
SKETCH_K = 200  # batch.sketch_k


# -- pure parts -----------------------------------------------------------------------------


def test_command_lines_bind_loopback_from_the_settings(tmp_path: Path) -> None:
    cluster = load_settings(
        spark={"cluster": {"master_port": 7101, "webui_port": 8101, "worker_cores": 3}}
    ).spark.cluster
    home = Path("/opt/pyspark")

    master = master_command(cluster, home)
    worker = worker_command(cluster, home, tmp_path / "w1")

    assert master == [
        "/opt/pyspark/bin/spark-class",
        "org.apache.spark.deploy.master.Master",
        *("--host", "127.0.0.1", "--port", "7101", "--webui-port", "8101"),
    ]
    assert worker[:3] == [
        "/opt/pyspark/bin/spark-class",
        "org.apache.spark.deploy.worker.Worker",
        "spark://127.0.0.1:7101",
    ]
    options = dict(zip(worker[3::2], worker[4::2], strict=True))
    assert options == {
        "--cores": "3",
        "--memory": "2g",
        "--host": "127.0.0.1",
        "--port": "0",
        "--webui-port": "0",
        "--work-dir": str(tmp_path / "w1"),
    }


def test_master_json_is_read_for_alive_workers_and_applications() -> None:
    state = {
        "workers": [{"state": "ALIVE"}, {"state": "DEAD"}, {"state": "ALIVE"}],
        "activeapps": [{"name": "fleetlens-rollup_1h"}],
        "completedapps": [{"name": "fleetlens-compact"}, {"name": "fleetlens-rollup_1m"}],
    }
    assert alive_workers(state) == 2
    assert alive_workers({}) == 0
    assert application_names(state) == ["fleetlens-compact", "fleetlens-rollup_1m"]
    assert application_names(state, "activeapps") == ["fleetlens-rollup_1h"]


def test_status_and_stop_without_a_cluster(tmp_path: Path) -> None:
    settings = load_settings(
        runtime_dir=tmp_path,
        spark={"cluster": {"master_port": free_port(), "webui_port": free_port()}},
    )
    cluster = SparkCluster(settings)

    status = cluster.status()

    assert not status.running
    assert status.pids == {"master": None, "worker-1": None, "worker-2": None}
    assert cluster.stop() == []


def test_memory_sizes_are_validated() -> None:
    with pytest.raises(ValueError, match="worker_memory"):
        load_settings(spark={"cluster": {"worker_memory": "2 GB"}})


# -- on a real cluster ----------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    master_url: str
    webui_url: str
    status: dict[str, Any]


def fleetlens(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "fleetlens"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A master and two workers of one core started by `fleetlens spark cluster start`;
    stopped by `fleetlens spark cluster stop` whatever the test did."""
    env = {
        **os.environ,
        "FLEETLENS_RUNTIME_DIR": str(tmp_path / "cluster-run"),
        "FLEETLENS_SPARK__CLUSTER__MASTER_PORT": str(free_port()),
        "FLEETLENS_SPARK__CLUSTER__WEBUI_PORT": str(free_port()),
        "FLEETLENS_SPARK__CLUSTER__WORKERS": "2",
        "FLEETLENS_SPARK__CLUSTER__WORKER_CORES": "1",
        "FLEETLENS_LOG__FORMAT": "json",
    }
    pids: dict[str, int | None] = {}
    try:
        started = fleetlens("spark", "cluster", "start", env=env, timeout=240)
        assert started.returncode == 0, started.stderr[-3000:]
        master_url = started.stdout.strip().splitlines()[-1]
        status = fleetlens("spark", "cluster", "status", env=env, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr[-3000:]
        state = json.loads(status.stdout)
        pids = state["pids"]
        yield Cluster(master_url, state["webui_url"], state)
    finally:
        stopped = fleetlens("spark", "cluster", "stop", env=env, timeout=120)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    # Master, workers and executors are gone; `status` says so.
    assert not any(pid and psutil.pid_exists(pid) for pid in pids.values())
    assert fleetlens("spark", "cluster", "status", env=env, timeout=60).returncode == 1


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    """Two hours of 24 servers, with duplicates, and one payload breaking the contract (so
    that `quarantine` has a row)."""
    root = tmp_path / "landing-lake"
    settings = load_settings(lake={"root": str(root)})
    fleet = Fleet(
        FleetSpec.from_settings(
            settings.simulator, servers=24, seed=11, anchor_s=int(START.timestamp())
        )
    )
    lake = Lake(settings.lake)
    write_history(
        fleet,
        lake,
        start_s=int(START.timestamp()),
        end_s=int(END.timestamp()),
        duplicate_fraction=0.02,
    )
    ts = START + timedelta(minutes=7)
    bad = pa.Table.from_pylist(
        [
            {
                "event_id": "bad-1",
                "server_id": "srv-bad",
                "ts": ts,
                "metrics": {"cpu_pct": 42.0, "mem_pct": 150.0},
                "tags": {"tenant": "acme"},
                "kafka_partition": 0,
                "kafka_offset": 1,
                "ingest_ts": ts + timedelta(seconds=2),
            }
        ],
        schema=LANDING_SCHEMA,
    )
    path = lake.path(
        "landing", "metrics", f"date={ts:%Y-%m-%d}", f"hour={ts:%H}", "part-bad.parquet"
    )
    write_landing_file(lake, path, bad)
    return root / "landing"


def run_jobs(lake: Path, master: str) -> list[dict[str, Any]]:
    """`fleetlens spark run` for each job in turn, on ``master``: the only setting that
    differs between the local and the cluster run (the lake aside)."""
    env = {
        **os.environ,
        "FLEETLENS_LAKE__ROOT": str(lake),
        "FLEETLENS_RUNTIME_DIR": str(lake.parent / f"{lake.name}-run"),
        "FLEETLENS_SPARK__MASTER": master,
        "FLEETLENS_SPARK__DRIVER_MEMORY": "1g",
        "FLEETLENS_SPARK__SHUFFLE_PARTITIONS": "2",
        "FLEETLENS_LOG__FORMAT": "json",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "TZ": "UTC",
    }
    results = []
    for job in JOBS:
        done = fleetlens("spark", "run", job, *SPAN, env=env, timeout=300)
        assert done.returncode == 0, f"{job} on {master}: {done.stderr[-3000:]}"
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def table(lake: Path, name: str) -> pl.DataFrame:
    """The table's rows by key; ``source_file`` (quarantine) relative to the lake."""
    frame = pl.read_delta(str(lake / "tables" / name)).sort(KEYS[name])
    if "source_file" in frame.columns:
        relative = pl.col("source_file").str.split(f"{lake}/").list.last()
        frame = frame.with_columns(relative)
    return frame


def exact_values(raw: pl.DataFrame, every: str) -> pl.DataFrame:
    """Each window's values, sorted: what the sketches summarise."""
    return raw.group_by(
        "server_id", "metric", pl.col("ts").dt.truncate(every).alias("window_start")
    ).agg(pl.col("value").sort().alias("values"))


def assert_sketches_agree(got: pl.DataFrame, expected: pl.DataFrame, values: pl.DataFrame) -> int:
    """The sketches summarise the same values; returns how many had other bytes.

    A sketch's bytes are not a function of its values alone. Below k values KLL keeps them
    all, in the order they arrived, and the cluster's shuffle delivers a window's rows in
    another order than local Spark: the same items, exact quantiles. Above k it compacts,
    keeping one of each pair of items at random (DataSketches gets no seed from Spark), so
    its quantiles move within the sketch's rank error: they are checked against the exact
    values instead.
    """
    eps = kll_doubles_sketch(SKETCH_K).normalized_rank_error(False)
    key = KEYS["rollup_1m"]
    other = got["sketch"] != expected["sketch"]
    rows = (
        got.with_columns(expected=expected["sketch"])
        .filter(other)
        .join(values, on=key, how="left", maintain_order="left")
    )
    for row in rows.iter_rows(named=True):
        ours = kll_doubles_sketch.deserialize(row["sketch"])
        theirs = kll_doubles_sketch.deserialize(row["expected"])
        assert ours.n == theirs.n == row["count"] == len(row["values"])
        assert ours.get_min_value() == theirs.get_min_value() == row["min"]
        assert ours.get_max_value() == theirs.get_max_value() == row["max"]
        if not ours.is_estimation_mode() and not theirs.is_estimation_mode():
            assert sorted(ours) == sorted(theirs)
            continue
        ordered = np.asarray(row["values"])
        slack = eps + 1 / len(ordered)
        for sketch in (ours, theirs):
            for q in (0.5, 0.95, 0.99):
                value = sketch.get_quantile(q, True)
                low = np.searchsorted(ordered, value, side="left") / len(ordered)
                high = np.searchsorted(ordered, value, side="right") / len(ordered)
                assert low - slack <= q <= high + slack, (row["server_id"], row["metric"], q)
    quantiles = ["p50", "p95", "p99"]
    assert got.filter(~other).select(quantiles).equals(expected.filter(~other).select(quantiles))
    # The materialised quantiles are those of the table's own sketches.
    for column, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        decoded = [kll_doubles_sketch.deserialize(s).get_quantile(q, True) for s in rows["sketch"]]
        assert rows[column].to_list() == decoded, column
    return rows.height


@pytest.mark.spark
@pytest.mark.slow
def test_jobs_on_the_cluster_equal_local_spark(
    tmp_path: Path, landing: Path, cluster: Cluster
) -> None:
    lakes = {"local": tmp_path / "local", "cluster": tmp_path / "on-cluster"}
    for lake in lakes.values():
        shutil.copytree(landing, lake / "landing")

    began = time.monotonic()
    # Side by side: each run is mostly JVM start-ups and waits for executors, so this saves
    # a little even on 2 cores.
    with ThreadPoolExecutor(1) as pool:
        local = pool.submit(run_jobs, lakes["local"], "local[*]")
        on_cluster = run_jobs(lakes["cluster"], cluster.master_url)
        reference = local.result()
    print(f"jobs: {time.monotonic() - began:.0f} s")  # shown with -s

    # It really ran there: the driver's master, one finished application per job on the
    # master, and on each worker an executor of every application; tasks ran on both
    # workers (executors log each task at INFO, their default, into their work folder).
    assert {r["spark"]["master"] for r in on_cluster} == {cluster.master_url}
    assert {r["spark"]["master"] for r in reference} == {"local[*]"}
    state = httpx.get(f"{cluster.webui_url}/json/", timeout=10).json()
    apps = {app["name"]: app for app in state["completedapps"]}
    assert set(apps) == {f"fleetlens-{job}" for job in JOBS}
    assert all(app["state"] == "FINISHED" for app in apps.values())
    work = Path(cluster.status["state_dir"]) / "work"
    tasks = {}
    for worker in ("worker-1", "worker-2"):
        for app in apps.values():
            logs = list((work / worker / app["id"]).glob("*/stderr"))
            assert logs, f"no executor of {app['name']} on {worker}"
            tasks[worker, app["name"]] = sum(p.read_text().count("Running task") for p in logs)
    assert all(sum(n for (_, a), n in tasks.items() if a == app) > 0 for app in apps), tasks
    assert all(
        sum(n for (w, _), n in tasks.items() if w == worker) > 0
        for worker in ("worker-1", "worker-2")
    ), tasks
    for ours, theirs in zip(on_cluster, reference, strict=True):
        assert ours["partitions"] == theirs["partitions"]
        assert ours["rows"] == theirs["rows"]

    got = {name: table(lakes["cluster"], name) for name in KEYS}
    expected = {name: table(lakes["local"], name) for name in KEYS}
    for name in ("raw_points", "quarantine"):
        assert got[name].height == expected[name].height > 0, name
        assert got[name].equals(expected[name]), name
    assert expected["quarantine"].select("reason", "source_file").rows() == [
        ("mem_pct above 100", "landing/metrics/date=2026-11-20/hour=13/part-bad.parquet")
    ]
    raw = expected["raw_points"]
    # Every column but the sketches' is identical: the sums too (added in sorted order).
    exact = pl.exclude("sketch", "p50", "p95", "p99")
    for name, every in (("rollup_1m", "1m"), ("rollup_1h", "1h")):
        assert got[name].height == expected[name].height > 0, name
        assert got[name].select(exact).equals(expected[name].select(exact)), name
        differing = assert_sketches_agree(got[name], expected[name], exact_values(raw, every))
        print(f"{name}: {differing} of {got[name].height} sketches with other bytes")
