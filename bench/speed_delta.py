"""The speed layer's Delta table ``speed_1m``: cost of a flush, and cost of opening the table.

``python -m bench.speed_delta [options]``, in a scratch lake (a temporary directory):

1. **Upsert of one flush.** ``speed_1m`` is filled with ``--history-minutes`` of closed
   1-minute windows of ``--servers`` servers x 6 metrics (120 min x 60,000 rows = 7.2 M rows
   by default, in files of 10 minutes, as compaction leaves them). Then flushes of
   ``--flush-rows`` rows of the following minutes (10,000 = 1/6 of a minute, what the speed
   layer writes every 10 s; it appends them, and upserts only a restart's replay) are
   upserted, the variants taking turns:

   * ``upsert, prune_column``: ``fleetlens.lake.delta.upsert(..., prune_column="window_start")``;
   * ``upsert``: the same without ``prune_column`` (delta-rs still bounds the scan with the
     batch's key ranges, because ``upsert`` collects the batch: ``streamed_exec=False``);
   * ``delta-rs default merge + window_start range``: a MERGE with delta-rs's defaults
     (``streamed_exec=True``: no bound derived from the batch) plus the range predicate that
     ``prune_column`` adds: what ``prune_column`` is worth on its own;
   * ``delta-rs default merge`` (baseline): the same MERGE on the key only, which reads the
     whole table.

   Each figure is end to end: open the table, merge, commit (with the post-commit hook's
   checkpoints). A *replay* re-upserts a flush already written (all rows updated).

2. **Opening after a day of commits.** Two tables receive ``--commits`` commits (8,640 = one
   day at 10 s): ``configured`` has ``DEFAULT_PROPERTIES`` (a checkpoint every 50 commits,
   expired-log cleanup after each), ``baseline`` never gets a checkpoint. Committing through
   delta-rs costs ~70 ms a commit here and grows with the log (hours for 2 x 8,640), so the
   commits are written directly as log files: each a copy of a real delta-rs MERGE commit
   (commitInfo + one add action with statistics, a hard link to a real data file), with
   modification times 10 s apart ending now. For ``configured``, delta-rs itself writes the
   checkpoint (``create_checkpoint``) and cleans the log (``cleanup_metadata``) after every
   50th commit, as its post-commit hook does. Opening is timed at several log lengths, the
   median of ``--repeats`` runs (warm page cache): ``DeltaTable(uri)`` then
   ``.to_pyarrow_dataset()``, and ``pl.scan_delta(uri).head(1).collect()``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from datasketches import kll_doubles_sketch
from deltalake import DeltaTable, write_deltalake

from bench._common import NA, Report, fmt_ms, machine, say
from fleetlens.config import LakeSettings
from fleetlens.lake.delta import DEFAULT_PROPERTIES, ensure_table, upsert
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import SPEED_1M_SCHEMA, WINDOW_KEY

METRICS = ("cpu", "mem", "disk", "net_in", "net_out", "load")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = list(WINDOW_KEY)
US_PER_MINUTE = 60_000_000
NAIVE = "delta-rs default merge (baseline)"


# -- data ------------------------------------------------------------------------------------


class Windows:
    """Closed 1-minute windows of ``servers`` servers x 6 metrics, minute by minute."""

    def __init__(self, servers: int, *, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.per_minute = servers * len(METRICS)
        sketches = []
        for k in range(32):  # KLL sketches of 6 samples (10 s samples over a minute)
            sketch = kll_doubles_sketch(200)
            for value in self.rng.random(6) * 100 + k:
                sketch.update(float(value))
            sketches.append(sketch.serialize())
        n = self.per_minute
        server_ids = np.array([f"srv-{i:05d}" for i in range(servers)], dtype=object)
        tags = {
            "tenant": [f"tenant-{i % 20:02d}" for i in range(servers)],
            "region": [("eu-west", "us-east", "ap-south")[i % 3] for i in range(servers)],
            "env": [("prod", "staging")[i % 7 == 0] for i in range(servers)],
            "service": [f"svc-{i % 40:02d}" for i in range(servers)],
            "cluster": [f"cl-{i % 120:03d}" for i in range(servers)],
        }
        self.static = {
            "server_id": pa.array(np.repeat(server_ids, len(METRICS))),
            "metric": pa.array(np.tile(np.array(METRICS, dtype=object), servers)),
            **{
                k: pa.array(np.repeat(np.array(v, dtype=object), len(METRICS)))
                for k, v in tags.items()
            },
            "count": pa.array(np.full(n, 6, dtype=np.int64)),
            "sketch": pa.array(
                np.array(sketches, dtype=object)[self.rng.integers(0, len(sketches), n)],
                pa.binary(),
            ),
        }

    def minute(self, m: int) -> pa.Table:
        """The ``per_minute`` rows of minute ``m`` after T0."""
        n = self.per_minute
        start = int(T0.timestamp()) * 1_000_000 + m * US_PER_MINUTE

        def ts(offset_s: int) -> pa.Array:
            values = np.full(n, start + offset_s * 1_000_000, dtype=np.int64)
            return pa.array(values).cast(pa.timestamp("us", tz="UTC"))

        last = self.rng.random(n) * 100
        columns = {
            "window_start": ts(0),
            **self.static,
            "sum": pa.array(last * 6),
            "min": pa.array(last * 0.5),
            "max": pa.array(last * 1.5),
            "last": pa.array(last),
            "last_ts": ts(55),
            "p50": pa.array(last),
            "p95": pa.array(last * 1.3),
            "p99": pa.array(last * 1.45),
            "emitted_at": ts(95),
        }
        return pa.table({name: columns[name] for name in SPEED_1M_SCHEMA.names}).cast(
            SPEED_1M_SCHEMA
        )


# -- part 1: upserts -------------------------------------------------------------------------


def naive_merge(lake: Lake, name: str, rows: pa.Table, *, bounded: bool) -> dict[str, Any]:
    """The MERGE with delta-rs's defaults (streamed source); ``bounded`` adds the predicate
    ``upsert``'s ``prune_column="window_start"`` adds."""
    table = DeltaTable(lake.table_uri(name), storage_options=lake.storage_options or None)
    predicate = " AND ".join(f"target.`{c}` = source.`{c}`" for c in KEY)
    if bounded:
        low, high = (v.as_py() for v in pc.min_max(rows["window_start"].cast(pa.int64())).values())
        cast = "'Timestamp(Microsecond, Some(\"UTC\"))'"
        predicate += (
            f" AND target.`window_start` >= arrow_cast({low}, {cast})"
            f" AND target.`window_start` <= arrow_cast({high}, {cast})"
        )
    merger = table.merge(rows, predicate, source_alias="source", target_alias="target")
    return merger.when_matched_update_all().when_not_matched_insert_all().execute()


def timed(fn: Callable[[pa.Table], dict[str, Any]], rows: pa.Table) -> tuple[float, dict[str, Any]]:
    """Seconds taken by ``fn(rows)``, and its result."""
    started = time.perf_counter()
    metrics = fn(rows)
    return time.perf_counter() - started, metrics


def bench_upserts(args: argparse.Namespace, lake: Lake) -> Report:
    windows = Windows(args.servers)
    say(f"filling speed_1m: {args.history_minutes} min x {windows.per_minute:,} rows")
    ensure_table(lake, "speed_1m", schema=SPEED_1M_SCHEMA)
    uri = lake.table_uri("speed_1m")
    started = time.perf_counter()
    for first in range(0, args.history_minutes, 10):
        chunk = pa.concat_tables(
            windows.minute(m) for m in range(first, min(first + 10, args.history_minutes))
        )
        write_deltalake(uri, chunk, mode="append", storage_options=lake.storage_options or None)
    table = DeltaTable(uri)
    history_rows = table.count()
    say(
        f"filled in {time.perf_counter() - started:.0f} s: {history_rows:,} rows, "
        f"{len(table.file_uris())} files"
    )

    variants: dict[str, Callable[[pa.Table], dict[str, Any]]] = {
        "upsert, prune_column=window_start": lambda rows: upsert(
            lake, "speed_1m", rows, key=KEY, prune_column="window_start"
        ),
        "upsert, no prune_column": lambda rows: upsert(lake, "speed_1m", rows, key=KEY),
        "delta-rs default merge + window_start range": lambda rows: naive_merge(
            lake, "speed_1m", rows, bounded=True
        ),
        NAIVE: lambda rows: naive_merge(lake, "speed_1m", rows, bounded=False),
    }
    rounds = {name: args.rounds for name in variants}
    rounds[NAIVE] = args.naive_rounds
    times: dict[str, list[float]] = {name: [] for name in variants}
    replays: dict[str, list[float]] = {name: [] for name in variants}
    last_metrics: dict[str, dict[str, Any]] = {}
    flushes_per_minute = max(1, windows.per_minute // args.flush_rows)
    minute, part, current = args.history_minutes, 0, windows.minute(args.history_minutes)
    for r in range(max(rounds.values())):
        for name, fn in variants.items():
            if r >= rounds[name]:
                continue
            rows = current.slice(part * args.flush_rows, args.flush_rows)
            elapsed, metrics = timed(fn, rows)
            times[name].append(elapsed)
            last_metrics[name] = metrics
            if r < args.replays:
                replays[name].append(timed(fn, rows)[0])
            part += 1
            if part == flushes_per_minute:
                minute, part = minute + 1, 0
                current = windows.minute(minute)
        say(f"round {r + 1}: " + ", ".join(f"{fmt_ms(t[-1])} ms" for t in times.values() if t))

    report = Report(
        title=f"speed_1m: one flush of {args.flush_rows:,} rows into {history_rows:,} rows",
        columns=[
            "variant",
            "flushes",
            "median ms",
            "max ms",
            "replay median ms",
            "files scanned / skipped",
            "rows inserted",
        ],
    )
    for name in variants:
        m = last_metrics[name]
        report.add(
            name,
            len(times[name]),
            fmt_ms(statistics.median(times[name])),
            fmt_ms(max(times[name])),
            fmt_ms(statistics.median(replays[name])) if replays[name] else NA,
            f"{m.get('num_target_files_scanned')} / "
            f"{m.get('num_target_files_skipped_during_scan')}",
            f"{m.get('num_target_rows_inserted'):,}",
        )
    report.notes += [
        "end to end: open the table, MERGE, commit, post-commit hook (a checkpoint every "
        "50 commits); variants take turns, each flush is 1/6 of the next minute (new keys)",
        "replay: the same flush upserted again right after (all rows updated, the flush's "
        "file rewritten)",
        "files scanned / skipped: delta-rs merge metrics of the last flush (the baseline "
        "reports 0 scanned although it reads the whole table)",
    ]
    return report


# -- part 2: opening after a day of commits --------------------------------------------------


class LogWriter:
    """Appends copies of a real delta-rs commit to a table's log.

    ``replace`` commits add a new file and remove the previous one (the table keeps one
    active file, the log grows by one add and one tombstone a commit); ``append`` commits
    only add one (one more active file a commit).
    """

    def __init__(
        self, uri: str, template: list[dict[str, Any]], data_file: Path, *, replace: bool
    ) -> None:
        self.dir = Path(uri)
        self.log = self.dir / "_delta_log"
        self.template = [a for a in template if replace or "remove" not in a]
        self.replace = replace
        self.seed = self.dir / "seed.parquet"
        shutil.copyfile(data_file, self.seed)
        self.version = DeltaTable(uri).version()
        self.previous: str | None = None

    def commit(self, when_s: float) -> int:
        """Write the next version, as committed at ``when_s`` (epoch seconds)."""
        version = self.version + 1
        path = f"part-{version:06d}-c000.snappy.parquet"
        os.link(self.seed, self.dir / path)
        millis = int(when_s * 1000)
        lines = []
        for template in self.template:
            action = json.loads(json.dumps(template))
            if "commitInfo" in action:
                action["commitInfo"]["timestamp"] = millis
                action["commitInfo"]["readVersion"] = version - 1
            elif "add" in action:
                action["add"]["path"] = path
                action["add"]["modificationTime"] = millis
            elif "remove" in action:
                if self.previous is None:
                    continue
                action["remove"]["path"] = self.previous
                action["remove"]["deletionTimestamp"] = millis
            lines.append(json.dumps(action, separators=(",", ":")))
        target = self.log / f"{version:020d}.json"
        with target.open("x") as out:
            out.write("\n".join(lines) + "\n")
        os.utime(target, (when_s, when_s))
        self.version = version
        if self.replace:
            self.previous = path
        return version

    @property
    def active_files(self) -> int:
        return 1 if self.replace else self.version


def merge_commit_template(lake: Lake) -> tuple[list[dict[str, Any]], Path]:
    """A real delta-rs upsert commit that rewrites one file (a replayed flush), and the
    data file it adds."""
    ensure_table(lake, "template", schema=SPEED_1M_SCHEMA)
    rows = Windows(2).minute(0)
    upsert(lake, "template", rows, key=KEY, prune_column="window_start")
    upsert(lake, "template", rows, key=KEY, prune_column="window_start")
    uri = Path(lake.table_uri("template"))
    actions = [json.loads(line) for line in (uri / "_delta_log" / f"{2:020d}.json").open()]
    kinds = sorted(next(iter(a)) for a in actions)
    if kinds != ["add", "commitInfo", "remove"]:
        raise RuntimeError(f"unexpected template commit: {kinds}")
    add = next(a["add"] for a in actions if "add" in a)
    return actions, uri / add["path"]


def time_open(uri: str, repeats: int) -> tuple[float, float, float]:
    """Median seconds of DeltaTable(uri), of that + to_pyarrow_dataset(), and of
    pl.scan_delta(uri).head(1).collect()."""
    table_s, arrow_s, polars_s = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        table = DeltaTable(uri)
        table_s.append(time.perf_counter() - started)
        table.to_pyarrow_dataset()
        arrow_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        pl.scan_delta(uri).head(1).collect()
        polars_s.append(time.perf_counter() - started)
    return statistics.median(table_s), statistics.median(arrow_s), statistics.median(polars_s)


def log_stats(uri: str) -> tuple[int, int]:
    """(files in _delta_log, commits since the last checkpoint)."""
    log = Path(uri) / "_delta_log"
    commits = [int(f.stem) for f in log.glob("*.json")]
    last = log / "_last_checkpoint"
    checkpoint = json.loads(last.read_text())["version"] if last.is_file() else -1
    return sum(1 for _ in log.iterdir()), sum(1 for v in commits if v > checkpoint)


def bench_open(args: argparse.Namespace, lake: Lake) -> Report:
    template, data_file = merge_commit_template(lake)
    interval = int(DEFAULT_PROPERTIES["delta.checkpointInterval"])
    configured = {"configured", "append_only"}
    ensure_table(lake, "configured", schema=SPEED_1M_SCHEMA)
    ensure_table(lake, "append_only", schema=SPEED_1M_SCHEMA)
    # delta-rs's defaults; no checkpoint is written since commits bypass its post-commit hook.
    DeltaTable.create(lake.table_uri("baseline"), schema=SPEED_1M_SCHEMA)
    writers = {
        name: LogWriter(lake.table_uri(name), template, data_file, replace=replace)
        for name, replace in [
            ("configured", True),
            ("baseline", True),
            ("append_only", False),
        ]
    }
    limits = {"configured": args.commits, "baseline": args.commits}
    limits["append_only"] = min(args.append_commits, args.commits)
    marks = sorted({m for m in args.marks if m < args.commits} | {args.commits})
    report = Report(
        title=f"Opening speed_1m after N commits (10 s apart), median of {args.repeats}",
        columns=[
            "table",
            "commits",
            "active files",
            "log files",
            "commits since checkpoint",
            "DeltaTable ms",
            "+ to_pyarrow_dataset ms",
            "pl.scan_delta head(1) ms",
        ],
    )
    checkpoint_s: dict[str, list[float]] = {name: [] for name in configured}
    now = time.time()
    started = time.perf_counter()
    for n in range(1, args.commits + 1):
        when = now - (args.commits - n) * 10
        for name, writer in writers.items():
            if n > limits[name]:
                continue
            version = writer.commit(when)
            if name in configured and (version + 1) % interval == 0:
                # What the post-commit hook does (delta.enableExpiredLogCleanup=true).
                t = time.perf_counter()
                table = DeltaTable(lake.table_uri(name))
                table.create_checkpoint()
                table.cleanup_metadata()
                checkpoint_s[name].append(time.perf_counter() - t)
        if n in marks or n == limits["append_only"]:
            say(f"{n:,} commits written ({time.perf_counter() - started:.0f} s); timing opens")
            for name, writer in writers.items():
                if n > limits[name] or (n not in marks and n != limits[name]):
                    continue
                uri = lake.table_uri(name)
                table = DeltaTable(uri)
                if table.version() != n or len(table.file_uris()) != writer.active_files:
                    raise RuntimeError(f"{name}: version {table.version()}, expected {n}")
                open_s, arrow_s, polars_s = time_open(uri, args.repeats)
                files, since = log_stats(uri)
                report.add(
                    name,
                    f"{n:,}",
                    f"{writer.active_files:,}",
                    f"{files:,}",
                    since,
                    fmt_ms(open_s),
                    fmt_ms(arrow_s),
                    fmt_ms(polars_s),
                )
    report.rows.sort(key=lambda row: (row[0], int(row[1].replace(",", ""))))
    sizes = {
        name: json.loads(
            (Path(lake.table_uri(name)) / "_delta_log" / "_last_checkpoint").read_text()
        ).get("sizeInBytes")
        for name in configured
    }
    report.notes += [
        f"configured: {', '.join(f'{k}={v}' for k, v in DEFAULT_PROPERTIES.items())}",
        "baseline: delta-rs defaults, and no checkpoint is ever written",
        "configured and baseline: every commit is a replayed flush (adds one file, removes "
        "the previous one): one active file, the log grows by one add and one tombstone a "
        "commit; append_only: configured too, but every commit adds a file and none is "
        "compacted (no maintain() all day)",
        "checkpoint + log cleanup by delta-rs, paid by every "
        f"{interval}th commit: "
        + "; ".join(
            f"{name}: median {fmt_ms(statistics.median(checkpoint_s[name]))} ms, last "
            f"{fmt_ms(checkpoint_s[name][-1])} ms ({sizes[name]:,} bytes)"
            for name in sorted(configured)
            if checkpoint_s[name]
        ),
        "commits are copies of a real delta-rs MERGE commit written as log files, as "
        "explained in the module docstring; log retention is 1 day, so the cleanup deletes "
        "nothing within the first day",
    ]
    return report


# -- main ------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.speed_delta",
        description="Cost of the speed layer's Delta writes (upsert of one flush) and of "
        "opening speed_1m after a day of commits, with a baseline each.",
    )
    parser.add_argument("which", nargs="?", choices=["all", "upsert", "open"], default="all")
    parser.add_argument("--servers", type=int, default=10_000, help="servers (10000)")
    parser.add_argument(
        "--history-minutes", type=int, default=120, help="minutes already in the table (120)"
    )
    parser.add_argument("--flush-rows", type=int, default=10_000, help="rows per flush (10000)")
    parser.add_argument("--rounds", type=int, default=12, help="flushes per upsert variant (12)")
    parser.add_argument(
        "--naive-rounds", type=int, default=3, help="flushes of the naive merge baseline (3)"
    )
    parser.add_argument("--replays", type=int, default=3, help="flushes replayed per variant (3)")
    parser.add_argument("--commits", type=int, default=8_640, help="commits to open after (8640)")
    parser.add_argument(
        "--marks",
        type=_ints,
        default=[1_000, 2_000, 4_000],
        help="also time opens at (1000,2000,4000)",
    )
    parser.add_argument(
        "--append-commits",
        type=int,
        default=2_000,
        help="commits of the append-only table (2000): opening it grows with its files",
    )
    parser.add_argument("--repeats", type=int, default=5, help="opens per measurement (5)")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    parser.add_argument("--keep", action="store_true", help="keep the scratch lake")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.monotonic()
    say(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC — {machine()}")
    root = Path(tempfile.mkdtemp(prefix="fleetlens-bench-delta-"))
    lake = Lake(LakeSettings(root=str(root / "lake")))
    try:
        reports = []
        if args.which in ("all", "upsert"):
            reports.append(bench_upserts(args, lake))
            reports[-1].print(markdown=args.markdown)
        if args.which in ("all", "open"):
            reports.append(bench_open(args, lake))
            reports[-1].print(markdown=args.markdown)
    finally:
        if args.keep:
            say(f"scratch lake kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    say(f"done in {timedelta(seconds=round(time.monotonic() - started))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
