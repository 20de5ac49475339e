"""Event-time tumbling windows for one Kafka partition, with dedup, watermark and late data.

Pure: events in, closed windows out; no Kafka, no clock. Each partition keeps its own
watermark (its maximum event time minus the allowed lateness), so what a partition computes
depends only on its own records, in their log order: replaying a partition from a checkpoint
gives the same windows whatever the other partitions did meanwhile. A partition that has gone
idle can be moved forward from outside (:meth:`PartitionWindows.advance_to`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fleetlens.contract import Event
from speed_layer.aggregate import WindowAggregate

__all__ = ["ClosedWindow", "Deduplicator", "PartitionWindows"]

_NEVER = -(2**62)


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A final window: emitted once, when the partition's watermark passes its end."""

    window_start: int
    server_id: str
    metric: str
    tags: dict[str, str]
    aggregate: WindowAggregate


class Deduplicator:
    """Remembers event ids for ``ttl_ms`` of event time, in insertion order."""

    def __init__(self, ttl_ms: int) -> None:
        self.ttl_ms = ttl_ms
        self._seen: OrderedDict[str, int] = OrderedDict()

    def seen(self, event_id: str, ts: int) -> bool:
        """True if ``event_id`` was seen before (within the TTL); remembers it otherwise."""
        if event_id in self._seen:
            return True
        self._seen[event_id] = ts
        return False

    def evict(self, now_event_ms: int) -> None:
        """Forget ids older than the TTL. Insertion order is nearly event-time order; a late id
        stays until the ids in front of it expire, which only delays its eviction."""
        cutoff = now_event_ms - self.ttl_ms
        seen = self._seen
        while seen:
            event_id, ts = next(iter(seen.items()))
            if ts >= cutoff:
                break
            del seen[event_id]

    def __len__(self) -> int:
        return len(self._seen)

    def to_state(self) -> list[tuple[str, int]]:
        """The remembered ids with their event times, oldest insertion first."""
        return list(self._seen.items())

    @classmethod
    def from_state(cls, ttl_ms: int, state: list[tuple[str, int]]) -> Deduplicator:
        """Inverse of :meth:`to_state`."""
        restored = cls(ttl_ms)
        restored._seen.update(state)
        return restored


@dataclass
class PartitionWindows:
    """The open windows, dedup memory and watermark of one partition.

    Args:
        size_ms: Window length.
        lateness_ms: How far behind the maximum event time an event may be and still count.
        dedup_ttl_ms: How long event ids are remembered.
        sketch_k: KLL sketch accuracy parameter.
        late_memory_ms: How long the late count of a window is kept behind the watermark
            (the counts are reported as running totals, so they must outlive a commit).
    """

    size_ms: int
    lateness_ms: int
    dedup_ttl_ms: int
    sketch_k: int = 200
    late_memory_ms: int = 48 * 3_600_000
    max_ts: int = _NEVER
    watermark: int = _NEVER
    records: int = 0
    duplicates: int = 0
    late_dropped: int = 0
    late_by_window: dict[int, int] = field(default_factory=dict)
    #: window start -> server -> metric -> aggregate
    _open: dict[int, dict[str, dict[str, WindowAggregate]]] = field(default_factory=dict)
    _tags: dict[int, dict[str, dict[str, str]]] = field(default_factory=dict)
    _dedup: Deduplicator | None = None

    def __post_init__(self) -> None:
        if self._dedup is None:
            self._dedup = Deduplicator(self.dedup_ttl_ms)

    @property
    def dedup(self) -> Deduplicator:
        """The dedup memory."""
        assert self._dedup is not None
        return self._dedup

    def process(self, event: Event) -> None:
        """Fold one validated event into its window (or count it as duplicate or late)."""
        self.records += 1
        ts = event.ts
        dedup = self._dedup
        assert dedup is not None
        if self.records % 1024 == 0:
            # Counted in records, not time, so that a replay evicts at the same points.
            dedup.evict(self.max_ts)
            horizon = self.watermark - self.late_memory_ms
            self.late_by_window = {s: n for s, n in self.late_by_window.items() if s >= horizon}
        if dedup.seen(event.event_id, ts):
            self.duplicates += 1
            return
        start = ts - ts % self.size_ms
        if start + self.size_ms <= self.watermark:
            # Its window was already emitted as final: the batch layer will include it.
            self.late_dropped += 1
            self.late_by_window[start] = self.late_by_window.get(start, 0) + 1
            return
        bucket = self._open.get(start)
        if bucket is None:
            bucket = self._open[start] = {}
            self._tags[start] = {}
        server = event.server_id
        self._tags[start][server] = event.tags
        aggregates = bucket.get(server)
        if aggregates is None:
            k = self.sketch_k
            bucket[server] = {
                metric: WindowAggregate(1, value, value, value, value, ts, k, [value])
                for metric, value in event.metrics.items()
            }
        else:
            for metric, value in event.metrics.items():
                aggregate = aggregates.get(metric)
                if aggregate is None:
                    aggregates[metric] = WindowAggregate.initialize(value, ts, k=self.sketch_k)
                else:
                    aggregate.add(value, ts)
        if ts > self.max_ts:
            self.max_ts = ts
            self.watermark = max(self.watermark, ts - self.lateness_ms)

    def advance_to(self, watermark: int) -> None:
        """Move the watermark forward (never back), e.g. for a partition that went idle."""
        self.watermark = max(self.watermark, watermark)

    def close_ready(self) -> list[ClosedWindow]:
        """Pop every window whose end the watermark has passed, oldest first."""
        closed: list[ClosedWindow] = []
        for start in sorted(s for s in self._open if s + self.size_ms <= self.watermark):
            tags = self._tags.pop(start)
            for server, aggregates in self._open.pop(start).items():
                server_tags = tags[server]
                closed.extend(
                    ClosedWindow(start, server, metric, server_tags, aggregate)
                    for metric, aggregate in aggregates.items()
                )
        return closed

    @property
    def open_windows(self) -> int:
        """How many (server, metric, window) aggregates are open."""
        return sum(
            len(aggregates) for bucket in self._open.values() for aggregates in bucket.values()
        )

    def to_state(self) -> dict[str, Any]:
        """Everything needed to resume exactly here, as plain data."""
        return {
            "max_ts": self.max_ts,
            "watermark": self.watermark,
            "counters": [self.records, self.duplicates, self.late_dropped],
            "late_by_window": list(self.late_by_window.items()),
            "open": [
                (start, server, metric, aggregate.to_state())
                for start, bucket in self._open.items()
                for server, aggregates in bucket.items()
                for metric, aggregate in aggregates.items()
            ],
            "tags": [
                (start, server, tags)
                for start, servers in self._tags.items()
                for server, tags in servers.items()
            ],
            "dedup": self.dedup.to_state(),
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        *,
        size_ms: int,
        lateness_ms: int,
        dedup_ttl_ms: int,
        sketch_k: int,
        late_memory_ms: int = 48 * 3_600_000,
    ) -> PartitionWindows:
        """Inverse of :meth:`to_state` (window size and lateness come from the settings)."""
        restored = cls(
            size_ms=size_ms,
            lateness_ms=lateness_ms,
            dedup_ttl_ms=dedup_ttl_ms,
            sketch_k=sketch_k,
            late_memory_ms=late_memory_ms,
            max_ts=state["max_ts"],
            watermark=state["watermark"],
            _dedup=Deduplicator.from_state(dedup_ttl_ms, [tuple(x) for x in state["dedup"]]),
        )
        restored.records, restored.duplicates, restored.late_dropped = state["counters"]
        restored.late_by_window = {int(s): int(n) for s, n in state["late_by_window"]}
        for start, server, metric, aggregate in state["open"]:
            restored._open.setdefault(start, {}).setdefault(server, {})[metric] = (
                WindowAggregate.from_state(tuple(aggregate), k=sketch_k)
            )
        for start, server, tags in state["tags"]:
            restored._tags.setdefault(start, {})[server] = tags
        return restored
