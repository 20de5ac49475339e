"""What the consumer benchmarks (archiver, speed layer) share: a pre-filled metrics topic, the
bare-consumer baseline, a peak-RSS sampler and the child's JSON log events.

Pre-fill: ``records`` canonical events (``encode_event`` of ``build_payloads`` output) of
``servers`` simulated servers, consecutive 10 s ticks in ascending event time ending a minute
ago (so every record passes the contract), produced by ``procs`` worker processes. Each
worker owns the servers of some partitions (by the producer's default partitioner on the
``server_id`` key), so every partition is written by one producer, in event-time order, as
agents posting live would leave it: no record is late.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec
import psutil
from kafka.partitioner.default import murmur2

from bench._common import (
    NA,
    Child,
    CpuMeter,
    Scratch,
    fmt_cores,
    fmt_int,
    other_load,
    say,
    tree_rss,
)
from fleetlens.config import load_settings
from fleetlens.contract import Event, encode_event
from fleetlens.kafka.clients import all_partitions, make_consumer, make_producer
from fleetlens.simulator.fleet import Fleet, FleetSpec
from fleetlens.simulator.live import build_payloads

__all__ = [
    "RssSampler",
    "baseline_cells",
    "consume_baseline",
    "log_events",
    "log_ts",
    "prefill",
    "run_to_exit",
]

TICK_S = 10


# -- pre-fill (runs in worker processes) ------------------------------------------------------


def _slot_plan(servers: int, records: int) -> list[int]:
    """Enough 10 s ticks of ``servers`` for ``records``, oldest first, the newest a minute ago."""
    newest = int(time.time()) // TICK_S * TICK_S - 60
    # About 1 % of servers are silent at any time; plan a few ticks more than needed.
    count = -(-records * 103 // (servers * 100)) + 2
    return [newest - TICK_S * k for k in reversed(range(count))]


def _prefill_worker(
    servers: int, slots: list[int], worker: int, procs: int, records: int, queue: Any
) -> None:
    """Produce this worker's share of ``records`` (its share of the servers, rounded up),
    from the servers of its partitions; report how many."""
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
            partitions = sorted(producer.partitions_for(topic))
            mine = {  # the producer's default partitioner on the key
                server_id
                for server_id in fleet.server_ids
                if partitions[(murmur2(server_id.encode()) & 0x7FFFFFFF) % len(partitions)] % procs
                == worker
            }
            quota = -(-records * len(mine) // servers)
            for slot in slots:
                if sent >= quota:
                    break
                for p in build_payloads(fleet, slot, TICK_S):
                    if sent >= quota:
                        break
                    if p["server_id"] not in mine:
                        continue
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


def _produce(*, records: int, servers: int, procs: int) -> int:
    """Run the pre-fill workers; return how many events they sent."""
    slots = _slot_plan(servers, records)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [
        ctx.Process(
            target=_prefill_worker,
            args=(servers, slots, k, procs, records, queue),
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


def prefill(scratch: Scratch, *, records: int, servers: int, procs: int) -> int:
    """Fill the scratch's metrics topic with at least ``records`` events (each worker rounds
    its share up); return how many the topic holds (checked against how many were sent)."""
    procs = max(1, procs)
    say(f"pre-filling {records:,} records of {servers:,} servers with {procs} producer process(es)")
    started = time.monotonic()
    sent = _produce(records=records, servers=servers, procs=procs)
    on_topic = scratch.topic_records()
    say(
        f"pre-filled {sent:,} records in {time.monotonic() - started:.0f} s; "
        f"{on_topic:,} on the topic"
    )
    if on_topic != sent:
        raise RuntimeError(f"sent {sent} records but the topic holds {on_topic}")
    return on_topic


# -- baseline: bare consumer ------------------------------------------------------------------


def consume_baseline(
    scratch: Scratch, total: int, *, decode: bool, poll_timeout_ms: int
) -> dict[str, Any]:
    """Read the whole metrics topic with ``make_consumer`` settings (the services' consumer);
    JSON-decode each value (``msgspec.json.decode``, untyped) if ``decode``. Returns records,
    seconds, the consumer's CPU (share of a core), the broker's, and the other load."""
    settings = scratch.settings
    consumer = make_consumer(settings.kafka, group_id=f"bench-baseline-{os.getpid()}")
    decoder = msgspec.json.Decoder()
    meter = CpuMeter({"broker": scratch.broker_pid})
    try:
        partitions = all_partitions(consumer, settings.kafka.topics.metrics.name)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        seen = decoded = 0
        meter.start()
        started = time.monotonic()
        cpu0 = time.process_time()
        deadline = started + 600
        while seen < total and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=poll_timeout_ms)
            for records in batch.values():
                seen += len(records)
                if decode:
                    for record in records:
                        decoder.decode(record.value)
                        decoded += 1
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu0
        shares = meter.stop()
    finally:
        consumer.close(autocommit=False)
    return {
        "records": seen,
        "seconds": elapsed,
        "rate": seen / elapsed,
        "cpu": cpu / elapsed,
        "decoded": decoded,
        "broker_cpu": shares["broker"],
        "other_load": other_load(shares),
    }


def baseline_cells(base: dict[str, Any]) -> list[str]:
    """A baseline's cells from ``seconds`` on, in the column order the benchmarks' tables
    share: seconds, records, two not applicable, process CPU, broker CPU, other load."""
    return [
        f"{base['seconds']:.1f}",
        fmt_int(base["records"]),
        NA,
        NA,
        fmt_cores(base["cpu"]),
        fmt_cores(base["broker_cpu"]),
        base["other_load"],
    ]


# -- the child under test ---------------------------------------------------------------------


class RssSampler(threading.Thread):
    """Samples the RSS of a process and its children (summed) every ``interval_s``;
    :meth:`stop` returns the peak."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self._proc = psutil.Process(pid)
        self._interval = interval_s
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            if not self._proc.is_running():
                return
            self.peak = max(self.peak, tree_rss(self._proc))
            self._done.wait(self._interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def log_events(child: Child) -> list[dict[str, Any]]:
    """The JSON log lines a child wrote to its log file, decoded."""
    events = []
    for line in child.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(msgspec.json.decode(line))
            except msgspec.DecodeError:
                continue
    return events


def log_ts(event: dict[str, Any]) -> float:
    """Epoch seconds of a log event's ``timestamp``."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def run_to_exit(
    scratch: Scratch,
    name: str,
    args: list[str],
    *,
    idle_s: float,
    python_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``python [python_args] -m fleetlens <args>`` (which exits after ``idle_s`` without
    records) to completion; its stats (the last stdout line, JSON), log events, wall time, CPU
    and peak RSS."""
    spawned = time.monotonic()
    child = scratch.spawn(name, args, env=env, python_args=python_args)
    sampler = RssSampler(child.pid)
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
        raise RuntimeError(f"{name} exited with {child.process.returncode}:\n{child.log_tail()}")
    wall = exited - spawned
    own_cpu = usage.ru_utime + usage.ru_stime
    return {
        "stats": msgspec.json.decode(stdout.strip().splitlines()[-1]),
        "events": log_events(child),
        "wall": wall,
        "busy": wall - idle_s,
        "peak_rss_sampled": peak_sampled,
        "peak_rss_exact": usage.ru_maxrss * 1024,
        "cpu_seconds": own_cpu,
        "cpu": own_cpu / max(wall - idle_s, 1e-9),
        "broker_cpu": cpu["broker"],
        "other_load": other_load(cpu, own_cpu / wall),
    }
