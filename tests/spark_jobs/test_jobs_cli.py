"""The batch jobs as the processes users run: `fleetlens spark run` killed with SIGKILL in
the middle of its Delta writes and run again, and the same CLI under `spark-submit`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from fleetlens.config import load_settings
from fleetlens.lake.paths import Lake
from fleetlens.simulator.fleet import Fleet, FleetSpec
from fleetlens.simulator.history import write_history
from spark_jobs import submit
from spark_jobs.jobs import JobContext, run_job

pytestmark = [pytest.mark.spark, pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent
START = datetime(2026, 11, 20, 13, tzinfo=UTC)
END = START + timedelta(hours=2)
SPAN = ["--start", "2026-11-20T13:00:00Z", "--end", "2026-11-20T15:00:00Z"]
TABLES = {
    "raw_points": ["event_id", "metric"],
    "rollup_1m": ["server_id", "metric", "window_start"],
}


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A landing zone of two hours of 30 servers, with duplicates, to copy into each lake;
    and its number of distinct points."""
    root = tmp_path_factory.mktemp("landing") / "lake"
    settings = load_settings(lake={"root": str(root)})
    fleet = Fleet(
        FleetSpec.from_settings(
            settings.simulator, servers=30, seed=5, anchor_s=int(START.timestamp())
        )
    )
    stats = write_history(
        fleet,
        Lake(settings.lake),
        start_s=int(START.timestamp()),
        end_s=int(END.timestamp()),
        duplicate_fraction=0.02,
    )
    payloads = pl.scan_parquet(f"{root}/landing/**/*.parquet", hive_partitioning=False)
    distinct = payloads.select(pl.col("event_id").n_unique()).collect().item()
    assert distinct < stats.payloads  # some were written twice
    return root, distinct * stats.points // stats.payloads


def new_lake(tmp_path: Path, landing: tuple[Path, int], name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(landing[0] / "landing", root / "landing")
    return root


def environment(lake: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FLEETLENS_LAKE__ROOT": str(lake),
        "FLEETLENS_RUNTIME_DIR": str(lake.parent / f"{lake.name}-run"),
        "FLEETLENS_SPARK__MASTER": "local[2]",
        "FLEETLENS_SPARK__DRIVER_MEMORY": "1g",
        "FLEETLENS_SPARK__SHUFFLE_PARTITIONS": "2",
        "FLEETLENS_LOG__FORMAT": "json",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "TZ": "UTC",
    }


def fleetlens_spark_run(job: str, lake: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(VENV_BIN / "fleetlens"), "spark", "run", job, *SPAN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(lake),
    )


def finish(process: subprocess.Popen[str]) -> dict[str, object]:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    result: dict[str, object] = json.loads(stdout.strip().splitlines()[-1])
    return result


def snapshot(lake: Path) -> dict[str, pl.DataFrame]:
    """Each table's rows, sorted by key; sketch bytes and the quantiles read from them are
    left out (KLL compacts at random: see test_batch_e2e)."""
    return {
        name: pl.read_delta(str(lake / "tables" / name))
        .select(pl.exclude("sketch", "p50", "p95", "p99"))
        .sort(key)
        for name, key in TABLES.items()
    }


def assert_same_rows(got: pl.DataFrame, expected: pl.DataFrame, name: str) -> None:
    """Equal, but for the last bits of floating-point sums: Spark adds a window's values in
    the order its tasks deliver them, which the number of cores and partitions changes."""
    assert got.columns == expected.columns and got.height == expected.height > 0, name
    for column in got.columns:
        if got[column].dtype == pl.Float64:
            close = got[column].is_close(expected[column], rel_tol=1e-12) | (
                got[column].is_null() & expected[column].is_null()
            )
            assert close.all(), f"{name}.{column}"
        else:
            assert got[column].equals(expected[column]), f"{name}.{column}"


def kill_when_writing(process: subprocess.Popen[str], table: Path) -> None:
    """SIGKILL ``process`` as soon as Spark has begun staging files for ``table``."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if any(table.glob("staging-*/**/*.parquet")) or any(table.glob("staging-*/_temporary")):
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=60)
            assert process.returncode == -signal.SIGKILL
            return
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"finished before it wrote {table.name}: {stderr[-3000:]}")
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"never began writing {table.name}")


def test_killed_mid_write_then_rerun_equals_an_uninterrupted_run(
    tmp_path: Path, landing: tuple[Path, int], spark: SparkSession
) -> None:
    reference_lake = new_lake(tmp_path, landing, "reference")
    settings = load_settings(lake={"root": str(reference_lake)})
    context = JobContext(settings=settings, spark=spark, lake=Lake(settings.lake))
    for job in ("compact", "rollup_1m"):
        run_job(context, job, START, END)

    lake = new_lake(tmp_path, landing, "killed")
    # Each job killed while Spark stages its files, then run again to the end.
    kill_when_writing(fleetlens_spark_run("compact", lake), lake / "tables" / "raw_points")
    assert finish(fleetlens_spark_run("compact", lake))["job"] == "compact"
    kill_when_writing(fleetlens_spark_run("rollup_1m", lake), lake / "tables" / "rollup_1m")
    rolled = finish(fleetlens_spark_run("rollup_1m", lake))

    got, expected = snapshot(lake), snapshot(reference_lake)
    assert expected["raw_points"].height == landing[1]
    for name in TABLES:
        assert_same_rows(got[name], expected[name], name)
    assert rolled["partitions"] == {"rollup_1m": ["2026-11-20/13", "2026-11-20/14"]}
    # What the killed attempts staged is unreferenced: the tables hold only committed files.
    for name in ("raw_points", "rollup_1m"):
        table = DeltaTable(str(lake / "tables" / name))
        assert all(not path.startswith("staging-") for path in table.file_uris())


def test_spark_submit_runs_the_cli(tmp_path: Path, landing: tuple[Path, int]) -> None:
    lake = new_lake(tmp_path, landing, "submitted")

    spark_options = ["--master", "local[1]", "--conf", "spark.sql.shuffle.partitions=1"]
    done = subprocess.run(
        [
            str(VENV_BIN / "spark-submit"),
            *spark_options,
            submit.__file__,
            "spark",
            "run",
            "compact",
            *SPAN,
        ],
        capture_output=True,
        text=True,
        env=environment(lake),
        timeout=600,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["job"] == "compact"
    assert result["rows"]["raw_points"] == landing[1]
    assert (
        pl.scan_delta(str(lake / "tables" / "raw_points")).select(pl.len()).collect().item()
        == (landing[1])
    )
    # spark-submit's master won over the settings' local[2].
    assert result["spark"]["master"] == "local[1]"
