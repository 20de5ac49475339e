"""Kafka client factories built from the settings (kafka-python, Kafka protocol only)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from fleetlens.config import KafkaSettings, TopicSpec

__all__ = [
    "all_partitions",
    "connection_config",
    "describe_topics",
    "ensure_topics",
    "log_end_offsets",
    "make_admin",
    "make_consumer",
    "make_producer",
    "wait_acknowledged",
]


def connection_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Bootstrap, client id and security options shared by every client."""
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in kafka.bootstrap_servers.split(",")],
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        config["sasl_mechanism"] = kafka.sasl_mechanism
        config["sasl_plain_username"] = kafka.sasl_username
        if kafka.sasl_password is not None:
            config["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    if kafka.ssl_cafile:
        config["ssl_cafile"] = kafka.ssl_cafile
    return config


def make_producer(kafka: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """An idempotent producer with ``acks=all``: a send is acknowledged only once durable."""
    p = kafka.producer
    config = connection_config(kafka) | {
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": p.linger_ms,
        "batch_size": p.batch_size,
        "max_request_size": p.max_request_size,
        "request_timeout_ms": p.request_timeout_ms,
        "delivery_timeout_ms": p.delivery_timeout_ms,
        "max_block_ms": p.max_block_ms,
    }
    return KafkaProducer(**(config | overrides))


def wait_acknowledged(producer: KafkaProducer, futures: Iterable[Any], *, timeout_s: float) -> None:
    """Send what ``producer`` has queued and wait for the acknowledgement of each of
    ``futures`` (the results of its ``send``).

    Raises:
        KafkaError: a record was not acknowledged; the caller must not move past it.
    """
    producer.flush(timeout=timeout_s)
    for future in futures:
        future.get(timeout=timeout_s)


def make_consumer(kafka: KafkaSettings, *, group_id: str | None, **overrides: Any) -> KafkaConsumer:
    """A consumer with manual offset management (auto-commit off)."""
    c = kafka.consumer
    config = connection_config(kafka) | {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": c.max_poll_records,
        "fetch_max_bytes": c.fetch_max_bytes,
        "max_partition_fetch_bytes": c.max_partition_fetch_bytes,
        "max_poll_interval_ms": c.max_poll_interval_ms,
        "session_timeout_ms": c.session_timeout_ms,
        "fetch_max_wait_ms": c.fetch_max_wait_ms,
    }
    return KafkaConsumer(**(config | overrides))


def make_admin(kafka: KafkaSettings, **overrides: Any) -> KafkaAdminClient:
    """An admin client for topic management."""
    return KafkaAdminClient(**(connection_config(kafka) | overrides))


def _topic_specs(kafka: KafkaSettings) -> list[TopicSpec]:
    t = kafka.topics
    return [t.metrics, t.dlq, t.agg1m, t.alerts]


def describe_topics(kafka: KafkaSettings) -> dict[str, int]:
    """The partition count of each configured topic that exists."""
    admin = make_admin(kafka)
    try:
        existing = set(admin.list_topics())
        names = [s.name for s in _topic_specs(kafka) if s.name in existing]
        return {d["name"]: len(d["partitions"]) for d in admin.describe_topics(names)}
    finally:
        admin.close()


def ensure_topics(kafka: KafkaSettings) -> dict[str, int]:
    """Create the configured topics that are missing; return each topic's partition count."""
    specs = _topic_specs(kafka)
    admin = make_admin(kafka)
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(s.name, s.partitions, s.replication_factor)
            for s in specs
            if s.name not in existing
        ]
        if missing:
            # Another process may create them between list and create.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
        described = admin.describe_topics([s.name for s in specs])
        return {d["name"]: len(d["partitions"]) for d in described}
    finally:
        admin.close()


def all_partitions(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    """Every partition of ``topic``, sorted (waits for metadata)."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise RuntimeError(f"topic {topic!r} does not exist or has no partitions")
    return [TopicPartition(topic, p) for p in sorted(partitions)]


def log_end_offsets(
    consumer: KafkaConsumer, partitions: list[TopicPartition], *, poll_timeout_ms: int = 300
) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition, confirmed by reading.

    ``ListOffsets(latest)`` alone is not enough: the embedded broker (Tansu) reports the base
    offset + 1 of the newest batch until another batch arrives, so a multi-record batch at the
    end of a partition is undercounted. Reading from the reported end onwards finds the rest
    (on Kafka it reads nothing). The consumer is left assigned to ``partitions``.
    """
    reported = consumer.end_offsets(partitions)
    ends = dict(reported)
    consumer.assign(partitions)
    for tp in partitions:
        consumer.seek(tp, reported[tp])
    while batch := consumer.poll(timeout_ms=poll_timeout_ms):
        for tp, records in batch.items():
            ends[tp] = max(ends[tp], records[-1].offset + 1)
    return ends
