"""The demo: the whole ingest path on this machine, with a simulated fleet.

Broker (embedded), API (ingest and alerts), archiver, speed layer and notifier run as their
own ``fleetlens`` processes, exactly as they would be deployed; the simulator runs here. At
the end the pipeline is drained (the archiver and the speed layer have committed everything
the topic holds) and a summary is returned.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import tenacity
from kafka import TopicPartition
from rich.console import Console

from fleetlens.config import Settings
from fleetlens.kafka.broker import EmbeddedBroker
from fleetlens.kafka.clients import (
    all_partitions,
    log_end_offsets,
    make_consumer,
    make_producer,
)
from fleetlens.kafka.dlq import read_dlq_headers
from fleetlens.lake.paths import Lake
from fleetlens.simulator.fleet import Fleet, FleetSpec
from fleetlens.simulator.live import FaultSpec, run_live

__all__ = ["DEMO_FAULTS", "ServiceProcess", "count_archived", "run_demo"]

#: Faults the demo injects unless asked for a clean run.
DEMO_FAULTS = FaultSpec(
    late=0.02,
    late_mean_s=20,
    duplicates=0.01,
    out_of_order=0.05,
    malformed=0.005,
    raw_malformed=2,
)


def _dashboard_url(settings: Settings, url: str) -> str:
    """The dashboard's address; on the embedded profile with a development token in the
    fragment (which the browser keeps to itself), so the page opens signed in."""
    tokens = settings.collector.tokens
    if settings.profile != "embedded" or not tokens:
        return f"{url}/"
    tenant = sorted(tokens)[0]
    return f"{url}/#token={tokens[tenant].get_secret_value()}"


class ServiceProcess:
    """A ``fleetlens`` subcommand running as a child process, logging to a file."""

    def __init__(self, name: str, args: list[str], *, log_dir: Path, env: dict[str, str]) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as log_out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleetlens", *args],
                stdin=subprocess.DEVNULL,
                stdout=log_out,
                stderr=subprocess.STDOUT,
                env=os.environ | env,
                # Ctrl-C reaches only the demo, which drains the pipeline before stopping these.
                start_new_session=True,
            )

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it does not finish in time; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        return self.process.returncode


def count_archived(lake: Lake, *, since_ms: int) -> int:
    """Landing rows that came through Kafka at or after ``since_ms`` (their ``ingest_ts``)."""
    pattern = lake.uri(Lake.LANDING_METRICS, "**", "*.parquet")
    try:
        frame = (
            pl.scan_parquet(pattern, hive_partitioning=False, storage_options=lake.polars_options)
            .filter(
                pl.col("kafka_offset").is_not_null()
                & (pl.col("ingest_ts").dt.epoch("ms") >= since_ms)
            )
            .select(pl.len())
            .collect()
        )
    except (FileNotFoundError, pl.exceptions.ComputeError):
        return 0
    return int(frame.item())


def _end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = make_consumer(settings.kafka, group_id=None)
    try:
        partitions = all_partitions(consumer, topic)
        return {tp.partition: off for tp, off in log_end_offsets(consumer, partitions).items()}
    finally:
        consumer.close()


def _wait_committed(
    settings: Settings,
    group_id: str,
    service: ServiceProcess,
    timeout_s: float,
    *,
    topic: str | None = None,
) -> None:
    """Wait until a consumer group's committed offsets reach the log end of every partition
    of ``topic`` (default: the metrics topic)."""
    topic = topic or settings.kafka.topics.metrics.name
    ends = _end_offsets(settings, topic)
    consumer = make_consumer(settings.kafka, group_id=group_id)
    try:
        for attempt in tenacity.Retrying(
            stop=tenacity.stop_after_delay(timeout_s),
            wait=tenacity.wait_fixed(0.5),
            retry=tenacity.retry_if_exception_type(TimeoutError),
            reraise=True,
        ):
            with attempt:
                if service.process.poll() is not None:
                    raise RuntimeError(f"{service.name} exited; see {service.log_path}")
                behind = {
                    p: end - (consumer.committed(TopicPartition(topic, p)) or 0)
                    for p, end in ends.items()
                }
                if any(v > 0 for v in behind.values()):
                    raise TimeoutError(f"{service.name} still behind: {behind}")
    finally:
        consumer.close()


def _dead_letters(settings: Settings, since: dict[int, int]) -> dict[str, Any]:
    """Records dead-lettered since the ``since`` offsets: distinct source records, and per stage."""
    consumer = make_consumer(settings.kafka, group_id=None)
    try:
        partitions = all_partitions(consumer, settings.kafka.topics.dlq.name)
        ends = log_end_offsets(consumer, partitions)
        for tp in partitions:
            consumer.seek(tp, since.get(tp.partition, 0))
        sources: set[tuple[str, str]] = set()
        stages: dict[str, int] = {}
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    headers = read_dlq_headers(record.headers)
                    sources.add((headers["source.partition"], headers["source.offset"]))
                    stages[headers["stage"]] = stages.get(headers["stage"], 0) + 1
        return {"records": len(sources), "by_stage": stages}
    finally:
        consumer.close()


def _last_json_line(path: Path) -> dict[str, Any]:
    for line in reversed(path.read_text().splitlines()):
        if line.startswith("{"):
            data: dict[str, Any] = json.loads(line)
            return data
    return {}


def run_demo(
    settings: Settings,
    *,
    duration_s: float | None,
    servers: int,
    quiet: bool = False,
    inject_faults: bool = True,
    seed: int = 42,
) -> dict[str, Any]:
    """Run the demo and return its summary (``sent, accepted, rejected, dlq, archived``...)."""
    say = Console(stderr=True, quiet=quiet, soft_wrap=True).print
    broker = EmbeddedBroker(settings)
    started_broker = broker.embedded and not broker.reachable()
    broker.start()
    run_dir = settings.runtime_dir / "demo"
    env = {
        "FLEETLENS_PROFILE": settings.profile,
        "FLEETLENS_LAKE__ROOT": settings.lake.root,
        "FLEETLENS_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        # Short flushes so that the drain at the end is quick; files stay reasonably sized.
        "FLEETLENS_ARCHIVE__FLUSH_INTERVAL_S": str(min(settings.archive.flush_interval_s, 5.0)),
    }
    dlq_before = _end_offsets(settings, settings.kafka.topics.dlq.name)
    since_ms = int(time.time() * 1000)
    url = f"http://{settings.collector.host}:{settings.collector.port}"
    api = ServiceProcess("api", ["serve"], log_dir=run_dir, env=env)
    archiver = ServiceProcess("archiver", ["archive"], log_dir=run_dir, env=env)
    speed = ServiceProcess("speed", ["speed", "run"], log_dir=run_dir, env=env)
    notifier = ServiceProcess("notifier", ["alerts", "notify"], log_dir=run_dir, env=env)
    services = [api, archiver, speed, notifier]
    try:
        for attempt in tenacity.Retrying(
            stop=tenacity.stop_after_delay(30), wait=tenacity.wait_fixed(0.2), reraise=True
        ):
            with attempt:
                if api.process.poll() is not None:
                    raise RuntimeError(f"the API exited; see {api.log_path}")
                httpx.get(f"{url}/healthz", timeout=1).raise_for_status()
        say(f"[bold]FleetLens demo[/bold] ({servers} servers, profile {settings.profile})")
        say(f"  broker     {settings.kafka.bootstrap_servers} ({settings.broker.mode})")
        say(f"  [bold]dashboard  {_dashboard_url(settings, url)}[/bold]")
        say(
            f"  api        {url}/api/v1/query   {url}/api/v1/live   {url}/api/v1/alerts   "
            f"{url}/api/v1/metrics (ingest)   {url}/docs"
        )
        say(f"             metrics {url}/metrics   log {api.log_path}")
        say(f"  archiver   → {settings.lake.root}/landing/metrics   log {archiver.log_path}")
        say(
            f"  speed      → {settings.lake.root}/tables/speed_1m, "
            f"{settings.kafka.topics.agg1m.name}   log {speed.log_path}"
        )
        say(
            f"  alerts     {settings.alerts.rules_file} → {settings.kafka.topics.alerts.name}"
            f"   notifier log {notifier.log_path}"
        )
        say(f"  running for {duration_s:.0f} s" if duration_s else "  Ctrl-C to stop")

        fleet = _demo_fleet(settings, servers=servers, seed=seed, now_s=int(time.time()))
        faults = DEMO_FAULTS if inject_faults else FaultSpec()
        producer = make_producer(settings.kafka)
        metrics_topic = settings.kafka.topics.metrics.name
        try:
            stats = asyncio.run(
                _simulate(
                    fleet,
                    url,
                    settings,
                    faults,
                    duration_s,
                    raw_sink=lambda raw: producer.send(metrics_topic, value=raw),
                )
            )
            producer.flush()
        finally:
            producer.close()
        say("draining: waiting for archiver and speed layer to commit everything on the topic…")
        _wait_committed(settings, settings.archive.group_id, archiver, timeout_s=120)
        _wait_committed(settings, settings.speed.group_id, speed, timeout_s=120)
        speed.stop()  # its last commit sends what the stop resolved
        alerts_topic = settings.kafka.topics.alerts.name
        group = settings.alerts.notifier_group_id
        _wait_committed(settings, group, notifier, timeout_s=120, topic=alerts_topic)
        for service in services:
            service.stop()
        dead = _dead_letters(settings, dlq_before)
        archived = count_archived(Lake(settings.lake), since_ms=since_ms)
        speed_stats = _last_json_line(speed.log_path)
        notifier_stats = _last_json_line(notifier.log_path)
    finally:
        for service in services:
            service.stop()
        if started_broker:
            broker.stop()
    return {
        "servers": servers,
        "ticks": stats.ticks,
        "sent": stats.sent,
        "accepted": stats.accepted,
        "rejected": stats.rejected,
        "dlq": dead["records"],
        "dlq_by_stage": dead["by_stage"],
        "archived": archived,
        "windows_closed": speed_stats.get("windows_closed"),
        "late_dropped": speed_stats.get("late_dropped"),
        "duplicates_dropped": speed_stats.get("duplicates"),
        "duplicates_sent": stats.duplicates,
        "late_sent": stats.late,
        "raw_malformed": stats.raw_malformed,
        "retries": stats.retries,
        "failed_requests": stats.failed_requests,
        "alerts": _alert_summary(settings, speed_stats, notifier_stats),
        "lake": settings.lake.root,
    }


def _demo_fleet(settings: Settings, *, servers: int, seed: int, now_s: int) -> Fleet:
    """The simulated fleet, with a CPU incident on one production server from 10 s to 4 min
    10 s into the run, and another server silent from 20 s to 10 min 20 s (with the shipped
    rules they page after about 3 min 20 s and 2 min 30 s)."""
    spec = FleetSpec.from_settings(
        settings.simulator, servers=servers, seed=seed, anchor_s=now_s // 86_400 * 86_400
    )
    tags = Fleet(spec).tags
    prod = [i for i, t in enumerate(tags) if t["env"] == "prod"] or [0]
    hot, silent = prod[0], (prod[0] + 1) % servers
    return Fleet(
        replace(
            spec,
            scripted_incidents=((hot, now_s + 10, now_s + 250),),
            scripted_silences=((silent, now_s + 20, now_s + 620),),
        )
    )


def _alert_summary(
    settings: Settings, speed: dict[str, Any], notifier: dict[str, Any]
) -> dict[str, dict[str, int]]:
    """Per rule of the rules file: alerts fired and resolved, notifications delivered."""
    from fleetlens.alerts.rules import load_rules

    by_rule = speed.get("alerts_by_rule") or {}
    delivered = notifier.get("delivered_by_rule") or {}
    return {
        rule.name: {
            "fired": by_rule.get(rule.name, {}).get("firing", 0),
            "resolved": by_rule.get(rule.name, {}).get("resolved", 0),
            "notifications": delivered.get(rule.name, 0),
        }
        for rule in load_rules(settings.alerts.rules_file).rules
    }


async def _simulate(
    fleet: Fleet,
    url: str,
    settings: Settings,
    faults: FaultSpec,
    duration_s: float | None,
    *,
    raw_sink: Any,
) -> Any:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return await run_live(
        fleet,
        collector_url=url,
        tokens={t: s.get_secret_value() for t, s in settings.collector.tokens.items()},
        interval_s=10,
        duration_s=duration_s,
        faults=faults,
        batch_size=settings.simulator.batch_size,
        concurrency=settings.simulator.concurrency,
        raw_sink=raw_sink,
        stop=stop,
    )
