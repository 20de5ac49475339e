"""Checkpoint files of the speed layer, on a local lake: round trip, guards, format."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from fleetlens.config import LakeSettings
from fleetlens.contract import Event
from fleetlens.lake.paths import Lake
from speed_layer.checkpoint import FORMAT, CheckpointStore, PartitionCheckpoint
from speed_layer.windows import PartitionWindows


def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(Lake(LakeSettings(root=str(tmp_path))), group="g")


def state() -> dict:
    windows = PartitionWindows(size_ms=60_000, lateness_ms=30_000, dedup_ttl_ms=150_000)
    for i in range(10):
        windows.process(
            Event(
                event_id=f"e{i}",
                server_id=f"s{i % 3}",
                ts=1_000 * i,
                metrics={"cpu_pct": float(i), "mem_pct": 50.0},
                tags={"tenant": "acme"},
            )
        )
    return windows.to_state()


def checkpoint(offset: int, **changes: object) -> PartitionCheckpoint:
    fields: dict = {
        "topic": "t",
        "partition": 3,
        "offset": offset,
        "cluster_id": "c",
        "state": state(),
        "format": FORMAT,
    }
    return PartitionCheckpoint(**(fields | changes))


def test_round_trip_restores_the_windows(tmp_path: Path) -> None:
    saved = checkpoint(42)
    size = store(tmp_path).save(saved)

    loaded = store(tmp_path).load("t", 3, cluster_id="c")

    assert loaded is not None and size > 0
    assert (loaded.offset, loaded.cluster_id) == (42, "c")
    restored = PartitionWindows.from_state(
        loaded.state, size_ms=60_000, lateness_ms=30_000, dedup_ttl_ms=150_000
    )
    assert restored.to_state() == msgspec.msgpack.decode(msgspec.msgpack.encode(saved.state))
    assert store(tmp_path).load("t", 4, cluster_id="c") is None


def test_an_offset_never_goes_back(tmp_path: Path) -> None:
    checkpoints = store(tmp_path)
    checkpoints.save(checkpoint(10))
    with pytest.raises(ValueError, match="go back from 10 to 9"):
        checkpoints.save(checkpoint(9))
    assert store(tmp_path).load("t", 3, cluster_id="c").offset == 10  # type: ignore[union-attr]


def test_a_checkpoint_of_another_format_is_refused_with_the_way_out(tmp_path: Path) -> None:
    old = checkpoint(5, format=1, state={"open": [[0, "s1", "cpu_pct", [1, 2.0]]]})
    store(tmp_path).save(old)

    with pytest.raises(ValueError, match="format-1 checkpoint") as info:
        store(tmp_path).load("t", 3, cluster_id="c")
    assert "p-00003.ckpt" in str(info.value) and "delete the file" in str(info.value)
    # Of another Kafka cluster (the embedded broker restarted empty), it is of no use
    # whatever its format: handed back for the caller to drop, not refused.
    other = store(tmp_path).load("t", 3, cluster_id="another")
    assert other is not None and other.format == 1
