"""``GET /api/v1/live``: closed windows (``fleet.agg1m.v1``) and alert transitions
(``fleet.alerts.v1``) as Server-Sent Events, filtered by server, metric and tags, of the
caller's tenant only.

One Kafka consumer per service, not per client: a thread reads both topics (partitions
assigned by hand, no consumer group: every API replica sees every record) and fans each
event out to the subscribers' queues. It starts with the first subscriber, ``live_replay_s``
back in the topics, and keeps that much history so that a page opened now gets the last
windows at once. A subscriber that falls ``live_queue`` events behind is disconnected
rather than slowing the others (its client reconnects).
"""

# No ``from __future__ import annotations``: FastAPI reads the route's annotations, which
# name a dependency local to :func:`live_router`.
import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from fleetlens.alerts.engine import AlertEvent
from fleetlens.config import Settings
from fleetlens.lake.schemas import TAG_COLUMNS
from fleetlens.logging import get_logger
from fleetlens.serving.auth import BAD_REQUEST, TenantTokens
from fleetlens.serving.query import QueryError
from fleetlens.serving.query_api import bad_request, parse_where

__all__ = ["LiveFeed", "LiveFilter", "alert_event", "live_router", "window_events"]

log = get_logger("live")

_AGG1M = msgspec.json.Decoder()
_ALERT = msgspec.json.Decoder(AlertEvent)
_ISO = "%Y-%m-%dT%H:%M:%SZ"


def _iso(ms: int) -> str:
    return time.strftime(_ISO, time.gmtime(ms / 1000))


def window_events(value: bytes) -> list[dict[str, Any]]:
    """The ``window`` events of one ``fleet.agg1m.v1`` record: one per server and metric."""
    record = _AGG1M.decode(value)
    start = _iso(record["window_start"])
    out = []
    for window in record["windows"]:
        tags = {tag: window.get(tag) for tag in TAG_COLUMNS}
        for m in window["metrics"]:
            out.append(
                {
                    "server_id": window["server_id"],
                    "metric": m["metric"],
                    "window_start": start,
                    "count": m["count"],
                    "sum": m["sum"],
                    "min": m["min"],
                    "max": m["max"],
                    "last": m["last"],
                    "avg": m["sum"] / m["count"] if m["count"] else None,
                    "p50": m["p50"],
                    "p95": m["p95"],
                    "p99": m["p99"],
                    "final": record.get("final", True),
                    **tags,
                }
            )
    return out


def alert_event(value: bytes) -> dict[str, Any]:
    """The ``alert`` event of one ``fleet.alerts.v1`` record."""
    alert = _ALERT.decode(value)
    return {
        "alert_id": alert.alert_id,
        "rule": alert.rule,
        "severity": alert.severity,
        "change": alert.change,
        "state": alert.state,
        "server_id": alert.labels.get("server"),
        "tenant": alert.labels.get("tenant"),
        "labels": alert.labels,
        "value": alert.value,
        "summary": alert.summary,
        "at": _iso(alert.at),
    }


@dataclass(frozen=True)
class LiveFilter:
    """What a subscriber asked for; empty fields match everything."""

    tenant: str
    servers: frozenset[str] = frozenset()
    metrics: frozenset[str] = frozenset()
    tags: dict[str, frozenset[str]] = field(default_factory=dict)

    def matches(self, kind: str, event: dict[str, Any]) -> bool:
        """Whether the subscriber gets ``event`` (a ``window`` or an ``alert``)."""
        if event.get("tenant") != self.tenant:
            return False
        if self.servers and event.get("server_id") not in self.servers:
            return False
        if kind == "window" and self.metrics and event["metric"] not in self.metrics:
            return False
        source = event if kind == "window" else event["labels"]
        return all(source.get(tag) in values for tag, values in self.tags.items())


@dataclass(eq=False)
class _Subscriber:
    only: LiveFilter
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None]
    dropped: bool = False


class LiveFeed:
    """The service's one reader of the live topics, fanning events out to subscribers.

    Args:
        settings: Kafka (bootstrap, topics) and serving (queue size, replay) settings.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._subscribers: set[_Subscriber] = set()
        self._recent: deque[tuple[float, str, dict[str, Any]]] = deque(
            maxlen=settings.serving.live_queue
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, only: LiveFilter) -> _Subscriber:
        """Register a subscriber (on the running event loop); it first gets the recent
        events it matches."""
        queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue(
            self._settings.serving.live_queue
        )
        subscriber = _Subscriber(only, asyncio.get_running_loop(), queue)
        with self._lock:
            horizon = time.time() - self._settings.serving.live_replay_s
            for at, kind, event in self._recent:
                if at >= horizon and only.matches(kind, event) and not queue.full():
                    queue.put_nowait((kind, event))
            self._subscribers.add(subscriber)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="live-feed", daemon=True)
                self._thread.start()
        return subscriber

    def unsubscribe(self, subscriber: _Subscriber) -> None:
        """Stop sending to ``subscriber``."""
        with self._lock:
            self._subscribers.discard(subscriber)

    def close(self) -> None:
        """Stop the reader thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def publish(self, kind: str, events: Iterable[dict[str, Any]]) -> None:
        """Hand events to every subscriber that matches them (from any thread)."""
        now = time.time()
        with self._lock:
            subscribers = list(self._subscribers)
            for event in events:
                self._recent.append((now, kind, event))
                for sub in subscribers:
                    if not sub.dropped and sub.only.matches(kind, event):
                        sub.loop.call_soon_threadsafe(self._offer, sub, kind, event)

    @staticmethod
    def _offer(sub: _Subscriber, kind: str, event: dict[str, Any]) -> None:
        if sub.dropped:
            return
        try:
            sub.queue.put_nowait((kind, event))
        except asyncio.QueueFull:
            sub.dropped = True
            with contextlib.suppress(asyncio.QueueEmpty):
                sub.queue.get_nowait()  # room for the end-of-stream marker
            sub.queue.put_nowait(None)

    def _run(self) -> None:
        from fleetlens.kafka.clients import make_consumer

        topics = self._settings.kafka.topics
        decoders = {topics.agg1m.name: "window", topics.alerts.name: "alert"}
        while not self._stop.is_set():
            try:
                consumer = make_consumer(
                    self._settings.kafka, group_id=None, consumer_timeout_ms=1000
                )
            except Exception as error:  # broker down: the API keeps serving, retry later
                log.warning("live.connect_failed", error=str(error))
                self._stop.wait(5)
                continue
            try:
                self._consume(consumer, decoders)
            except Exception as error:
                log.warning("live.read_failed", error=str(error))
                self._stop.wait(2)
            finally:
                consumer.close()

    def _consume(self, consumer: Any, decoders: dict[str, str]) -> None:
        from kafka import TopicPartition

        partitions = [
            TopicPartition(topic, p)
            for topic in decoders
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        since_ms = int((time.time() - self._settings.serving.live_replay_s) * 1000)
        try:
            found = consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
        except Exception:  # brokers without timestamp lookups: from the end
            found = {}
        for tp in partitions:
            hit = found.get(tp)
            if hit is None:
                consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, hit.offset)
        log.info("live.reading", partitions=len(partitions))
        while not self._stop.is_set():
            batches = consumer.poll(timeout_ms=500)
            for tp, records in batches.items():
                kind = decoders[tp.topic]
                events: list[dict[str, Any]] = []
                for record in records:
                    try:
                        if kind == "window":
                            events.extend(window_events(record.value))
                        else:
                            events.append(alert_event(record.value))
                    except (msgspec.DecodeError, KeyError, TypeError) as error:
                        log.warning("live.bad_record", topic=tp.topic, error=str(error))
                self.publish(kind, events)


def live_router(feed: LiveFeed, tokens: TenantTokens) -> APIRouter:
    """The ``/api/v1/live`` route over ``feed``."""
    router = APIRouter(prefix="/api/v1", tags=["live"], responses=BAD_REQUEST)
    caller = Depends(tokens)

    @router.get(
        "/live",
        summary="Closed windows and alert transitions as they happen (Server-Sent Events)",
        response_class=EventSourceResponse,
        responses={
            200: {
                "description": "`event: window` and `event: alert`, data in JSON",
                "content": {"text/event-stream": {}},
            },
        },
    )
    async def live(
        request: Request,
        tenant: Annotated[str, caller],
        server: Annotated[list[str] | None, Query(description="Only these servers")] = None,
        metric: Annotated[list[str] | None, Query(description="Only these metrics")] = None,
        where: Annotated[
            list[str] | None, Query(description="Tag filters tag=value (repeatable)")
        ] = None,
    ) -> EventSourceResponse:
        try:
            tags = parse_where(where or [])
            if unknown := [t for t in tags if t not in TAG_COLUMNS]:
                raise QueryError("where", f"cannot filter on {unknown}", allowed=TAG_COLUMNS)
        except QueryError as error:
            raise bad_request(error) from error
        only = LiveFilter(
            tenant=tenant,
            servers=frozenset(server or ()),
            metrics=frozenset(metric or ()),
            tags={k: frozenset(v) for k, v in tags.items()},
        )
        subscriber = feed.subscribe(only)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            try:
                while True:
                    item = await subscriber.queue.get()
                    if item is None:
                        yield ServerSentEvent(data='{"reason": "too slow"}', event="dropped")
                        return
                    kind, event = item
                    yield ServerSentEvent(data=msgspec.json.encode(event).decode(), event=kind)
            finally:
                feed.unsubscribe(subscriber)

        return EventSourceResponse(stream(), ping=15)

    return router
