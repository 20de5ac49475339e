"""Archiver throughput: ``python -m fleetlens archive --exit-when-idle N`` over a full topic.

The metrics topic is pre-filled with ``--records`` canonical events of ``--archive-servers``
simulated servers by ``--prefill-procs`` producer processes (:func:`bench._topic.prefill`).
Then, in the same run:

* ``baseline``: a bare kafka-python consumer made by ``make_consumer`` (the archiver's
  consumer settings) reads the whole topic, only polling and JSON-decoding
  (``msgspec.json.decode``, untyped): the ceiling of what the archiver could do in one Python
  process with this client.
* ``archiver``: the real ``fleetlens archive`` child process, timed from spawn to exit, minus
  the idle wait; its peak RSS is sampled with psutil (and read exactly from ``wait4``). The
  landing zone must then hold exactly one row per record: as many rows as records, and as many
  distinct ``(kafka_partition, kafka_offset)`` pairs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc
import pyarrow.dataset as ds

from bench._common import (
    NA,
    Report,
    Scratch,
    fmt_cores,
    fmt_int,
    say,
)
from bench._topic import baseline_cells, consume_baseline, log_ts, prefill, run_to_exit
from fleetlens.lake.paths import Lake
from fleetlens.simulator.fleet import METRICS

POINTS_PER_ROW = len(METRICS)


@dataclass
class ArchiverOptions:
    """Knobs of the archiver benchmark (see ``python -m bench --help``)."""

    records: int = 300_000
    servers: int = 10_000
    idle_s: float = 3.0
    prefill_procs: int = 2
    keep: bool = False


# -- the archiver child -----------------------------------------------------------------------


def run_archiver(scratch: Scratch, idle_s: float) -> dict[str, Any]:
    """Run ``fleetlens archive --exit-when-idle idle_s`` to completion and measure it."""
    result = run_to_exit(
        scratch, "archiver", ["archive", "--exit-when-idle", f"{idle_s:g}"], idle_s=idle_s
    )
    events = result["events"]
    started = next(e for e in events if e.get("event") == "archiver.started")
    flushes = [e for e in events if e.get("event") == "archiver.flushed"]
    return result | {
        # From "archiver.started" (consumer ready, seeks done) to the end of the last flush,
        # minus the idle wait that triggers the last flush: the steady-state processing time.
        "active": log_ts(flushes[-1]) - log_ts(started) - idle_s if flushes else float("nan"),
        "flush_seconds": sum(float(f.get("seconds", 0)) for f in flushes),
        "flushes": len(flushes),
    }


def landing_counts(scratch: Scratch) -> dict[str, int]:
    """Rows, distinct Kafka positions and files in the landing zone."""
    lake = Lake(scratch.settings.lake)
    root = lake.path(Lake.LANDING_METRICS)
    if not os.path.isdir(root):
        return {"rows": 0, "positions": 0, "event_ids": 0, "files": 0}
    dataset = ds.dataset(root, format="parquet", partitioning=None)
    table = dataset.to_table(columns=["event_id", "kafka_partition", "kafka_offset"])
    positions = pc.add(
        pc.multiply(pc.cast(table["kafka_partition"], "int64"), 1 << 40), table["kafka_offset"]
    )
    return {
        "rows": table.num_rows,
        "positions": len(pc.unique(positions)),
        "event_ids": len(pc.unique(table["event_id"])),
        "files": len(dataset.files),
    }


# -- the benchmark ----------------------------------------------------------------------------


def run(options: ArchiverOptions) -> Report:
    """Run the archiver benchmark and return its table."""
    report = Report(
        title=(
            f"Archiver: {options.records:,} records pre-filled on the metrics topic "
            f"({options.servers:,} servers)"
        ),
        columns=[
            "configuration",
            "records/s",
            "rows/s",
            "points/s",
            "seconds",
            "records",
            "rows",
            "peak RSS",
            "process CPU",
            "broker CPU",
            "other load",
        ],
    )
    with Scratch("archiver", keep=options.keep) as scratch:
        on_topic = prefill(
            scratch,
            records=options.records,
            servers=options.servers,
            procs=options.prefill_procs,
        )
        say("baseline: bare consumer, poll + JSON decode")
        base = consume_baseline(
            scratch, on_topic, decode=True, poll_timeout_ms=scratch.settings.archive.poll_timeout_ms
        )
        report.add(
            "baseline: bare consumer (make_consumer), poll + JSON decode",
            fmt_int(base["rate"]),
            NA,
            NA,
            *baseline_cells(base),
        )
        if base["records"] != on_topic:
            report.notes.append(f"baseline read {base['records']} of {on_topic} records")

        say(f"archiver: fleetlens archive --exit-when-idle {options.idle_s:g}")
        result = run_archiver(scratch, options.idle_s)
        stats = result["stats"]
        landing = landing_counts(scratch)
        for label, seconds in (
            ("archiver, spawn to exit minus idle", result["busy"]),
            ("archiver, steady state (started to last flush, minus idle)", result["active"]),
        ):
            report.add(
                label,
                fmt_int(stats["records"] / seconds),
                fmt_int(stats["rows"] / seconds),
                fmt_int(stats["rows"] * POINTS_PER_ROW / seconds),
                f"{seconds:.1f}",
                fmt_int(stats["records"]),
                fmt_int(stats["rows"]),
                f"{result['peak_rss_sampled'] / 2**20:,.0f} MiB",
                fmt_cores(result["cpu"]),
                fmt_cores(result["broker_cpu"]),
                result["other_load"],
            )
        ok = (
            stats["records"] == on_topic
            and landing["rows"] == on_topic
            and landing["positions"] == on_topic
            and stats["dlq"] == 0
        )
        report.notes.append(
            ("✓ " if ok else "✗ MISMATCH: ")
            + f"records on topic {on_topic:,}; archiver consumed {stats['records']:,}, wrote "
            f"{stats['rows']:,} rows, {stats['dlq']} to the DLQ, in {stats['flushes']} flushes "
            f"/ {stats['files']} files; landing zone holds {landing['rows']:,} rows, "
            f"{landing['positions']:,} distinct (partition, offset), {landing['event_ids']:,} "
            f"distinct event ids, {landing['files']} files"
        )
        report.notes.append(
            f"archiver: wall {result['wall']:.1f} s from spawn to exit, of which "
            f"{options.idle_s:g} s idle wait; flushes took {result['flush_seconds']:.1f} s in "
            "total; peak RSS "
            f"{result['peak_rss_exact'] / 2**20:,.0f} MiB exact (wait4), "
            f"{result['peak_rss_sampled'] / 2**20:,.0f} MiB sampled every 50 ms (psutil)"
        )
        report.notes.append(
            "process CPU: share of one core over the measured seconds (100 % = one core); "
            "the archiver's is its total CPU time (wait4) over spawn-to-exit minus idle; other "
            "load: CPU used meanwhile by processes this benchmark did not start, and steal"
        )
    return report
