"""Checkpoints of the speed layer: each partition's window state together with its offset.

One file per partition (``<lake>/_state/speed/<group>/p-00003.ckpt``, MessagePack), replaced
atomically. A partition's state depends only on its own records, so each file is consistent on
its own, and partitions can move between processes when the scale-out changes.

Commit order (see :mod:`speed_layer.app`): sinks first (Delta ``speed_1m``, Kafka), then these
files, then Kafka's committed offsets (for lag monitoring only). After a crash the layer
resumes from the files: outputs since the last checkpoint are produced again, idempotently.
"""

from __future__ import annotations

from typing import Any

import msgspec

from fleetlens.lake.paths import Lake

__all__ = ["FORMAT", "CheckpointStore", "PartitionCheckpoint"]

#: Version of the state's layout: 3 keeps the alert engine's series as columns (2 kept one
#: entry a series; 2 began keeping the open windows' samples, 1 one aggregate object per
#: window and metric).
FORMAT = 3


class PartitionCheckpoint(msgspec.Struct):
    """The state of one partition at ``offset`` (the next record to read)."""

    topic: str
    partition: int
    offset: int
    cluster_id: str | None
    state: dict[str, Any]
    format: int = 1
    #: The alert engine's share of this partition (its servers' alerts and samples).
    alerts: dict[str, Any] | None = None


class CheckpointStore:
    """Reads and writes partition checkpoints below the lake's ``_state`` folder.

    Args:
        lake: The lake.
        group: Name of the consumer of these checkpoints (the speed layer's group id).
    """

    def __init__(self, lake: Lake, *, group: str) -> None:
        self._lake = lake
        self._group = group
        self._committed: dict[tuple[str, int], int] = {}
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(PartitionCheckpoint)

    def _path(self, topic: str, partition: int) -> str:
        return self._lake.path("_state", "speed", self._group, topic, f"p-{partition:05d}.ckpt")

    def load(
        self, topic: str, partition: int, *, cluster_id: str | None
    ) -> PartitionCheckpoint | None:
        """The last checkpoint of a partition, if any. One of another format is refused,
        unless it belongs to another Kafka cluster (``cluster_id``): such a checkpoint is of
        no use whatever its format, and the caller drops it."""
        data = self._lake.read_bytes(self._path(topic, partition))
        if data is None:
            return None
        checkpoint = self._decoder.decode(data)
        if checkpoint.cluster_id != cluster_id:
            return checkpoint
        if checkpoint.format != FORMAT:
            raise ValueError(
                f"{self._path(topic, partition)} holds a format-{checkpoint.format} checkpoint; "
                f"this speed layer reads format {FORMAT}. Drain the topic with the old version, "
                "or delete the file to rebuild the partition's windows from the log."
            )
        self._committed[(topic, partition)] = checkpoint.offset
        return checkpoint

    def forget(self, topic: str, partition: int) -> None:
        """Drop the offset guard of a partition whose log was reset (another Kafka cluster)."""
        self._committed.pop((topic, partition), None)

    def encode(self, checkpoint: PartitionCheckpoint) -> bytes:
        """The bytes :meth:`write` stores (a snapshot: the state may change afterwards)."""
        return self._encoder.encode(checkpoint)

    def write(self, topic: str, partition: int, offset: int, data: bytes) -> int:
        """Replace a partition's checkpoint with ``data`` (from :meth:`encode`, at ``offset``)
        atomically; returns its size in bytes.

        Raises:
            ValueError: the offset is behind the last one saved or loaded here. A paranoid
                check: it would mean records are processed twice into the state.
        """
        key = (topic, partition)
        previous = self._committed.get(key)
        if previous is not None and offset < previous:
            raise ValueError(
                f"checkpoint offset for {key} would go back from {previous} to {offset}"
            )
        self._lake.write_bytes_atomically(self._path(*key), data)
        self._committed[key] = offset
        return len(data)

    def save(self, checkpoint: PartitionCheckpoint) -> int:
        """:meth:`encode` then :meth:`write`."""
        return self.write(
            checkpoint.topic, checkpoint.partition, checkpoint.offset, self.encode(checkpoint)
        )
