"""Static scale-out: which partitions one of several speed-layer processes reads."""

from __future__ import annotations

__all__ = ["assigned_partitions"]


def assigned_partitions(partitions: list[int], *, instance: int, instances: int) -> list[int]:
    """The partitions process ``instance`` of ``instances`` reads: ``p % instances == instance``.

    Static, without consumer-group rebalancing: each process checkpoints its own partitions,
    and a partition's state depends only on its own records, so changing ``instances`` only
    moves checkpoint files between owners.
    """
    if instance >= instances:
        raise ValueError(f"speed.instance {instance} must be below speed.instances {instances}")
    return [p for p in partitions if p % instances == instance]
