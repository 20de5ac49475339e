"""HTTP collector: agents POST telemetry, the collector validates it and writes it to Kafka.

A ``202`` is sent only once Kafka has acknowledged every accepted record (``acks=all``,
idempotent producer). A client that gets a 503 or loses the answer resends the same
payloads; consumers keep one copy per ``event_id``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app
from ulid import ULID

from fleetlens.config import Settings
from fleetlens.contract import ContractViolation, Event, Validator, encode_event
from fleetlens.kafka.clients import make_producer
from fleetlens.logging import get_logger
from fleetlens.serving.auth import TenantTokens

__all__ = ["create_app"]

log = get_logger("collector")

_REASON_LABELS = frozenset(
    {"schema_version", "event_id", "server_id", "ts", "metrics", "tags", "payload"}
)


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "fleetlens_collector_requests",
            "HTTP ingest requests by status code",
            ["code"],
            registry=registry,
        )
        self.accepted = Counter(
            "fleetlens_collector_payloads_accepted",
            "Payloads acknowledged by Kafka",
            ["tenant"],
            registry=registry,
        )
        self.rejected = Counter(
            "fleetlens_collector_payloads_rejected",
            "Invalid payloads by field at fault",
            ["reason"],
            registry=registry,
        )
        self.produce_latency = Histogram(
            "fleetlens_collector_produce_latency_seconds",
            "Time from the first send of a batch to Kafka's acknowledgement of all of it",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


class _Publisher:
    """Owns the producer; recreates it when the broker was unreachable at creation time."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = settings.kafka.topics.metrics.name
        self._timeout = settings.collector.produce_timeout_s
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def _get(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                self._producer = make_producer(self._settings.kafka)
            return self._producer

    def publish(self, events: Sequence[Event]) -> None:
        """Send every event and block until Kafka acknowledged all of them.

        Raises:
            KafkaError: the broker did not acknowledge every record in time.
        """
        producer = self._get()
        try:
            futures = [
                producer.send(self._topic, key=e.server_id.encode(), value=encode_event(e))
                for e in events
            ]
            for future in futures:
                future.get(timeout=self._timeout)
        except KafkaError:
            # An idempotent producer that lost its broker can be left in a fatal state (a
            # restarted broker does not know its producer id): start afresh on the next batch.
            self._discard(producer)
            raise

    def _discard(self, producer: KafkaProducer) -> None:
        with self._lock:
            if self._producer is producer:
                self._producer = None
        producer.close(timeout=0)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=self._timeout)
                self._producer = None


def _reason_label(field: str) -> str:
    head = field.split(".", 1)[0] if field else "payload"
    return head if head in _REASON_LABELS else "payload"


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    title: str = "FleetLens collector",
) -> FastAPI:
    """The collector's ASGI application.

    Args:
        settings: FleetLens settings (collector, contract and Kafka sections are used).
        registry: Prometheus registry for the service's metrics (a fresh one by default).
        title: The application's title (in its OpenAPI document).
    """
    registry = registry or CollectorRegistry()
    metrics = _Metrics(registry)
    validator = Validator(settings.contract)
    publisher = _Publisher(settings)
    cfg = settings.collector
    tokens = TenantTokens(cfg.tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        await run_in_threadpool(publisher.close)
        # What the services sharing this app registered to be closed (the live feed).
        for close in getattr(app.state, "on_close", ()):
            await run_in_threadpool(close)

    app = FastAPI(title=title, version="1", lifespan=lifespan)
    app.mount("/metrics", make_asgi_app(registry=registry))

    def answer(code: int, body: dict[str, Any], **headers: str) -> JSONResponse:
        metrics.requests.labels(code=str(code)).inc()
        return JSONResponse(body, status_code=code, headers=headers or None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/v1/metrics", status_code=202)
    async def ingest(request: Request) -> Response:
        tenant = tokens.tenant_of(request.headers.get("authorization"))
        if tenant is None:
            return answer(
                401,
                {"error": "missing or invalid bearer token"},
                **{"WWW-Authenticate": "Bearer"},
            )
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            return answer(413, {"error": f"body over {cfg.max_body_bytes} bytes"})
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cfg.max_body_bytes:
                return answer(413, {"error": f"body over {cfg.max_body_bytes} bytes"})
        try:
            decoded = msgspec.json.decode(bytes(body))
        except msgspec.DecodeError as error:
            metrics.rejected.labels(reason="payload").inc()
            return answer(
                400,
                {
                    "accepted": 0,
                    "errors": [{"index": None, "field": "", "reason": f"not valid JSON: {error}"}],
                },
            )
        items = decoded if isinstance(decoded, list) else [decoded]
        if len(items) > cfg.max_batch:
            return answer(
                413, {"error": f"batch of {len(items)} over the limit of {cfg.max_batch}"}
            )

        now_ms = int(time.time() * 1000)
        valid: list[Event] = []
        errors: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                valid.append(validator.convert(item, now_ms=now_ms, tenant=tenant))
            except ContractViolation as violation:
                metrics.rejected.labels(reason=_reason_label(violation.field)).inc()
                errors.append(
                    {"index": index, "field": violation.field, "reason": violation.reason}
                )

        batch_id = str(ULID())
        if valid:
            started = time.perf_counter()
            try:
                await run_in_threadpool(publisher.publish, valid)
            except KafkaError as error:
                log.warning("collector.kafka_unavailable", error=repr(error), batch_id=batch_id)
                return answer(
                    503,
                    {"error": f"Kafka did not acknowledge the batch: {error!r}", "accepted": 0},
                    **{"Retry-After": str(cfg.retry_after_s)},
                )
            metrics.produce_latency.observe(time.perf_counter() - started)
            metrics.accepted.labels(tenant=tenant).inc(len(valid))
        body_out: dict[str, Any] = {"accepted": len(valid), "batch_id": batch_id}
        if errors:
            body_out |= {"rejected": len(errors), "errors": errors}
            return answer(400, body_out)
        return answer(202, body_out)

    return app
