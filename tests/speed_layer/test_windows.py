"""Windows, watermark, dedup, late data and the aggregates of closed windows, with explicit
timestamps and no Kafka."""

from __future__ import annotations

import random

import msgspec
import numpy as np
import pytest
from datasketches import kll_doubles_sketch

from fleetlens.contract import Event
from speed_layer.aggregate import aggregate_windows
from speed_layer.windows import Deduplicator, OpenWindow, PartitionWindows

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
    return PartitionWindows(size_ms=MIN, lateness_ms=lateness_ms, dedup_ttl_ms=10 * MIN)


def rows(closed: list[OpenWindow]) -> list[dict]:
    """The speed_1m rows of closed windows, with times as epoch ms."""
    out = aggregate_windows(closed, sketch_k=200, emitted_at_ms=0).to_pylist()
    for row in out:
        for column in ("window_start", "last_ts", "emitted_at"):
            row[column] = int(row[column].timestamp() * 1000)
    return out


def test_aggregate_tracks_count_sum_min_max_and_last_by_event_time() -> None:
    window = OpenWindow(0)
    window.add(event(1_000, 5.0))
    window.add(event(3_000, 9.0))
    window.add(event(2_000, 1.0, event_id="late-arrival"))  # older: not the "last" value
    window.add(event(3_000, 7.0, event_id="tie"))  # same time as the last: arrived later

    (row,) = rows([window])
    assert (row["count"], row["sum"], row["min"], row["max"]) == (4, 22.0, 1.0, 9.0)
    assert (row["last"], row["last_ts"]) == (7.0, 3_000)
    assert (row["p50"], row["p99"]) == (5.0, 9.0)
    assert row["tenant"] == "acme" and row["service"] == "api" and row["region"] is None
    # The sketch is the one updating it value by value in arrival order would give.
    sketch = kll_doubles_sketch(200)
    for value in (5.0, 9.0, 1.0, 7.0):
        sketch.update(value)
    assert row["sketch"] == sketch.serialize()
    assert kll_doubles_sketch.deserialize(row["sketch"]).get_quantile(0.5, True) == row["p50"]


@pytest.mark.parametrize("samples", [1, 2, 7, 20, 200, 201, 1_000])
def test_quantiles_are_the_sketchs_own_answers(samples: int) -> None:
    # Up to k samples the sketch is exact and the quantiles are computed for all windows at
    # once; beyond, they are the sketch's estimates. Either way, what reading the sketch says.
    rng = random.Random(samples)
    window = OpenWindow(0)
    for i in range(samples):
        window.add(event(i, round(rng.uniform(0, 100), rng.choice([0, 1, 3])), server="a"))
        window.add(event(i, rng.choice([1.0, 2.0, 2.0, 9.0]), server="b"))
    for row in rows([window]):
        sketch = kll_doubles_sketch.deserialize(row["sketch"])
        assert sketch.n == samples
        assert [row["p50"], row["p95"], row["p99"]] == sketch.get_quantiles([0.5, 0.95, 0.99], True)


def test_quantiles_of_windows_of_many_sizes_at_once() -> None:
    # Keys of different sample counts in one window (their quantiles are computed by size).
    rng = random.Random(7)
    window = OpenWindow(0)
    sizes = {f"s{i}": size for i, size in enumerate([1, 2, 3, 3, 5, 8, 13, 200, 201, 250])}
    for server, size in sizes.items():
        for i in range(size):
            window.add(event(i, round(rng.uniform(-5, 5), rng.choice([0, 2])), server=server))
    got = rows([window])
    assert {row["server_id"]: kll_doubles_sketch.deserialize(row["sketch"]).n for row in got} == (
        sizes
    )
    for row in got:
        sketch = kll_doubles_sketch.deserialize(row["sketch"])
        assert [row["p50"], row["p95"], row["p99"]] == sketch.get_quantiles([0.5, 0.95, 0.99], True)


def test_events_with_different_metric_sets_share_a_window() -> None:
    window = OpenWindow(0)
    window.add(event(1_000, 5.0, server="a", mem_pct=50.0))
    window.add(event(2_000, 6.0, server="b"))
    window.add(event(3_000, 7.0, server="a", disk_pct=10.0))

    got = {(r["server_id"], r["metric"]): (r["count"], r["sum"]) for r in rows([window])}
    assert got == {
        ("a", "cpu_pct"): (2, 12.0),
        ("a", "mem_pct"): (1, 50.0),
        ("a", "disk_pct"): (1, 10.0),
        ("b", "cpu_pct"): (1, 6.0),
    }
    restored = OpenWindow.from_state(
        msgspec.msgpack.decode(msgspec.msgpack.encode(window.to_state()))
    )
    assert rows([restored]) == rows([window])


def test_window_closes_when_the_watermark_passes_its_end() -> None:
    w = windows()
    w.process(event(10_000, 10.0))
    w.process(event(50_000, 30.0))
    w.process(event(80_000, 99.0))  # watermark 50 s: first window still open
    assert w.close_ready() == []

    w.process(event(95_000, 1.0))  # watermark 65 s >= 60 s: closes [0, 60 s)
    closed = rows(w.close_ready())

    assert [(c["window_start"], c["metric"], c["count"], c["sum"]) for c in closed] == [
        (0, "cpu_pct", 2, 40.0)
    ]
    assert (closed[0]["tenant"], closed[0]["service"]) == ("acme", "api")
    assert w.close_ready() == []  # emitted once
    assert w.open_windows == 1


def test_out_of_order_within_lateness_counts_and_later_is_dropped() -> None:
    w = windows()
    w.process(event(70_000, 1.0))  # watermark 40 s
    w.process(event(59_000, 2.0))  # out of order, window [0, 60) still open: counted
    w.process(event(100_000, 3.0))  # watermark 70 s: [0, 60) closes
    w.process(event(30_000, 4.0))  # its window is final: late
    closed = rows(w.close_ready())

    assert [(c["window_start"], c["count"]) for c in closed] == [(0, 1)]
    assert w.late_dropped == 1
    assert w.late_by_window == {0: 1}


def test_duplicates_are_counted_once() -> None:
    w = windows()
    for _ in range(3):
        w.process(event(1_000, 50.0, event_id="same"))
    w.process(event(200_000, 1.0))
    (closed, *_) = rows(w.close_ready())
    assert closed["count"] == 1
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
    assert [c.start for c in w.close_ready()] == [0]
    w.advance_to(10)
    assert w.watermark == 120_000


def test_multiple_metrics_and_servers_get_their_own_windows() -> None:
    w = windows(lateness_ms=0)
    w.process(event(1_000, 10.0, server="a", mem_pct=40.0))
    w.process(event(2_000, 20.0, server="b", mem_pct=60.0))
    w.process(event(61_000, 0.0, server="a"))
    keys = sorted((c["server_id"], c["metric"], c["sum"]) for c in rows(w.close_ready()))
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
            )
        resumed.process(e)
        closed_resumed += resumed.close_ready()

    assert rows(closed_resumed) == rows(closed_straight)
    assert len(rows(closed_straight)) > 10
    assert (resumed.duplicates, resumed.late_dropped) == (
        straight.duplicates,
        straight.late_dropped,
    )


@pytest.mark.parametrize("n", [6, 500, 20_000])
def test_sketch_quantiles_within_documented_rank_error(n: int) -> None:
    values = np.random.default_rng(n).gamma(2.0, 10.0, n)
    window = OpenWindow(0)
    for i, v in enumerate(values):
        window.add(event(i, float(v), event_id=f"e{i}"))
    (row,) = rows([window])
    assert row["count"] == n
    eps = kll_doubles_sketch(200).normalized_rank_error(False)
    ordered = np.sort(values)
    for q, estimate in zip((0.5, 0.95, 0.99), (row["p50"], row["p95"], row["p99"]), strict=True):
        rank = np.searchsorted(ordered, estimate, side="right") / n
        assert abs(rank - q) <= eps + 1 / n
