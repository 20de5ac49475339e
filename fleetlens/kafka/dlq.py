"""The dead-letter topic: records a consumer cannot accept, with the reason and their origin.

The value is the original bytes, untouched; the reason and the source topic, partition and
offset travel as headers (the convention of Kafka Connect's ``errors.deadletterqueue``).
"""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaProducer

from fleetlens.kafka.clients import wait_acknowledged

__all__ = ["DLQ_HEADERS", "DeadLetterWriter", "read_dlq_headers"]

DLQ_HEADERS = (
    "fleetlens.dlq.reason",
    "fleetlens.dlq.stage",
    "fleetlens.dlq.source.topic",
    "fleetlens.dlq.source.partition",
    "fleetlens.dlq.source.offset",
    "fleetlens.dlq.failed_at_ms",
)


class DeadLetterWriter:
    """Sends rejected records to the DLQ topic.

    Args:
        producer: An idempotent producer (shared with the caller's other output, if any).
        topic: The DLQ topic's name.
        stage: Which component rejected the record (``archive``, ``speed``...).
    """

    def __init__(self, producer: KafkaProducer, *, topic: str, stage: str) -> None:
        self._producer = producer
        self._topic = topic
        self._stage = stage.encode()
        self._pending: list[Any] = []
        self.sent = 0

    def send(
        self,
        *,
        value: bytes | None,
        key: bytes | None,
        reason: str,
        source_topic: str,
        partition: int,
        offset: int,
    ) -> None:
        """Queue one rejected record; :meth:`flush` makes the queued ones durable."""
        headers = [
            ("fleetlens.dlq.reason", reason.encode()[:4096]),
            ("fleetlens.dlq.stage", self._stage),
            ("fleetlens.dlq.source.topic", source_topic.encode()),
            ("fleetlens.dlq.source.partition", str(partition).encode()),
            ("fleetlens.dlq.source.offset", str(offset).encode()),
            ("fleetlens.dlq.failed_at_ms", str(int(time.time() * 1000)).encode()),
        ]
        self._pending.append(
            self._producer.send(self._topic, key=key, value=value, headers=headers)
        )
        self.sent += 1

    def take_pending(self) -> list[Any]:
        """The futures of the records queued since the last call (for
        :func:`~fleetlens.kafka.clients.wait_acknowledged`, perhaps in another thread)."""
        pending, self._pending = self._pending, []
        return pending

    def flush(self, timeout_s: float) -> None:
        """Block until every queued record is acknowledged.

        Raises:
            KafkaError: a record was not acknowledged; the caller must not move past it.
        """
        wait_acknowledged(self._producer, self.take_pending(), timeout_s=timeout_s)


def read_dlq_headers(headers: list[tuple[str, bytes]]) -> dict[str, Any]:
    """The DLQ headers of a consumed record as a dict of strings."""
    return {k.removeprefix("fleetlens.dlq."): v.decode() for k, v in headers if k in DLQ_HEADERS}
