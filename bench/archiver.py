"""Archiver throughput: ``python -m fleetlens archive --exit-when-idle N`` over a full topic.

The metrics topic is pre-filled with ``--records`` canonical events (``encode_event`` of
``build_payloads`` output for ``--archive-servers`` servers, consecutive 10 s ticks ending a
minute ago, so every record passes the contract), by ``--prefill-procs`` producer processes.
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

import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import psutil
import pyarrow.compute as pc
import pyarrow.dataset as ds

from bench._common import (
    Child,
    CpuMeter,
    Report,
    Scratch,
    fmt_cores,
    fmt_int,
    other_load,
    say,
)
from fleetlens.config import load_settings
from fleetlens.contract import Event, encode_event
from fleetlens.kafka.clients import all_partitions, make_consumer, make_producer
from fleetlens.lake.paths import Lake
from fleetlens.simulator.fleet import METRICS, Fleet, FleetSpec
from fleetlens.simulator.live import build_payloads

POINTS_PER_ROW = len(METRICS)
NA = "n/a"


@dataclass
class ArchiverOptions:
    """Knobs of the archiver benchmark (see ``python -m bench --help``)."""

    records: int = 300_000
    servers: int = 10_000
    idle_s: float = 3.0
    prefill_procs: int = 2
    keep: bool = False


# -- pre-fill (runs in worker processes) ------------------------------------------------------


def _slot_plan(servers: int, records: int) -> tuple[int, int]:
    """(newest slot, number of slots): enough 10 s ticks of ``servers`` for ``records``."""
    newest = int(time.time()) // 10 * 10 - 60
    # About 1 % of servers are silent at any time; ask for a few ticks more than needed.
    slots = -(-records // servers) + 2
    return newest, slots


def _prefill_worker(servers: int, slots: list[int], quota: int, queue: Any) -> None:
    """Produce at most ``quota`` events of the given ticks; report how many."""
    try:
        settings = load_settings()  # the FLEETLENS_* environment of the scratch
        fleet = Fleet(
            FleetSpec.from_settings(
                settings.simulator,
                servers=servers,
                seed=7,
                anchor_s=int(time.time()) // 86_400 * 86_400,
            )
        )
        topic = settings.kafka.topics.metrics.name
        producer = make_producer(settings.kafka)
        sent = 0
        try:
            for slot in slots:
                for p in build_payloads(fleet, slot, 10):
                    if sent >= quota:
                        break
                    event = Event(
                        event_id=p["event_id"],
                        server_id=p["server_id"],
                        ts=p["ts"],
                        metrics=p["metrics"],
                        tags=p["tags"],
                    )
                    producer.send(topic, key=event.server_id.encode(), value=encode_event(event))
                    sent += 1
            producer.flush()
        finally:
            producer.close()
        queue.put(sent)
    except Exception as error:  # reported to the parent
        queue.put(RuntimeError(f"pre-fill worker failed: {error!r}"))


def prefill(options: ArchiverOptions) -> int:
    """Fill the metrics topic with ``options.records`` events; return how many were sent."""
    newest, count = _slot_plan(options.servers, options.records)
    slots = [newest - 10 * k for k in range(count)]
    procs = max(1, options.prefill_procs)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    per_proc = [options.records // procs + (k < options.records % procs) for k in range(procs)]
    workers = [
        ctx.Process(
            target=_prefill_worker,
            args=(options.servers, slots[k::procs], per_proc[k], queue),
            daemon=True,
        )
        for k in range(procs)
    ]
    for worker in workers:
        worker.start()
    try:
        results = [queue.get(timeout=600) for _ in workers]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.terminate()
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise errors[0]
    return int(sum(results))


# -- baseline: bare consumer ------------------------------------------------------------------


def consume_baseline(scratch: Scratch, total: int, *, decode: bool) -> dict[str, float]:
    """Read the whole metrics topic with ``make_consumer`` settings; JSON-decode each value."""
    settings = scratch.settings
    consumer = make_consumer(settings.kafka, group_id=f"bench-baseline-{os.getpid()}")
    decoder = msgspec.json.Decoder()
    try:
        partitions = all_partitions(consumer, settings.kafka.topics.metrics.name)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        seen = decoded = 0
        started = time.monotonic()
        cpu0 = time.process_time()
        deadline = started + 600
        while seen < total and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=settings.archive.poll_timeout_ms)
            for records in batch.values():
                seen += len(records)
                if decode:
                    for record in records:
                        decoder.decode(record.value)
                        decoded += 1
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu0
    finally:
        consumer.close(autocommit=False)
    return {"records": seen, "seconds": elapsed, "cpu": cpu / elapsed, "decoded": decoded}


# -- the archiver child -----------------------------------------------------------------------


class _RssSampler(threading.Thread):
    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self._proc = psutil.Process(pid)
        self._interval = interval_s
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.peak = max(self.peak, self._proc.memory_info().rss)
            except psutil.Error:
                return
            self._done.wait(self._interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def _log_events(child: Child) -> list[dict[str, Any]]:
    events = []
    for line in child.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(msgspec.json.decode(line))
            except msgspec.DecodeError:
                continue
    return events


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def run_archiver(scratch: Scratch, idle_s: float) -> dict[str, Any]:
    """Run ``fleetlens archive --exit-when-idle idle_s`` to completion and measure it."""
    spawned = time.monotonic()
    child = scratch.spawn("archiver", ["archive", "--exit-when-idle", f"{idle_s:g}"])
    sampler = _RssSampler(child.pid)
    sampler.start()
    meter = CpuMeter({"broker": scratch.broker_pid})
    meter.start()
    # wait4 gives the child's own peak RSS and CPU time; keep Popen's bookkeeping in step.
    _, status, usage = os.wait4(child.pid, 0)
    exited = time.monotonic()
    child.process.returncode = os.waitstatus_to_exitcode(status)
    cpu = meter.stop()
    peak_sampled = sampler.stop()
    stdout = child.process.stdout.read() if child.process.stdout else b""
    if child.process.returncode != 0:
        raise RuntimeError(f"archiver exited with {child.process.returncode}:\n{child.log_tail()}")
    stats = msgspec.json.decode(stdout.strip().splitlines()[-1])
    events = _log_events(child)
    started = next(e for e in events if e.get("event") == "archiver.started")
    flushes = [e for e in events if e.get("event") == "archiver.flushed"]
    wall = exited - spawned
    own_cpu = usage.ru_utime + usage.ru_stime
    return {
        "stats": stats,
        "wall": wall,
        "busy": wall - idle_s,
        # From "archiver.started" (consumer ready, seeks done) to the end of the last flush,
        # minus the idle wait that triggers the last flush: the steady-state processing time.
        "active": _ts(flushes[-1]) - _ts(started) - idle_s if flushes else float("nan"),
        "flush_seconds": sum(float(f.get("seconds", 0)) for f in flushes),
        "flushes": len(flushes),
        "peak_rss_sampled": peak_sampled,
        "peak_rss_exact": usage.ru_maxrss * 1024,
        "cpu": own_cpu / max(wall - idle_s, 1e-9),
        "broker_cpu": cpu["broker"],
        "other_load": other_load(cpu, own_cpu / wall),
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
        say(
            f"pre-filling {options.records:,} records with {options.prefill_procs} producer "
            "process(es)"
        )
        t0 = time.monotonic()
        sent = prefill(options)
        on_topic = scratch.topic_records()
        say(
            f"pre-filled {sent:,} records in {time.monotonic() - t0:.0f} s; {on_topic:,} on the "
            "topic"
        )
        if on_topic != sent:
            raise RuntimeError(f"sent {sent} records but the topic holds {on_topic}")

        say("baseline: bare consumer, poll + JSON decode")
        meter = CpuMeter({"broker": scratch.broker_pid})
        meter.start()
        base = consume_baseline(scratch, on_topic, decode=True)
        cpu = meter.stop()
        rate = base["records"] / base["seconds"]
        report.add(
            "baseline: bare consumer (make_consumer), poll + JSON decode",
            fmt_int(rate),
            NA,
            NA,
            f"{base['seconds']:.1f}",
            fmt_int(base["records"]),
            NA,
            NA,
            fmt_cores(base["cpu"]),
            fmt_cores(cpu["broker"]),
            other_load(cpu),
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
