"""Kafka fetching and validation in a child process; the speed layer's process does the rest.

kafka-python parses every record of a fetch in Python, which is most of what one process can
consume (see ``docs/benchmarks.md``), and checking a payload against the contract costs about
as much again. The fetcher runs both in a process of its own (``python -m
speed_layer.fetcher``) and hands the records over a socket pair (multiprocessing's
``Connection``: pickled lists of bytes, ~1 µs a record): valid ones in canonical form
(:meth:`fleetlens.contract.Validator.canonical`), rejected ones as they came with the reason.
Fetching and validating, and windowing and emitting, run on two cores.

The fetcher holds no state that matters: the speed layer decides where it starts reading (its
checkpoints' offsets) and tracks what it has processed itself. Records the fetcher polled but
the speed layer did not process before a stop or a crash are read again on the next start.
The child dies with its parent (``PR_SET_PDEATHSIG`` on Linux; on any system it stops when the
socket closes).

Protocol, parent → child: the :class:`FetchSpec`, ``("seek", {partition: offset})`` once,
then any number of ``("commit", {partition: offset})`` (committed to the consumer group, for
lag monitoring) and finally ``("stop",)``. Child → parent: ``("hello", cluster_id,
partitions, beginnings)``, then ``("records", [PartitionRecords, ...])`` per non-empty poll,
``("error", text)`` on failure and ``("stopped",)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from fleetlens.config import ContractSettings, KafkaSettings
from fleetlens.contract import ContractViolation, Validator

__all__ = ["FetchSpec", "Fetcher", "FetcherDiedError", "PartitionRecords"]


class PartitionRecords(NamedTuple):
    """The records of one partition from one poll, column by column."""

    partition: int
    offsets: list[int]
    keys: list[bytes | None]
    #: Canonical event bytes; for a rejected record, its value as it came.
    values: list[bytes | None]
    #: Index in the lists -> why the contract rejects that record.
    rejected: dict[int, str]
    #: The partition's log end offset as the fetch reported it (``None`` if unknown).
    highwater: int | None


class FetchSpec(NamedTuple):
    """What the fetcher reads and how (sent to the child process).

    ``instance`` of ``instances``: static assignment, partitions ``p`` with
    ``p % instances == instance``; ``group_id`` receives the committed offsets (lag
    monitoring; no group membership).
    """

    kafka: KafkaSettings
    contract: ContractSettings
    topic: str
    group_id: str
    instance: int
    instances: int
    poll_timeout_ms: int


class FetcherDiedError(RuntimeError):
    """The fetcher process failed or exited."""


class Fetcher:
    """A child process that consumes the partitions of one speed-layer instance.

    Args:
        spec: What to read, how, and the contract to check it against.
    """

    def __init__(self, spec: FetchSpec) -> None:
        # A plain child process rather than multiprocessing's "spawn", which also starts a
        # resource-tracker process (13 MiB) and re-imports the parent's main module.
        ours, theirs = socket.socketpair()
        with ours, theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                # What the parent can import (a test's or a benchmark's paths included).
                env=os.environ | {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            )
            self._conn = Connection(ours.detach())
        self._stopped = False
        self._conn.send(spec)

    def hello(self, timeout_s: float = 60.0) -> tuple[str | None, list[int], dict[int, int]]:
        """Wait for the child to connect: (cluster id, its partitions, their first offsets)."""
        message = self._receive(timeout_s)
        if message is None or message[0] != "hello":
            raise FetcherDiedError(f"the fetcher did not start: {message!r}")
        _, cluster_id, partitions, beginnings = message
        return cluster_id, partitions, beginnings

    def seek(self, offsets: dict[int, int]) -> None:
        """Start reading each partition at ``offsets[partition]``."""
        self._conn.send(("seek", offsets))

    def commit(self, offsets: dict[int, int]) -> None:
        """Have the child commit ``offsets`` to the consumer group (fire and forget)."""
        self._conn.send(("commit", offsets))

    def poll(self, timeout_s: float) -> list[PartitionRecords]:
        """The records of the next poll, or ``[]`` if none came within ``timeout_s``."""
        message = self._receive(timeout_s)
        if message is None:
            return []
        if message[0] == "records":
            records: list[PartitionRecords] = message[1]
            return records
        raise FetcherDiedError(f"unexpected message from the fetcher: {message[0]!r}")

    def _receive(self, timeout_s: float) -> Any:
        try:
            if not self._conn.poll(timeout_s):
                return None
            message = self._conn.recv()
        except (EOFError, OSError) as error:
            raise FetcherDiedError(
                f"the fetcher exited (exit code {self._process.poll()})"
            ) from error
        if message[0] == "error":
            raise FetcherDiedError(f"the fetcher failed: {message[1]}")
        return message

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the child (records still in the pipe are dropped: they are read again)."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(OSError):
            self._conn.send(("stop",))
        deadline = time.monotonic() + timeout_s
        # Drain: the child may be blocked sending a batch.
        with contextlib.suppress(EOFError, OSError):
            while time.monotonic() < deadline and self._conn.poll(0.1):
                if self._conn.recv()[0] == "stopped":
                    break
        try:
            self._process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        self._conn.close()


#: Polls validated ahead of what the speed layer has read: it keeps polling while the layer
#: is busy with a commit (~5,000 records and ~1.5 MB each, with the default settings; 4
#: instead of 8 hold the process ~8 MiB lower at the same throughput).
_PREFETCH_POLLS = 4


class _Outbox:
    """Messages to the parent, sent by a thread of their own: the pipe holds little, so
    without it every pause of the reader (a commit) would stall the polling too. Sending
    waits in a system call, which releases the GIL."""

    def __init__(self, conn: Connection, size: int) -> None:
        self._conn = conn
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=size)
        self._failed: BaseException | None = None
        #: Seconds spent waiting for room in the queue (the speed layer is behind).
        self.blocked_s = 0.0
        self._thread = threading.Thread(target=self._send, name="fetcher-outbox", daemon=True)
        self._thread.start()

    def _send(self) -> None:
        while True:
            message = self._queue.get()
            try:
                self._conn.send(message)
            except (OSError, EOFError) as error:  # the parent is gone
                self._failed = error
                return
            if message[0] != "records":
                return

    def put(self, message: tuple[Any, ...]) -> None:
        """Queue ``message``; blocks while the queue is full."""
        started = time.monotonic()
        try:
            self._put(message)
        finally:
            self.blocked_s += time.monotonic() - started

    def _put(self, message: tuple[Any, ...]) -> None:
        while True:
            if self._failed is not None:
                raise BrokenPipeError("the speed layer closed the pipe") from self._failed
            try:
                self._queue.put(message, timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self, last: tuple[Any, ...]) -> None:
        """Send what is queued, then ``last``, and stop the thread."""
        self.put(last)
        self._thread.join()


def _validated(
    validator: Validator, partition: int, messages: list[Any], highwater: int | None, now_ms: int
) -> PartitionRecords:
    """One partition's polled records, checked against the contract."""
    values: list[bytes | None] = []
    rejected: dict[int, str] = {}
    canonical = validator.canonical
    for index, message in enumerate(messages):
        value = message.value
        try:
            if value is None:
                raise ContractViolation("", "record has no value (tombstone)")
            values.append(canonical(value, now_ms=now_ms))
        except ContractViolation as violation:
            rejected[index] = str(violation)
            values.append(value)
    return PartitionRecords(
        partition,
        [m.offset for m in messages],
        [m.key for m in messages],
        values,
        rejected,
        highwater,
    )


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a kill -9 of the layer)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _serve(conn: Connection, spec: FetchSpec) -> None:
    """The child's main loop."""
    parent = os.getppid()
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return
    try:
        _fetch(conn, spec)
    except (EOFError, BrokenPipeError):
        return  # the parent is gone
    except Exception as error:  # reported to the parent, which fails loudly
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(error).__name__}: {error}"))


def _fetch(conn: Connection, spec: FetchSpec) -> None:
    from kafka import TopicPartition
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    from fleetlens.kafka.clients import all_partitions, make_admin, make_consumer
    from fleetlens.logging import get_logger
    from speed_layer.assignment import assigned_partitions

    log = get_logger("speed.fetcher")
    kafka, topic = spec.kafka, spec.topic
    validator = Validator(spec.contract)
    admin = make_admin(kafka)
    try:
        cluster_id: str | None = admin.describe_cluster().get("cluster_id")
    finally:
        admin.close()
    consumer = make_consumer(kafka, group_id=spec.group_id)
    try:
        everything = [tp.partition for tp in all_partitions(consumer, topic)]
        mine = assigned_partitions(everything, instance=spec.instance, instances=spec.instances)
        partitions = [TopicPartition(topic, p) for p in mine]
        consumer.assign(partitions)
        beginnings = {tp.partition: o for tp, o in consumer.beginning_offsets(partitions).items()}
        conn.send(("hello", cluster_id, mine, beginnings))
        command = conn.recv()
        if command[0] != "seek":
            return
        for partition, offset in command[1].items():
            consumer.seek(TopicPartition(topic, partition), offset)
        outbox = _Outbox(conn, _PREFETCH_POLLS)
        while True:
            while conn.poll(0):
                command = conn.recv()
                if command[0] == "stop":
                    log.info("speed.fetcher_stopped", blocked_s=round(outbox.blocked_s, 3))
                    outbox.close(("stopped",))
                    return
                if command[0] == "commit":
                    offsets = {
                        TopicPartition(topic, p): OffsetAndMetadata(o, "", -1)
                        for p, o in command[1].items()
                    }
                    try:
                        consumer.commit(offsets)
                    except KafkaError as error:  # lag monitoring only
                        log.warning("speed.offset_commit_failed", error=repr(error))
            batch = consumer.poll(timeout_ms=spec.poll_timeout_ms)
            if batch:
                now_ms = int(time.time() * 1000)
                chunks = [
                    _validated(validator, tp.partition, messages, consumer.highwater(tp), now_ms)
                    for tp, messages in batch.items()
                ]
                outbox.put(("records", chunks))
    finally:
        consumer.close(autocommit=False)


def _main(fd: int) -> None:
    """The child's entry point: the connection's file descriptor, then the spec over it."""
    conn = Connection(fd)
    try:
        spec = conn.recv()
    except EOFError:
        return  # the parent is gone
    _serve(conn, spec)


if __name__ == "__main__":
    # Run from the module under its own name, so that what it pickles (PartitionRecords)
    # names a class the parent can find, not this ``__main__``.
    from speed_layer.fetcher import _main as main

    main(int(sys.argv[1]))
