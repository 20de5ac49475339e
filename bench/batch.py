"""``python -m bench batch``: one simulated hour through compact and the rollups, beside a
bare Spark group-by and the same rollup in polars, on the same landing files.

The hour is the reference design's: 10,000 servers x 6 metrics every 10 s = 21.6 M points
(3.6 M payloads), written by ``fleetlens simulate history``'s vectorised writer. Each
variant runs in a child process of its own (``python -m bench.batch --worker VARIANT``),
so that its peak memory (the process tree: Python and Spark's JVM) is its own:

* ``fleetlens``: ``compact`` (landing -> ``raw_points``, validated and deduplicated), then
  ``rollup_1m`` and ``rollup_1h`` (counts, sums, extremes, last value, KLL sketches and
  quantiles), committed to Delta tables exactly as ``fleetlens spark run`` does, in one
  Spark session (as ``fleetlens spark run backfill`` runs them);
* ``spark group-by``: the engine's own ceiling: read the landing files, explode the
  metrics and group the points to 1-minute count/sum/min/max, into Spark's ``noop`` sink;
* ``polars``: the same group-by in polars (a single-machine baseline).

The work time of each is measured inside the child, after its Spark session is up (the
session's start is reported apart); peak RSS is sampled every 50 ms over the tree.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from bench._common import (
    NA,
    Report,
    child_environment,
    fmt_cores,
    fmt_int,
    machine,
    say,
    tree_rss,
)

VARIANTS = ("fleetlens", "spark-groupby", "polars")
START = datetime(2026, 11, 20, 13, tzinfo=UTC)


@dataclass
class Options:
    servers: int = 10_000
    hours: int = 1
    interval_s: int = 10
    master: str = "local[*]"
    driver_memory: str = "8g"
    shuffle_partitions: int = 8
    keep: bool = False


# -- the children -------------------------------------------------------------------------


def _settings(lake_root: str, options: argparse.Namespace) -> Any:
    from fleetlens.config import load_settings

    return load_settings(
        lake={"root": lake_root},
        spark={
            "master": options.master,
            "driver_memory": options.driver_memory,
            "shuffle_partitions": options.shuffle_partitions,
        },
        log={"level": "WARNING"},
    )


def _worker(options: argparse.Namespace) -> dict[str, Any]:
    """Run one variant over the landing zone of ``options.lake``; what it measured."""
    settings = _settings(options.lake, options)
    start = datetime.fromisoformat(options.start)
    end = start + timedelta(hours=options.hours)
    landing = str(Path(options.lake, "landing", "metrics"))
    out: dict[str, Any] = {"variant": options.worker, "stages": {}}
    if options.worker == "polars":
        import polars as pl

        began = time.perf_counter()
        frame = (
            pl.scan_parquet(f"{landing}/**/*.parquet", hive_partitioning=False)
            .select("server_id", "ts", pl.col("metrics").map.entries())
            .explode("metrics")
            .unnest("metrics")
            .group_by("server_id", "key", pl.col("ts").dt.truncate("1m"))
            .agg(
                pl.len().alias("count"),
                pl.col("value").sum().alias("sum"),
                pl.col("value").min().alias("min"),
                pl.col("value").max().alias("max"),
            )
            .collect()
        )
        out["stages"]["group-by"] = time.perf_counter() - began
        out["windows"] = frame.height
        out["points"] = int(frame["count"].sum())
        return out

    from pyspark.sql import functions as F

    from fleetlens.logging import configure_logging
    from spark_jobs.session import build_session

    configure_logging(settings)
    began = time.perf_counter()
    spark = build_session(settings, app_name=f"bench-{options.worker}")
    spark.range(1).count()  # the executors are up
    out["session_s"] = time.perf_counter() - began
    if options.worker == "spark-groupby":
        began = time.perf_counter()
        points = (
            spark.read.parquet(landing)
            .select("server_id", "ts", F.explode("metrics").alias("metric", "value"))
            .groupBy("server_id", "metric", F.date_trunc("minute", "ts").alias("minute"))
            .agg(
                F.count("value").alias("count"),
                F.sum("value").alias("sum"),
                F.min("value").alias("min"),
                F.max("value").alias("max"),
            )
        )
        points.persist()
        windows = points.count()
        total = points.agg(F.sum("count")).first()
        out["stages"]["group-by"] = time.perf_counter() - began
        out["windows"] = windows
        out["points"] = int(total[0]) if total is not None else 0
        return out

    from fleetlens.lake.paths import Lake
    from spark_jobs.jobs import JobContext, run_job

    context = JobContext(settings=settings, spark=spark, lake=Lake(settings.lake), lookback=False)
    for job in ("compact", "rollup_1m", "rollup_1h"):
        began = time.perf_counter()
        result = run_job(context, job, start, end)
        out["stages"][job] = time.perf_counter() - began
        out.setdefault("rows", {}).update(result.rows)
    import polars as pl

    minute = pl.scan_delta(str(Path(options.lake, "tables", "rollup_1m")))
    out["windows"] = minute.select(pl.len()).collect().item()
    out["points"] = int(minute.select(pl.col("count").sum()).collect().item())
    return out


# -- the parent ---------------------------------------------------------------------------


def _tree_cpu(process: psutil.Process, seen: dict[int, float]) -> None:
    """Remember each member's CPU seconds (children are gone once they have exited)."""
    for member in (process, *process.children(recursive=True)):
        try:
            times = member.cpu_times()
        except psutil.Error:
            continue
        seen[member.pid] = times.user + times.system + times.children_user + times.children_system


def _run_child(variant: str, lake: Path, options: Options, log_dir: Path) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "bench.batch", "--worker", variant, "--lake", str(lake),
        "--start", START.isoformat(), "--hours", str(options.hours),
        "--master", options.master, "--driver-memory", options.driver_memory,
        "--shuffle-partitions", str(options.shuffle_partitions),
    ]  # fmt: skip
    log_path = log_dir / f"{variant}.log"
    spawned = time.perf_counter()
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, env=child_environment({"TZ": "UTC"})
        )
        process = psutil.Process(child.pid)
        peak = 0
        cpu: dict[int, float] = {}
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.wait(0.05):
                peak = max(peak, tree_rss(process))
                _tree_cpu(process, cpu)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stdout, _ = child.communicate()
        stop.set()
        sampler.join()
    wall = time.perf_counter() - spawned
    if child.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{variant} failed ({child.returncode}):\n{tail}")
    found: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    found["wall_s"] = wall
    found["peak_rss"] = peak
    found["cpu_s"] = sum(cpu.values())
    return found


def run(options: Options) -> Report:
    """Generate the hour, run the three variants on it, and tabulate."""
    from fleetlens.config import load_settings
    from fleetlens.lake.paths import Lake
    from fleetlens.simulator.fleet import Fleet, FleetSpec
    from fleetlens.simulator.history import write_history

    root = Path(tempfile.mkdtemp(prefix="fleetlens-bench-batch-"))
    lake_root = root / "lake"
    try:
        settings = load_settings(lake={"root": str(lake_root)})
        fleet = Fleet(
            FleetSpec.from_settings(
                settings.simulator,
                servers=options.servers,
                seed=11,
                anchor_s=int(START.timestamp()),
            )
        )
        say(f"writing {options.hours} h of {options.servers:,} servers into {lake_root}")
        began = time.perf_counter()
        stats = write_history(
            fleet,
            Lake(settings.lake),
            start_s=int(START.timestamp()),
            end_s=int((START + timedelta(hours=options.hours)).timestamp()),
            interval_s=options.interval_s,
        )
        written = time.perf_counter() - began
        landing_bytes = sum(p.stat().st_size for p in (lake_root / "landing").rglob("*.parquet"))
        say(f"{stats.points:,} points in {written:.1f} s; {landing_bytes / 2**20:,.0f} MiB")
        results = {}
        for variant in VARIANTS:
            say(f"running {variant}")
            results[variant] = _run_child(variant, lake_root, options, root)
            stages = ", ".join(f"{k} {v:.1f} s" for k, v in results[variant]["stages"].items())
            say(f"{variant}: {stages}; peak RSS {results[variant]['peak_rss'] / 2**20:,.0f} MiB")
        return _report(options, stats.points, stats.payloads, landing_bytes, results)
    finally:
        if options.keep:
            say(f"scratch kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _report(
    options: Options,
    points: int,
    payloads: int,
    landing_bytes: int,
    results: dict[str, dict[str, Any]],
) -> Report:
    report = Report(
        f"Batch: {options.hours} h of {options.servers:,} servers x 6 metrics every "
        f"{options.interval_s} s ({points:,} points, {payloads:,} payloads, "
        f"{landing_bytes / 2**20:,.0f} MiB of landing Parquet), master {options.master}",
        [
            "configuration",
            "work s",
            "points/s",
            "vs bare Spark",
            "stages (s)",
            "session start s",
            "spawn to exit s",
            "peak RSS (tree)",
            "CPU (of one core)",
        ],
    )
    bare = sum(results["spark-groupby"]["stages"].values())
    labels = {
        "fleetlens": "FleetLens compact + rollup_1m + rollup_1h (Delta commits)",
        "spark-groupby": "baseline: bare Spark group-by to 1-min count/sum/min/max (noop sink)",
        "polars": "baseline: polars group-by to 1-min count/sum/min/max",
    }
    for variant, found in results.items():
        work = sum(found["stages"].values())
        report.add(
            labels[variant],
            f"{work:.1f}",
            fmt_int(points / work),
            f"{bare / work:.2f}x" if variant != "spark-groupby" else "1.00x",
            ", ".join(f"{k} {v:.1f}" for k, v in found["stages"].items()),
            f"{found['session_s']:.1f}" if "session_s" in found else NA,
            f"{found['wall_s']:.1f}",
            f"{found['peak_rss'] / 2**20:,.0f} MiB",
            fmt_cores(found["cpu_s"] / found["wall_s"]),
        )
    checks = []
    for variant, found in results.items():
        ok = found["points"] == points
        checks.append(f"{variant} {found['points']:,} points in {found['windows']:,} windows")
        if not ok:
            checks[-1] += f" ✗ (expected {points:,})"
    report.notes.append("points rolled up: " + "; ".join(checks))
    fleetlens = sum(results["fleetlens"]["stages"].values())
    report.notes.append(
        f"goal: compact + rollup of the hour in < 60 s: {fleetlens:.1f} s, "
        + ("met" if fleetlens < 60 else "NOT met")
        + f"; at least half as fast as the bare group-by: {bare / fleetlens:.2f}x, "
        + ("met" if bare / fleetlens >= 0.5 else "NOT met")
    )
    report.notes.append(
        "work s: inside the child, after its Spark session is up; vs bare Spark: the bare "
        "group-by's work time over this row's (1.00x = as fast); CPU: the tree's CPU time "
        "over spawn-to-exit; peak RSS: Python + JVM, sampled every 50 ms"
    )
    return report


# -- command line -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    parser.add_argument("--servers", type=int, default=10_000, help="servers (10000)")
    parser.add_argument("--hours", type=int, default=1, help="hours of history (1)")
    parser.add_argument("--interval", type=int, default=10, help="seconds between samples (10)")
    parser.add_argument("--master", default="local[*]", help="Spark master (local[*])")
    parser.add_argument("--driver-memory", default="8g", help="Spark driver memory (8g)")
    parser.add_argument("--shuffle-partitions", type=int, default=8, help="(8)")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    parser.add_argument("--keep", action="store_true", help="keep the scratch lake")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--lake", help=argparse.SUPPRESS)
    parser.add_argument("--start", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    options = Options(
        servers=args.servers,
        hours=args.hours,
        interval_s=args.interval,
        master=args.master,
        driver_memory=args.driver_memory,
        shuffle_partitions=args.shuffle_partitions,
        keep=args.keep,
    )
    say(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC — {machine()}")
    command = "python -m bench.batch " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"{'> ' if args.markdown else ''}{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {machine()}")
    print(f"{'> ' if args.markdown else ''}`{command.strip()}`")
    run(options).print(markdown=args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
