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

__all__ = ["CheckpointStore", "PartitionCheckpoint"]


class PartitionCheckpoint(msgspec.Struct):
    """The state of one partition at ``offset`` (the next record to read)."""

    topic: str
    partition: int
    offset: int
    cluster_id: str | None
    state: dict[str, Any]


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

    def load(self, topic: str, partition: int) -> PartitionCheckpoint | None:
        """The last checkpoint of a partition, if any."""
        data = self._lake.read_bytes(self._path(topic, partition))
        if data is None:
            return None
        checkpoint = self._decoder.decode(data)
        self._committed[(topic, partition)] = checkpoint.offset
        return checkpoint

    def forget(self, topic: str, partition: int) -> None:
        """Drop the offset guard of a partition whose log was reset (another Kafka cluster)."""
        self._committed.pop((topic, partition), None)

    def save(self, checkpoint: PartitionCheckpoint) -> int:
        """Replace a partition's checkpoint atomically; returns its size in bytes.

        Raises:
            ValueError: the offset is behind the last one saved or loaded here. A paranoid
                check: it would mean records are processed twice into the state.
        """
        key = (checkpoint.topic, checkpoint.partition)
        previous = self._committed.get(key)
        if previous is not None and checkpoint.offset < previous:
            raise ValueError(
                f"checkpoint offset for {key} would go back from {previous} to {checkpoint.offset}"
            )
        data = self._encoder.encode(checkpoint)
        self._lake.write_bytes_atomically(self._path(*key), data)
        self._committed[key] = checkpoint.offset
        return len(data)
