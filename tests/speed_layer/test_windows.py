"""Windows, watermark, dedup and late data, with explicit timestamps and no Kafka."""

from __future__ import annotations

import random

import msgspec
import numpy as np
import pytest
from datasketches import kll_doubles_sketch

from fleetlens.contract import Event
from speed_layer.aggregate import WindowAggregate
from speed_layer.windows import Deduplicator, PartitionWindows

MIN = 60_000
TAGS = {"tenant": "acme", "service": "api"}


def event(
    ts: int, cpu: float, *, server: str = "s1", event_id: str | None = None, **metrics: float
) -> Event:
    return Event(
        event_id=event_id or f"{server}-{ts}",
        server_id=server,
        ts=ts,
        metrics={"cpu_pct": cpu, **metrics},
        tags=TAGS,
    )


def windows(lateness_ms: int = 30_000) -> PartitionWindows:
    return PartitionWindows(
        size_ms=MIN, lateness_ms=lateness_ms, dedup_ttl_ms=10 * MIN, sketch_k=200
    )


def test_aggregate_tracks_count_sum_min_max_and_last_by_event_time() -> None:
    agg = WindowAggregate.initialize(5.0, 1_000, k=200)
    agg.add(9.0, 3_000)
    agg.add(1.0, 2_000)  # older than the last: not the "last" value

    assert (agg.count, agg.sum, agg.min, agg.max) == (3, 15.0, 1.0, 9.0)
    assert (agg.last, agg.last_ts) == (9.0, 3_000)
    assert agg.quantiles()[0] == 5.0
    restored = WindowAggregate.from_state(agg.to_state())
    assert restored.to_state() == agg.to_state()


def test_window_closes_when_the_watermark_passes_its_end() -> None:
    w = windows()
    w.process(event(10_000, 10.0))
    w.process(event(50_000, 30.0))
    w.process(event(80_000, 99.0))  # watermark 50 s: first window still open
    assert w.close_ready() == []

    w.process(event(95_000, 1.0))  # watermark 65 s >= 60 s: closes [0, 60 s)
    closed = w.close_ready()

    assert [(c.window_start, c.metric, c.aggregate.count, c.aggregate.sum) for c in closed] == [
        (0, "cpu_pct", 2, 40.0)
    ]
    assert closed[0].tags == TAGS
    assert w.close_ready() == []  # emitted once
    assert w.open_windows == 1


def test_out_of_order_within_lateness_counts_and_later_is_dropped() -> None:
    w = windows()
    w.process(event(70_000, 1.0))  # watermark 40 s
    w.process(event(59_000, 2.0))  # out of order, window [0, 60) still open: counted
    w.process(event(100_000, 3.0))  # watermark 70 s: [0, 60) closes
    w.process(event(30_000, 4.0))  # its window is final: late
    closed = w.close_ready()

    assert [(c.window_start, c.aggregate.count) for c in closed] == [(0, 1)]
    assert w.late_dropped == 1
    assert w.late_by_window == {0: 1}


def test_duplicates_are_counted_once() -> None:
    w = windows()
    for _ in range(3):
        w.process(event(1_000, 50.0, event_id="same"))
    w.process(event(200_000, 1.0))
    (closed, *_) = w.close_ready()
    assert closed.aggregate.count == 1
    assert w.duplicates == 2


def test_dedup_memory_is_bounded_by_its_ttl() -> None:
    dedup = Deduplicator(ttl_ms=1_000)
    for ts in range(0, 10_000, 10):
        dedup.seen(f"e{ts}", ts)
    dedup.evict(10_000)
    assert len(dedup) == 100  # only the last second's ids
    assert dedup.seen("e9990", 9_990)
    assert not dedup.seen("e0", 0)  # forgotten


def test_partition_dedup_evicts_as_it_goes() -> None:
    w = windows()
    for i in range(20_000):
        w.process(event(i * 1_000, 1.0, server=f"s{i % 10}"))
    assert len(w.dedup) <= (10 * MIN) // 1_000 + 1_100


def test_idle_partition_can_be_advanced_but_never_back() -> None:
    w = windows()
    w.process(event(1_000, 1.0))
    w.advance_to(120_000)
    assert [c.window_start for c in w.close_ready()] == [0]
    w.advance_to(10)
    assert w.watermark == 120_000


def test_multiple_metrics_and_servers_get_their_own_windows() -> None:
    w = windows(lateness_ms=0)
    w.process(event(1_000, 10.0, server="a", mem_pct=40.0))
    w.process(event(2_000, 20.0, server="b", mem_pct=60.0))
    w.process(event(61_000, 0.0, server="a"))
    keys = sorted((c.server_id, c.metric, c.aggregate.sum) for c in w.close_ready())
    assert keys == [
        ("a", "cpu_pct", 10.0),
        ("a", "mem_pct", 40.0),
        ("b", "cpu_pct", 20.0),
        ("b", "mem_pct", 60.0),
    ]


def test_checkpoint_round_trip_resumes_exactly() -> None:
    rng = random.Random(5)
    stream = [
        event(
            rng.randrange(0, 10 * MIN),
            rng.random() * 100,
            server=f"s{rng.randrange(5)}",
            event_id=f"id{rng.randrange(800)}",
        )
        for _ in range(1_000)
    ]
    stream.sort(key=lambda e: e.ts + rng.randrange(-40_000, 40_000))

    straight = windows()
    closed_straight = []
    for e in stream:
        straight.process(e)
        closed_straight += straight.close_ready()

    resumed = windows()
    closed_resumed = []
    for i, e in enumerate(stream):
        if i in (100, 450, 700):  # crash and restore through the checkpoint encoding
            data = msgspec.msgpack.encode(resumed.to_state())
            resumed = PartitionWindows.from_state(
                msgspec.msgpack.decode(data),
                size_ms=MIN,
                lateness_ms=30_000,
                dedup_ttl_ms=10 * MIN,
                sketch_k=200,
            )
        resumed.process(e)
        closed_resumed += resumed.close_ready()

    def key(c):
        a = c.aggregate
        return (
            c.window_start,
            c.server_id,
            c.metric,
            a.count,
            a.sum,
            a.min,
            a.max,
            a.last,
            a.sketch.serialize(),
        )

    assert [key(c) for c in closed_resumed] == [key(c) for c in closed_straight]
    assert (resumed.duplicates, resumed.late_dropped) == (
        straight.duplicates,
        straight.late_dropped,
    )


@pytest.mark.parametrize("n", [6, 500, 20_000])
def test_sketch_quantiles_within_documented_rank_error(n: int) -> None:
    values = np.random.default_rng(n).gamma(2.0, 10.0, n)
    agg = WindowAggregate.initialize(float(values[0]), 0, k=200)
    for v in values[1:]:
        agg.add(float(v), 1)
    eps = kll_doubles_sketch(200).normalized_rank_error(False)
    ordered = np.sort(values)
    for q, estimate in zip((0.5, 0.95, 0.99), agg.quantiles(), strict=True):
        rank = np.searchsorted(ordered, estimate, side="right") / n
        assert abs(rank - q) <= eps + 1 / n
