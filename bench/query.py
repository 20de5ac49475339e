"""``python -m bench query``: the query engine's latency, cold and warm, beside a direct
polars scan of the single batch table over the same range.

A lake of ``--servers`` servers (default 200) is generated once into a scratch folder:
``rollup_1m`` for 7 days, ``rollup_1h`` and ``rollup_1d`` for a year, ``speed_1m`` for the
last 6 hours, watermarks 3 hours ago (so every case below merges batch and speed data).
Rows are synthetic window aggregates with real KLL sketches (drawn from a pool per tier:
building a million distinct sketches would take longer than the benchmark).

Cases (as the serving issue states them): 24 h x 100 servers at 1 min; 7 d x 1 server at
1 min; 30 d average by service at 1 h; 1 y x 1 server at 1 d. Each runs ``--runs`` times
(20), run k over the range ending k minutes earlier, as a dashboard refreshing every minute
asks: cold (a new engine: tables opened again), warm (one engine, its cache of batch rows
before the watermark in use) and warm without that cache (``serving.segment_cache_mb: 0``:
every batch row scanned each time). The baseline scans the case's batch table over the same
ranges with the same filters and collects it, without the merge: cold (the table opened
again each run) and warm (one scan kept).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
from datasketches import kll_doubles_sketch

from bench._common import Report, fmt_ms, machine, say
from fleetlens.config import Settings, load_settings
from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import (
    ROLLUP_1D,
    ROLLUP_1H,
    ROLLUP_1M,
    SPEED_1M,
)
from fleetlens.serving.query import QueryEngine, select_rows
from fleetlens.simulator.lake import write_tier, write_watermarks

SERVICES = ("api", "web", "db", "cache", "queue", "search")
METRIC = "cpu_pct"


@dataclass(frozen=True)
class Case:
    name: str
    span: timedelta
    step: str
    servers: int | None  # the first N servers; None: all
    group_by: tuple[str, ...]
    aggs: tuple[str, ...]
    baseline_table: str


CASES = (
    Case("24 h x 100 servers at 1 min", timedelta(hours=24), "1m", 100, ("server_id",),
         ("avg", "min", "max", "p95"), ROLLUP_1M),
    Case("7 d x 1 server at 1 min", timedelta(days=7), "1m", 1, ("server_id",),
         ("avg", "min", "max", "p95"), ROLLUP_1M),
    Case("30 d average by service at 1 h", timedelta(days=30), "1h", None, ("service",),
         ("avg",), ROLLUP_1H),
    Case("1 y x 1 server at 1 d", timedelta(days=365), "1d", 1, ("server_id",),
         ("avg", "min", "max", "p95"), ROLLUP_1D),
)  # fmt: skip


def _sketch_pool(samples: int, *, size: int = 32, seed: int = 1) -> list[tuple[bytes, list[float]]]:
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(size):
        sketch = kll_doubles_sketch(200)
        sketch.update(rng.gamma(4.0, 10.0, samples))
        pool.append((sketch.serialize(), list(sketch.get_quantiles([0.5, 0.95, 0.99], True))))
    return pool


def _windows(
    servers: int, start: datetime, end: datetime, window_s: int, seed: int
) -> pl.DataFrame:
    """Synthetic aggregates of ``METRIC`` for every server and window of ``[start, end)``."""
    samples = max(1, window_s // 10)
    pool = _sketch_pool(min(samples, 8640), seed=seed)
    starts = np.arange(int(start.timestamp()), int(end.timestamp()), window_s, dtype=np.int64)
    n = len(starts) * servers
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(pool), n)
    quantiles = np.array([q for _, q in pool])[pick]
    mean = rng.gamma(4.0, 10.0, n)
    server = np.tile(np.arange(servers), len(starts))
    return pl.DataFrame(
        {
            "window_start": np.repeat(starts * 1_000_000, servers),
            "server_id": [f"srv-{i:05d}" for i in server],
            "metric": METRIC,
            "tenant": "acme",
            "region": "eu-west-1",
            "env": "prod",
            "service": [SERVICES[i % len(SERVICES)] for i in server],
            "cluster": [f"c{i % 3}" for i in server],
            "count": np.full(n, samples, np.int64),
            "sum": mean * samples,
            "min": mean * 0.5,
            "max": mean * 1.5,
            "last": mean,
            "last_ts": np.repeat((starts + window_s - 10) * 1_000_000, servers),
            "sketch": pl.Series([pool[i][0] for i in pick], dtype=pl.Binary),
            "p50": quantiles[:, 0],
            "p95": quantiles[:, 1],
            "p99": quantiles[:, 2],
        }
    ).with_columns(
        pl.col("window_start", "last_ts").cast(pl.Datetime("us", "UTC")),
    )


def build_lake(settings: Settings, *, servers: int, now: datetime) -> dict[str, datetime]:
    """Write the benchmark's lake; returns the watermarks."""
    lake = Lake(settings.lake)
    hour = now.replace(minute=0, second=0, microsecond=0)
    boundary = hour - timedelta(hours=3)
    midnight = hour.replace(hour=0) - timedelta(days=1)
    year = midnight - timedelta(days=364)

    write = partial(write_tier, lake)

    say("lake: rollup_1m (7 days)")
    for day in range(7):
        begin = boundary - timedelta(days=7 - day)
        write(ROLLUP_1M, _windows(servers, begin, begin + timedelta(days=1), 60, day))
    say("lake: rollup_1h (a year)")
    for month in range(13):
        begin = year + timedelta(days=30 * month)
        finish = min(begin + timedelta(days=30), boundary)
        if begin < finish:
            write(ROLLUP_1H, _windows(servers, begin, finish, 3600, 100 + month))
    say("lake: rollup_1d, speed_1m, watermarks")
    daily = _windows(servers, year, midnight, 86400, 200)
    write(ROLLUP_1D, daily)
    speed = _windows(
        servers, hour - timedelta(hours=6), now.replace(second=0, microsecond=0), 60, 300
    )
    write(SPEED_1M, speed.with_columns(emitted_at=pl.lit(now)))
    marks = {ROLLUP_1M: boundary, ROLLUP_1H: boundary, ROLLUP_1D: midnight}
    write_watermarks(lake, marks, run_id="bench")
    return marks


def _timed(run: Callable[[int], object], runs: int) -> list[float]:
    """Seconds of ``run(k)`` for each run ``k``."""
    out = []
    for k in range(runs):
        began = time.perf_counter()
        run(k)
        out.append(time.perf_counter() - began)
    return out


def _p(values: list[float], q: float) -> float:
    return float(np.quantile(values, q))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.query", description=__doc__)
    parser.add_argument("--servers", type=int, default=200, help="servers in the lake (200)")
    parser.add_argument("--runs", type=int, default=20, help="runs per case and mode (20)")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    parser.add_argument("--keep", action="store_true", help="keep the scratch lake")
    options = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="fleetlens-bench-query-"))
    settings = load_settings(
        "embedded", lake={"root": str(scratch / "lake")}, runtime_dir=scratch / "run"
    )
    now = datetime.now(UTC)
    try:
        began = time.perf_counter()
        build_lake(settings, servers=options.servers, now=now)
        say(f"lake written in {time.perf_counter() - began:.0f} s")
        report = Report(
            f"Query: p50/p95 over {options.runs} runs, lake of {options.servers} servers "
            "(watermark 3 h ago: every case merges batch and speed)",
            [
                "case",
                "rows",
                "sources",
                "cold p50 / p95 ms",
                "direct scan cold p50 / p95 ms",
                "merge / scan (cold p95)",
                "warm p50 / p95 ms",
                "warm, no segment cache, p50 / p95 ms",
                "direct scan warm p50 / p95 ms",
                "merge / scan (warm p95)",
                "no segment cache / scan (warm p95)",
            ],
        )
        warm_engine = QueryEngine(settings)
        serving = settings.serving.model_copy(update={"segment_cache_mb": 0})
        uncached_engine = QueryEngine(settings.model_copy(update={"serving": serving}))
        servers = [f"srv-{i:05d}" for i in range(options.servers)]
        for case in CASES:
            chosen = None if case.servers is None else servers[: case.servers]

            def ask(
                engine: QueryEngine,
                k: int = 0,
                case: Case = case,
                chosen: list[str] | None = chosen,
            ) -> pl.DataFrame:
                end = now - timedelta(minutes=k)
                return engine.query(METRIC, end - case.span, end, step=case.step, servers=chosen,
                                    group_by=case.group_by, aggs=case.aggs)  # fmt: skip

            def open_scan(case: Case = case) -> pl.LazyFrame:
                return pl.scan_delta(delta.open_table(Lake(settings.lake), case.baseline_table))

            # Warm: built once, as the engine keeps a scan per table version (polars resolves
            # a scan's files once per LazyFrame); cold: the table opened again, as a new
            # engine does.
            table = open_scan()

            def scan(
                k: int = 0,
                case: Case = case,
                chosen: list[str] | None = chosen,
                table: pl.LazyFrame = table,
            ) -> pl.DataFrame:
                end = now - timedelta(minutes=k)
                start = end - case.span
                lazy = table.filter(
                    pl.col("metric") == METRIC,
                    pl.col("window_start") >= start,
                    pl.col("window_start") < end,
                    pl.col("date").is_between(
                        pl.lit(f"{start:%Y-%m-%d}"), pl.lit(f"{end:%Y-%m-%d}")
                    ),
                )
                # The engine's own server filter (a semi-join for long lists), so the ratio
                # measures the merge rather than how servers are filtered.
                lazy = select_rows(lazy, chosen, {}, None)
                columns = ["window_start", *case.group_by, "count", "sum", "min", "max"]
                if any(a.startswith("p") for a in case.aggs):
                    columns.append("p95")
                return lazy.select(columns).collect()

            result = ask(warm_engine)
            ask(uncached_engine)
            scan()
            cold = _timed(lambda k: ask(QueryEngine(settings), k), options.runs)
            warm = _timed(partial(ask, warm_engine), options.runs)
            uncached = _timed(partial(ask, uncached_engine), options.runs)
            direct = _timed(scan, options.runs)
            direct_cold = _timed(lambda k: scan(k, table=open_scan()), options.runs)
            report.add(
                case.name,
                f"{result.height:,}",
                " + ".join(s["table"] for s in result.meta.sources),  # type: ignore[attr-defined]
                f"{fmt_ms(_p(cold, 0.5))} / {fmt_ms(_p(cold, 0.95))}",
                f"{fmt_ms(_p(direct_cold, 0.5))} / {fmt_ms(_p(direct_cold, 0.95))}",
                f"{_p(cold, 0.95) / _p(direct_cold, 0.95):.2f}x",
                f"{fmt_ms(_p(warm, 0.5))} / {fmt_ms(_p(warm, 0.95))}",
                f"{fmt_ms(_p(uncached, 0.5))} / {fmt_ms(_p(uncached, 0.95))}",
                f"{fmt_ms(_p(direct, 0.5))} / {fmt_ms(_p(direct, 0.95))}",
                f"{_p(warm, 0.95) / _p(direct, 0.95):.2f}x",
                f"{_p(uncached, 0.95) / _p(direct, 0.95):.2f}x",
            )
            say(f"{case.name}: warm p95 {fmt_ms(_p(warm, 0.95))} ms (median of cold "
                f"{fmt_ms(statistics.median(cold))} ms)")  # fmt: skip
        report.notes.append(
            "goals: p95 under 250 ms for the first case; the merge at most 1.5x the direct scan"
        )
        report.notes.append(f"machine: {machine()}")
        report.print(markdown=options.markdown)
    finally:
        if options.keep:
            say(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
