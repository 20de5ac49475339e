"""Collector throughput: ``python -m fleetlens collector`` under a closed-loop HTTP load.

The collector runs as a child process, exactly as deployed. The load generator runs in
``--clients`` worker processes (``multiprocessing``, spawn), each with its share of
``--connections`` keep-alive connections, every connection posting pre-encoded bodies back to
back (closed loop: a connection sends its next request when the previous one was answered).
The bodies are built beforehand from ``build_payloads`` for ``--servers`` servers, so that
building them costs nothing during the measurement.

The HTTP client is ``--client raw`` (default: :mod:`bench._http`, a minimal asyncio HTTP/1.1
client that needs a few % of a core for this load, so one process is enough) or ``--client
httpx`` (``httpx.AsyncClient``: it needs ~1.5 ms of CPU per request and slows down as
connections are added, so it saturates long before the collector does; see the load-gen CPU
column).

For each batch size (payloads per request) the run is: a short warm-up, then ``--duration``
seconds of load. Correctness: the records the run added to the metrics topic (log end
offsets, read to the end) must equal the payloads the collector answered 202 for.

Baselines measured in the same run:

* ``kafka-python producer``: the same encoded canonical events sent straight to the broker
  with ``make_producer`` (acks=all, idempotent, same linger/batch), pipelined, then flushed:
  the ceiling of what one Python process can push through kafka-python to this broker.
* ``HTTP only``: the same client posting to the collector with a wrong token; the collector
  answers 401 before reading the body, so this is the floor of uvicorn + FastAPI + client.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import httpx
import msgspec

from bench import _http
from bench._common import (
    NA,
    Child,
    CpuMeter,
    Report,
    Scratch,
    fmt_cores,
    fmt_int,
    fmt_ms,
    other_load,
    percentile,
    say,
)
from fleetlens.contract import Validator, encode_event
from fleetlens.kafka.clients import make_producer
from fleetlens.simulator.fleet import METRICS, Fleet, FleetSpec
from fleetlens.simulator.live import build_payloads

PATH = "/api/v1/metrics"
POINTS_PER_PAYLOAD = len(METRICS)
GOAL_PAYLOADS_S = 5_000

Body = tuple[bytes, int]  # (encoded request body, payloads in it)


# -- load generator (runs in worker processes) ------------------------------------------------


@dataclass
class LoadResult:
    """What one load-generator process measured."""

    requests: int = 0
    accepted: int = 0
    payloads_sent: int = 0
    codes: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    first_send: float = math.inf
    last_answer: float = 0.0
    cpu_s: float = 0.0

    def merge(self, other: LoadResult) -> None:
        self.requests += other.requests
        self.accepted += other.accepted
        self.payloads_sent += other.payloads_sent
        self.codes += other.codes
        self.errors += other.errors
        self.latencies.extend(other.latencies)
        self.first_send = min(self.first_send, other.first_send)
        self.last_answer = max(self.last_answer, other.last_answer)
        self.cpu_s += other.cpu_s


async def _load(
    url: str,
    bodies: list[tuple[str, bytes, int]],
    connections: int,
    start_at: float,
    duration_s: float,
    client: str,
) -> LoadResult:
    result = LoadResult()
    host_port = url.split("://", 1)[1]
    host, _, port = host_port.rpartition(":")
    requests = [
        (
            _http.encode_request(
                host_port,
                PATH,
                body,
                {
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json",
                },
            ),
            body,
            {"authorization": f"Bearer {token}", "content-type": "application/json"},
            n,
        )
        for token, body, n in bodies
    ]
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as httpx_client:
        raw = [_http.Connection(host, int(port)) for _ in range(connections)]

        async def post(k: int, i: int) -> tuple[int, bytes]:
            data, body, headers, _ = requests[i]
            if client == "raw":
                return await raw[k].request(data)
            response = await httpx_client.post(PATH, content=body, headers=headers)
            return response.status_code, response.content

        async def connect(k: int) -> None:
            if client == "raw":
                await raw[k].request(health)
            else:
                await httpx_client.get("/healthz")

        # Open the connections before the clock starts.
        health = _http.encode_request(host_port, "/healthz", b"", {}, method="GET")
        await asyncio.gather(*(connect(k) for k in range(connections)))
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        deadline = start_at + duration_s
        cpu0 = time.process_time()

        async def connection_loop(k: int) -> None:
            i = k
            while time.monotonic() < deadline:
                index = i % len(requests)
                i += connections
                sent = time.monotonic()
                result.first_send = min(result.first_send, sent)
                try:
                    status, answer = await post(k, index)
                except (httpx.HTTPError, _http.HttpError, OSError) as error:
                    result.errors[type(error).__name__] += 1
                    continue
                done = time.monotonic()
                result.latencies.append(done - sent)
                result.last_answer = max(result.last_answer, done)
                result.requests += 1
                result.payloads_sent += requests[index][3]
                result.codes[status] += 1
                if status == 202:
                    result.accepted += int(msgspec.json.decode(answer)["accepted"])

        await asyncio.gather(*(connection_loop(k) for k in range(connections)))
        result.cpu_s = time.process_time() - cpu0
        for connection in raw:
            connection.close()
    return result


def _worker(
    conn: Connection,
    url: str,
    bodies: list[tuple[str, bytes, int]],
    connections: int,
    client: str,
) -> None:
    """Load-generator process: say ready, wait for (start_at, duration), run, send the result."""
    try:
        import uvloop  # the client's own overhead matters on a 2-core machine

        uvloop.install()
    except ImportError:
        pass
    conn.send("ready")
    while True:
        message = conn.recv()
        if message is None:
            return
        start_at, duration_s = message
        try:
            result = asyncio.run(_load(url, bodies, connections, start_at, duration_s, client))
        except Exception as error:  # reported to the parent, which raises it
            conn.send(RuntimeError(f"load generator failed: {error!r}"))
            return
        conn.send(result)


class LoadGenerator:
    """``clients`` worker processes sharing ``connections`` connections and the bodies."""

    def __init__(
        self,
        url: str,
        bodies: list[tuple[str, bytes, int]],
        *,
        clients: int,
        connections: int,
        client: str,
    ) -> None:
        ctx = mp.get_context("spawn")
        self._workers: list[tuple[Any, Connection]] = []
        per_client = [connections // clients + (k < connections % clients) for k in range(clients)]
        for k in range(clients):
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=_worker,
                args=(child, url, bodies[k::clients] or bodies, max(1, per_client[k]), client),
                daemon=True,
                name=f"bench-load-{k}",
            )
            process.start()
            self._workers.append((process, parent))
        for process, parent in self._workers:
            if not parent.poll(60):
                raise RuntimeError(f"load generator {process.name} did not start")
            parent.recv()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self._workers]

    def run(self, duration_s: float) -> LoadResult:
        start_at = time.monotonic() + 0.5 + 0.1 * len(self._workers)
        for _, parent in self._workers:
            parent.send((start_at, duration_s))
        total = LoadResult()
        for process, parent in self._workers:
            if not parent.poll(duration_s + 120):
                raise RuntimeError(f"load generator {process.name} did not finish")
            answer = parent.recv()
            if isinstance(answer, Exception):
                raise answer
            total.merge(answer)
        total.first_send = min(total.first_send, start_at)
        return total

    def close(self) -> None:
        for process, parent in self._workers:
            with contextlib.suppress(OSError):
                parent.send(None)
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)


# -- payloads -------------------------------------------------------------------------------


def build_fleet_payloads(scratch: Scratch, servers: int, slots: int) -> list[dict[str, Any]]:
    """``slots`` consecutive ticks (10 s apart, the newest a minute ago) of the fleet."""
    now = int(time.time())
    fleet = Fleet(
        FleetSpec.from_settings(
            scratch.settings.simulator,
            servers=servers,
            seed=42,
            anchor_s=now // 86_400 * 86_400,
        )
    )
    newest = now // 10 * 10 - 60
    payloads: list[dict[str, Any]] = []
    for k in range(slots):
        payloads.extend(build_payloads(fleet, newest - 10 * (slots - 1 - k), 10))
    return payloads


def encode_bodies(
    scratch: Scratch, payloads: list[dict[str, Any]], batch: int
) -> list[tuple[str, bytes, int]]:
    """(token, body, payloads) per request: per tenant, ``batch`` payloads per body (a single
    object, not an array, when ``batch`` is 1, as a lone agent sends it)."""
    tokens = {t: s.get_secret_value() for t, s in scratch.settings.collector.tokens.items()}
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for p in payloads:
        by_tenant.setdefault(p["tags"]["tenant"], []).append(p)
    chunks: list[list[tuple[str, bytes, int]]] = []
    for tenant, items in by_tenant.items():
        chunk = []
        for i in range(0, len(items), batch):
            part = items[i : i + batch]
            body = msgspec.json.encode(part[0] if batch == 1 else part)
            chunk.append((tokens[tenant], body, len(part)))
        chunks.append(chunk)
    # Interleave the tenants, as independent agents would.
    out: list[tuple[str, bytes, int]] = []
    for i in range(max(len(c) for c in chunks)):
        out.extend(c[i] for c in chunks if i < len(c))
    return out


# -- baseline: kafka-python producer ----------------------------------------------------------


def producer_ceiling(
    scratch: Scratch, payloads: list[dict[str, Any]], duration_s: float
) -> dict[str, float]:
    """Send the canonical encoding of ``payloads`` (cycled) for ``duration_s``, then flush."""
    settings = scratch.settings
    validator = Validator(settings.contract)
    now_ms = int(time.time() * 1000)
    records = []
    for p in payloads:
        event = validator.convert(p, now_ms=now_ms, tenant=p["tags"]["tenant"])
        records.append((event.server_id.encode(), encode_event(event)))
    topic = settings.kafka.topics.metrics.name
    before = scratch.topic_records()
    producer = make_producer(settings.kafka)
    try:
        for key, value in records[:2000]:  # warm-up: connections, producer id, metadata
            producer.send(topic, key=key, value=value)
        producer.flush()
        warm = min(2000, len(records))
        sent = 0
        cpu0 = time.process_time()
        started = time.monotonic()
        deadline = started + duration_s
        while time.monotonic() < deadline:
            for i in range(sent, sent + 1000):
                key, value = records[i % len(records)]
                producer.send(topic, key=key, value=value)
            sent += 1000
        producer.flush()
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu0
    finally:
        producer.close()
    on_topic = scratch.topic_records() - before - warm
    return {"sent": sent, "seconds": elapsed, "on_topic": on_topic, "cpu": cpu / elapsed}


# -- the benchmark ----------------------------------------------------------------------------


@dataclass
class CollectorOptions:
    """Knobs of the collector benchmark (see ``python -m bench --help``)."""

    servers: int = 10_000
    duration_s: float = 20.0
    warmup_s: float = 2.0
    batches: tuple[int, ...] = (1, 100)
    clients: int = 1
    connections: int = 32
    client: str = "raw"
    slots: int = 6
    baseline_s: float = 5.0
    keep: bool = False


@dataclass
class _Window:
    result: LoadResult
    cpu: dict[str, float]
    on_topic: int | None

    @property
    def seconds(self) -> float:
        return max(self.result.last_answer - self.result.first_send, 1e-9)


def _measure(
    scratch: Scratch,
    url: str,
    collector: Child,
    bodies: list[tuple[str, bytes, int]],
    options: CollectorOptions,
    *,
    duration_s: float,
    count_topic: bool,
) -> _Window:
    """Warm up, then load the collector for ``duration_s`` with fresh load processes."""
    load = LoadGenerator(
        url, bodies, clients=options.clients, connections=options.connections, client=options.client
    )
    try:
        if options.warmup_s > 0:
            load.run(options.warmup_s)
        before = scratch.topic_records() if count_topic else 0
        pids: dict[str, int | None] = {"collector": collector.pid, "broker": scratch.broker_pid}
        pids |= {f"load-{k}": pid for k, pid in enumerate(load.pids)}
        meter = CpuMeter(pids)
        meter.start()
        result = load.run(duration_s)
        cpu = meter.stop()
        on_topic = scratch.topic_records() - before if count_topic else None
    finally:
        load.close()
    if not collector.running():
        raise RuntimeError(f"collector exited:\n{collector.log_tail()}")
    return _Window(result, cpu, on_topic)


def run(options: CollectorOptions) -> Report:
    """Run the collector benchmark and return its table."""
    report = Report(
        title=(
            f"Collector: {options.servers:,} simulated servers, {options.duration_s:g} s per "
            f"batch size, load: {options.clients} process(es), {options.connections} "
            f"connections, {options.client} client"
        ),
        columns=[
            "configuration",
            "payloads/s",
            "points/s",
            "requests/s",
            "p50 ms",
            "p99 ms",
            "accepted (202)",
            "records on topic",
            "collector CPU",
            "broker CPU",
            "load-gen CPU",
            "other load",
        ],
    )
    verdicts: list[str] = []
    with Scratch("collector", keep=options.keep) as scratch:
        say(f"building payloads: {options.servers:,} servers, {options.slots} ticks")
        payloads = build_fleet_payloads(scratch, options.servers, options.slots)
        say(f"{len(payloads):,} distinct payloads (cycled when a run needs more)")

        collector = scratch.spawn("collector", ["collector"])
        url = f"http://127.0.0.1:{scratch.env['FLEETLENS_COLLECTOR__PORT']}"
        _wait_healthy(url, collector)
        say(f"collector up at {url} (pid {collector.pid})")

        for batch in options.batches:
            bodies = encode_bodies(scratch, payloads, batch)
            say(f"batch {batch}: warm-up {options.warmup_s:g} s, then {options.duration_s:g} s")
            w = _measure(
                scratch,
                url,
                collector,
                bodies,
                options,
                duration_s=options.duration_s,
                count_topic=True,
            )
            r = w.result
            rate = r.accepted / w.seconds
            lat = sorted(r.latencies)
            report.add(
                f"collector, batch {batch}",
                fmt_int(rate),
                fmt_int(rate * POINTS_PER_PAYLOAD),
                fmt_int(r.requests / w.seconds),
                fmt_ms(percentile(lat, 0.50)),
                fmt_ms(percentile(lat, 0.99)),
                fmt_int(r.accepted),
                fmt_int(w.on_topic or 0) + (" ✓" if w.on_topic == r.accepted else " ✗"),
                fmt_cores(w.cpu["collector"]),
                fmt_cores(w.cpu.get("broker", 0.0)),
                fmt_cores(r.cpu_s / w.seconds),
                other_load(w.cpu),
            )
            if w.on_topic != r.accepted or set(r.codes) != {202} or r.errors:
                report.notes.append(
                    f"batch {batch}: status codes {dict(r.codes)}, client errors "
                    f"{dict(r.errors)}, accepted {r.accepted}, records added {w.on_topic}"
                )
            met = "met" if rate >= GOAL_PAYLOADS_S else "not met"
            verdicts.append(f"batch {batch}: {rate:,.0f}/s, {met}")

        say(f"baseline: HTTP only, {options.baseline_s:g} s of 401s (wrong token)")
        floor = [("wrong-token", msgspec.json.encode(payloads[0]), 1)]
        w = _measure(
            scratch,
            url,
            collector,
            floor,
            options,
            duration_s=options.baseline_s,
            count_topic=False,
        )
        if set(w.result.codes) != {401}:
            raise RuntimeError(f"HTTP-only baseline expected 401s, got {dict(w.result.codes)}")
        lat = sorted(w.result.latencies)
        report.add(
            "baseline: HTTP only (401 before the body is read, no Kafka)",
            NA,
            NA,
            fmt_int(w.result.requests / w.seconds),
            fmt_ms(percentile(lat, 0.50)),
            fmt_ms(percentile(lat, 0.99)),
            NA,
            NA,
            fmt_cores(w.cpu["collector"]),
            NA,
            fmt_cores(w.result.cpu_s / w.seconds),
            other_load(w.cpu),
        )

        collector.stop()
        say(f"baseline: kafka-python producer, {options.baseline_s:g} s")
        meter = CpuMeter({"broker": scratch.broker_pid})
        meter.start()
        base = producer_ceiling(scratch, payloads, options.baseline_s)
        cpu = meter.stop()
        rate = base["sent"] / base["seconds"]
        report.add(
            "baseline: kafka-python producer (make_producer), no HTTP",
            fmt_int(rate),
            fmt_int(rate * POINTS_PER_PAYLOAD),
            NA,
            NA,
            NA,
            fmt_int(base["sent"]),
            fmt_int(base["on_topic"]) + (" ✓" if base["on_topic"] == base["sent"] else " ✗"),
            f"{fmt_cores(base['cpu'])} (producer)",
            fmt_cores(cpu["broker"]),
            NA,
            other_load(cpu),
        )
    report.notes.append(
        f"goal: ≥ {GOAL_PAYLOADS_S:,} payloads/s ({GOAL_PAYLOADS_S * POINTS_PER_PAYLOAD:,} "
        "points/s) for one collector process — "
        + "; ".join(verdicts)
        + " (agents batch their samples: the simulator posts 200 per request; one payload "
        "per request pays an HTTP exchange and a produce acknowledgement each)"
    )
    report.notes.append(
        "CPU: share of one core during the measured window (100 % = one core); "
        f"{mp.cpu_count()} logical CPUs are shared by broker, collector and load generator; "
        "other load: CPU used meanwhile by processes this benchmark did not start, and time "
        "the hypervisor gave to other guests (steal): the figures are only as good as these "
        "are small"
    )
    return report


def _wait_healthy(url: str, child: Child, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.running():
            raise RuntimeError(f"collector exited:\n{child.log_tail()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"collector not healthy after {timeout_s:g} s:\n{child.log_tail()}")
