"""Live simulation: a fleet of agents posting telemetry to the collector, with fault injection.

Each tick (one per interval, on the wall clock) every reporting server produces one payload.
Faults are drawn from the seed: late payloads are held back for a random delay, duplicates are
sent twice, out-of-order payloads are held back by up to two intervals, malformed payloads go
to the collector (which must answer 400) and malformed raw records go straight to Kafka (where
the consumers must dead-letter them).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import numpy as np

from fleetlens.simulator.fleet import METRICS, Fleet, event_ids

__all__ = ["FaultSpec", "LiveStats", "build_payloads", "corrupt", "run_live"]


@dataclass(frozen=True)
class FaultSpec:
    """Fault knobs, each a fraction of payloads (``raw_malformed``: records per tick)."""

    late: float = 0.0
    late_mean_s: float = 45.0
    duplicates: float = 0.0
    out_of_order: float = 0.0
    malformed: float = 0.0
    raw_malformed: int = 0


@dataclass
class LiveStats:
    """What the live simulator did (``sent`` counts every payload posted, duplicates included)."""

    ticks: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    late: int = 0
    raw_malformed: int = 0
    retries: int = 0
    failed_requests: int = 0
    status_codes: dict[int, int] = field(default_factory=dict)


def build_payloads(fleet: Fleet, slot_s: int, interval_s: int) -> list[dict[str, Any]]:
    """One payload per reporting server for the slot starting at ``slot_s``."""
    slots = np.array([slot_s], dtype=np.int64)
    reporting = fleet.reporting(slots)[0]
    values = fleet.sample(slots)
    ts_ms = fleet.timestamps_ms(slots, interval_s)[0]
    idx = np.flatnonzero(reporting)
    ids = event_ids(fleet.spec.seed, idx, ts_ms[idx])
    columns = [values[m][0] for m in METRICS]
    tags = fleet.tags
    return [
        {
            "schema_version": 1,
            "event_id": ids[k].decode(),
            "server_id": fleet.server_ids[i],
            "ts": int(ts_ms[i]),
            "metrics": {
                m: round(float(col[i]), 3) for m, col in zip(METRICS, columns, strict=True)
            },
            "tags": tags[i],
        }
        for k, i in enumerate(idx)
    ]


_CORRUPTIONS = (
    lambda p: p["metrics"].__setitem__("cpu_pct", 180.0),
    lambda p: p.pop("server_id"),
    lambda p: p["metrics"].__setitem__("bogus_metric", 1.0),
    lambda p: p.__setitem__("ts", "yesterday"),
    lambda p: p["metrics"].__setitem__("mem_pct", "high"),
    lambda p: p["tags"].__setitem__("owner", "bob"),
    lambda p: p.__setitem__("ts", p["ts"] + 86_400_000),
    lambda p: p.__setitem__("schema_version", 2),
)

_RAW_MALFORMED = (
    b"not json at all",
    b'{"schema_version": 1, "event_id": "x", "server_id": "srv-1"',
    b'{"schema_version": 1, "event_id": "x", "server_id": "srv-1", "ts": 1, "metrics": {}}',
    b"[1, 2, 3]",
    b"",
)


def corrupt(payload: dict[str, Any], choice: int) -> dict[str, Any]:
    """A copy of ``payload`` broken in one of several ways (``choice`` picks which)."""
    broken = msgspec.json.decode(msgspec.json.encode(payload))
    _CORRUPTIONS[choice % len(_CORRUPTIONS)](broken)
    return dict(broken)


class _Agents:
    """Posts batches per tenant with bounded concurrency; re-queues batches on 503."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        tokens: dict[str, str],
        stats: LiveStats,
        concurrency: int,
    ) -> None:
        self._client = client
        self._tokens = tokens
        self._stats = stats
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def post(self, tenant: str, batch: list[dict[str, Any]]) -> None:
        task = asyncio.create_task(self._post(tenant, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, tenant: str, batch: list[dict[str, Any]]) -> None:
        headers = {
            "authorization": f"Bearer {self._tokens[tenant]}",
            "content-type": "application/json",
        }
        body = msgspec.json.encode(batch)
        for attempt in itertools.count():
            async with self._slots:
                try:
                    response = await self._client.post(
                        "/api/v1/metrics", content=body, headers=headers
                    )
                except httpx.HTTPError:
                    response = None
            code = response.status_code if response is not None else 0
            self._stats.status_codes[code] = self._stats.status_codes.get(code, 0) + 1
            if response is not None and code in (202, 400):
                answer = response.json()
                self._stats.accepted += int(answer.get("accepted", 0))
                self._stats.rejected += int(answer.get("rejected", 0))
                self._stats.sent += len(batch)
                return
            if (response is not None and code != 503) or attempt >= 5:
                self._stats.failed_requests += 1
                self._stats.sent += len(batch)
                return
            # Agents back off and resend the same payloads (same event ids) on 503.
            self._stats.retries += 1
            retry_after = response.headers.get("retry-after") if response is not None else None
            await asyncio.sleep(min(float(retry_after or 1), 5.0))

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks))


async def run_live(
    fleet: Fleet,
    *,
    collector_url: str,
    tokens: dict[str, str],
    interval_s: int = 10,
    duration_s: float | None = None,
    rate: float | None = None,
    faults: FaultSpec = FaultSpec(),
    batch_size: int = 200,
    concurrency: int = 8,
    raw_sink: Any = None,
    stop: asyncio.Event | None = None,
) -> LiveStats:
    """Post the fleet's telemetry until ``duration_s`` has passed or ``stop`` is set.

    Args:
        fleet: The simulated fleet.
        collector_url: Base URL of the collector.
        tokens: Bearer token per tenant.
        interval_s: Seconds between two samples of one server.
        duration_s: How long to run (None: until ``stop``).
        rate: Most payloads per second to send (None: the fleet's own pace).
        faults: Fault injection.
        batch_size: Payloads per request (agents behind a relay send batches).
        concurrency: Requests in flight at most.
        raw_sink: Callable taking raw bytes, for malformed records written straight to Kafka.
        stop: Set to end the run early.
    """
    missing = {t for t in fleet.spec.tenants if t not in tokens}
    if missing:
        raise ValueError(f"no collector token for tenants {sorted(missing)}")
    stats = LiveStats()
    stop = stop or asyncio.Event()
    rng = np.random.default_rng([fleet.spec.seed, 99])
    held: list[tuple[float, int, dict[str, Any]]] = []  # (due monotonic time, seq, payload)
    seq = itertools.count()
    started = time.monotonic()
    deadline = started + duration_s if duration_s is not None else float("inf")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=collector_url, timeout=30, limits=limits) as client:
        agents = _Agents(client, tokens, stats, concurrency)
        next_tick = time.time() // interval_s * interval_s
        handed = 0
        while not stop.is_set() and time.monotonic() < deadline:
            now_mono = time.monotonic()
            outgoing: list[dict[str, Any]] = []
            if time.time() >= next_tick:
                payloads = build_payloads(fleet, int(next_tick), interval_s)
                stats.ticks += 1
                next_tick += interval_s
                for p in payloads:
                    u = rng.random()
                    if u < faults.malformed:
                        outgoing.append(corrupt(p, int(rng.integers(0, 1 << 30))))
                        continue
                    if u < faults.malformed + faults.late:
                        delay = float(rng.exponential(faults.late_mean_s))
                        heapq.heappush(held, (now_mono + delay, next(seq), p))
                        stats.late += 1
                    elif u < faults.malformed + faults.late + faults.out_of_order:
                        delay = float(rng.uniform(0, 2 * interval_s))
                        heapq.heappush(held, (now_mono + delay, next(seq), p))
                    else:
                        outgoing.append(p)
                    if rng.random() < faults.duplicates:
                        outgoing.append(p)
                        stats.duplicates += 1
                if raw_sink is not None:
                    for _ in range(faults.raw_malformed):
                        raw_sink(_RAW_MALFORMED[int(rng.integers(0, len(_RAW_MALFORMED)))])
                        stats.raw_malformed += 1
            while held and held[0][0] <= now_mono:
                outgoing.append(heapq.heappop(held)[2])
            await _send(agents, outgoing, batch_size)
            handed += len(outgoing)
            if rate:
                # Never ahead of `rate` payloads per second since the start.
                ahead = handed / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await _sleep_until(min(next_tick, time.time() + 0.2), stop)
        # Whatever is still held back goes out now: late, but not lost.
        await _send(agents, [p for _, _, p in sorted(held)], batch_size)
        await agents.drain()
    return stats


async def _send(agents: _Agents, payloads: list[dict[str, Any]], batch_size: int) -> None:
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for p in payloads:
        by_tenant.setdefault(p["tags"]["tenant"], []).append(p)
    for tenant, items in by_tenant.items():
        for i in range(0, len(items), batch_size):
            agents.post(tenant, items[i : i + batch_size])
    await asyncio.sleep(0)


async def _sleep_until(wall_time: float, stop: asyncio.Event) -> None:
    delay = wall_time - time.time()
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
