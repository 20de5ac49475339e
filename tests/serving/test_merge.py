"""The lambda invariant, property-style: wherever the batch watermarks are, whatever the late
and duplicate events, range, step and grouping, the merged answer's ``count, sum, min,
max`` equal the exact answer from every point, and merged quantiles stay within the KLL
sketch's rank error.

The batch tables hold every distinct event (the batch layer sees late ones too); the speed
layer's windows hold the distinct events that were on time. Late events in windows the
speed layer serves are missing from the answer until the batch layer passes them: the
reference leaves exactly those out (the query engine reports how many, from
``speed_late_1m``: ``tests/serving/test_query.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from datasketches import kll_doubles_sketch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetlens.config import RetentionSettings
from fleetlens.lake.schemas import ROLLUP_1D, ROLLUP_1H, ROLLUP_1M, SPEED_1M
from fleetlens.serving.merge import (
    AggregateError,
    merge_buckets,
    parse_aggregates,
    partial_columns,
    points_to_buckets,
    select_segments,
)
from fleetlens.serving.tiers import QueryPlan, plan_query
from fleetlens.simulator.lake import POINT_SCHEMA, rollup_rows

T0 = datetime(2026, 11, 2, tzinfo=UTC)
SPAN_S = 3 * 86400
NOW = T0 + timedelta(days=4)
SERVICES = ("api", "db")
K = 200
#: KLL's double-sided normalized rank error for k = 200 (~1.65 %), with room for the
#: estimate of a merged sketch.
RANK_EPS = kll_doubles_sketch.get_normalized_rank_error(K, False) * 1.5

event = st.tuples(
    st.integers(0, 3),  # server
    st.integers(0, SPAN_S - 1),  # seconds after T0
    st.floats(0, 100, allow_nan=False, width=32),
    st.booleans(),  # late: the speed layer dropped it
    st.booleans(),  # sent twice
)


def _points(events: list[tuple[int, int, float, bool, bool]]) -> tuple[pl.DataFrame, pl.Series]:
    """Distinct events as points, and which of them were late. A duplicate is the same event
    (same id) again: both layers keep one copy."""
    rows = []
    for server, offset, value, late, twice in events:
        rows.extend([(server, offset, value, late)] * (2 if twice else 1))
    frame = pl.DataFrame(rows, schema=["server", "offset", "value", "late"], orient="row").unique(
        subset=["server", "offset"], keep="first", maintain_order=True
    )
    points = frame.select(
        ts=(pl.lit(T0) + pl.duration(seconds=pl.col("offset"))).dt.cast_time_unit("us"),
        server_id=pl.format("srv-{}", pl.col("server")),
        metric=pl.lit("cpu_pct"),
        value=pl.col("value").cast(pl.Float64),
        tenant=pl.lit("acme"),
        region=pl.lit("eu-west-1"),
        env=pl.lit("prod"),
        service=pl.col("server").map_elements(lambda s: SERVICES[s % 2], pl.String),
        cluster=pl.lit("c1"),
    )
    return points.cast(POINT_SCHEMA), frame["late"]  # type: ignore[arg-type]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    events=st.lists(event, min_size=1, max_size=120),
    batch_hours=st.one_of(st.none(), st.integers(0, SPAN_S // 3600)),
    daily_lag=st.one_of(st.none(), st.integers(0, 2)),
    start_min=st.integers(0, SPAN_S // 60),
    span_min=st.integers(1, SPAN_S // 60),
    step_s=st.sampled_from([60, 120, 300, 900, 3600, 7200, 21600, 86400]),
    group_by=st.sampled_from([("server_id",), ("service",), ()]),
)
def test_merged_answer_equals_the_exact_answer_from_all_points(
    events: list[tuple[int, int, float, bool, bool]],
    batch_hours: int | None,
    daily_lag: int | None,
    start_min: int,
    span_min: int,
    step_s: int,
    group_by: tuple[str, ...],
) -> None:
    points, late = _points(events)
    watermarks: dict[str, datetime] = {}
    if batch_hours is not None:
        hourly = T0 + timedelta(hours=batch_hours)
        watermarks = {ROLLUP_1M: hourly, ROLLUP_1H: hourly}
        if daily_lag is not None:
            midnight = hourly.replace(hour=0) - timedelta(days=daily_lag)
            watermarks[ROLLUP_1D] = max(midnight, T0)
    start = T0 + timedelta(minutes=start_min)
    plan = plan_query(
        start=start,
        end=start + timedelta(minutes=span_min),
        step_s=step_s,
        watermarks=watermarks,
        retention=RetentionSettings(),
        now=NOW,
    )
    on_time = points.filter(~late)
    frames = {
        ROLLUP_1M: rollup_rows(points, window_s=60, sketch_k=K),
        ROLLUP_1H: rollup_rows(points, window_s=3600, sketch_k=K),
        ROLLUP_1D: rollup_rows(points, window_s=86400, sketch_k=K),
        SPEED_1M: rollup_rows(on_time, window_s=60, sketch_k=K),
    }
    aggs = ("count", "sum", "min", "max", "avg", "p50", "p95")
    got = merge_buckets(select_segments(plan, frames), plan=plan, group_by=group_by, aggs=aggs)

    # The reference: every distinct point of the range, less the late ones the speed layer
    # is serving the windows of.
    speed = next((s for s in plan.segments if s.table == SPEED_1M), None)
    visible = points.with_columns(late=late).filter(
        pl.col("ts") >= plan.start,
        pl.col("ts") < plan.end,
        ~(pl.col("late") & (pl.lit(speed is not None) & (pl.col("ts") >= (speed or plan).start))),
    )
    want = points_to_buckets(
        visible, plan=plan, group_by=group_by, aggs=("count", "sum", "min", "max")
    )
    assert got.select("window_start", *group_by, "count").equals(
        want.select("window_start", *group_by, "count")
    )
    assert got["min"].to_list() == want["min"].to_list()
    assert got["max"].to_list() == want["max"].to_list()
    np.testing.assert_allclose(got["sum"].to_numpy(), want["sum"].to_numpy(), rtol=1e-9)

    # Quantiles: the rank of each estimate among the bucket's values is within the error.
    step = f"{plan.step_s}s"
    values = (
        visible.with_columns(
            window_start=pl.col("ts").dt.truncate(step)
            if plan.step_s < 86400
            else pl.col("ts").dt.truncate("1d")
        )
        .group_by("window_start", *group_by)
        .agg(pl.col("value").sort())
    )
    joined = got.join(values, on=["window_start", *group_by])
    assert joined.height == got.height
    for row in joined.iter_rows(named=True):
        bucket = np.asarray(row["value"])
        for name, q in (("p50", 0.5), ("p95", 0.95)):
            rank = np.searchsorted(bucket, row[name], side="right") / len(bucket)
            below = np.searchsorted(bucket, row[name], side="left") / len(bucket)
            assert below - RANK_EPS <= q <= rank + RANK_EPS, (name, row[name], len(bucket))


def _batch_plan(span: timedelta, *, step_s: int) -> QueryPlan:
    """The plan of ``[T0, T0 + span)`` in steps of ``step_s``, all of it before the batch
    watermark (``rollup_1m``'s, an hour past the end)."""
    return plan_query(
        start=T0,
        end=T0 + span,
        step_s=step_s,
        watermarks={ROLLUP_1M: T0 + span + timedelta(hours=1)},
        retention=RetentionSettings(),
        now=NOW,
    )


def _frame_at(minutes: Sequence[float], values: list[float]) -> pl.DataFrame:
    points = pl.DataFrame(
        {
            "ts": [T0 + timedelta(minutes=m) for m in minutes],
            "server_id": "srv-0",
            "metric": "cpu_pct",
            "value": values,
            "tenant": "acme",
            "region": "eu-west-1",
            "env": "prod",
            "service": "api",
            "cluster": "c1",
        }
    )
    return points.cast(POINT_SCHEMA)  # type: ignore[arg-type]


def test_no_window_is_counted_twice_at_the_boundary_after_late_data() -> None:
    """A late sample arrived after the speed layer closed its window; the batch layer has it
    and its watermark has passed the window: the batch window counts, the speed one not."""
    points = _frame_at([0, 1, 61, 62], [10.0, 20.0, 30.0, 40.0])
    seen_by_speed = points.filter(pl.col("value") != 20.0)  # the late one
    boundary = T0 + timedelta(hours=1)
    plan = plan_query(
        start=T0,
        end=T0 + timedelta(hours=2),
        step_s=3600,
        watermarks={ROLLUP_1M: boundary, ROLLUP_1H: boundary},
        retention=RetentionSettings(),
        now=NOW,
    )
    frames = {
        ROLLUP_1H: rollup_rows(points, window_s=3600),
        ROLLUP_1M: rollup_rows(points, window_s=60),
        # The speed layer still holds its windows of both hours (its retention is 48 h).
        SPEED_1M: rollup_rows(seen_by_speed, window_s=60),
    }
    got = merge_buckets(
        select_segments(plan, frames), plan=plan, group_by=(), aggs=("count", "sum", "last")
    )
    assert got.rows() == [
        (T0, 2, 30.0, 20.0),
        (boundary, 2, 70.0, 40.0),
    ]


def test_a_bucket_of_one_window_reuses_its_stored_quantiles() -> None:
    points = _frame_at(list(range(10)), [float(v) for v in range(10)])
    rows = rollup_rows(points, window_s=60).with_columns(p95=pl.lit(-1.0))
    plan = _batch_plan(timedelta(minutes=10), step_s=60)
    got = merge_buckets(rows, plan=plan, group_by=(), aggs=("p95", "p90"))
    assert got["p95"].to_list() == [-1.0] * 10  # stored, not recomputed
    assert got["p90"].to_list() == [float(v) for v in range(10)]  # from the sketch


@pytest.mark.parametrize(
    ("step_s", "group_by", "aggs", "reads_sketch"),
    [
        (60, ("server_id",), ("avg", "p95", "last"), False),  # one window a bucket: a projection
        (60, ("server_id",), ("p90",), True),  # not stored: from the sketch
        (300, ("server_id",), ("avg", "p95"), True),  # five windows a bucket
        (60, ("service",), ("max", "p99"), True),  # servers merged
    ],
)
def test_a_merge_reads_only_the_columns_it_says(
    step_s: int, group_by: tuple[str, ...], aggs: tuple[str, ...], reads_sketch: bool
) -> None:
    seconds = range(0, 900, 7)
    points = _frame_at([s / 60 for s in seconds], [float(s % 13) for s in seconds])
    rows = rollup_rows(points, window_s=60)
    plan = _batch_plan(timedelta(minutes=15), step_s=step_s)
    columns = partial_columns(plan, group_by, aggs)
    assert ("sketch" in columns) is reads_sketch
    narrow = merge_buckets(rows.select(columns), plan=plan, group_by=group_by, aggs=aggs)
    assert narrow.equals(merge_buckets(rows, plan=plan, group_by=group_by, aggs=aggs))
    assert narrow.columns == ["window_start", *group_by, *aggs]
    assert narrow.height == 15 * 60 // step_s


def test_unknown_aggregates_are_refused_with_the_allowed_ones() -> None:
    assert parse_aggregates(["avg", "p99.9", "avg"]) == ("avg", "p99.9")
    with pytest.raises(AggregateError, match="avg, min, max"):
        parse_aggregates(["median"])
    with pytest.raises(AggregateError):
        parse_aggregates(["p100"])


def test_quantiles_merged_from_many_full_sketches_stay_within_the_rank_error() -> None:
    """A day of two servers every 10 s, in 1-minute windows (each sketch exact) merged into
    one bucket of 17,280 values: the sketch compacts, and the estimate must hold."""
    rng = np.random.default_rng(7)
    seconds = np.arange(0, 86400, 10)
    frames = [
        _frame_at([0] * len(seconds), list(rng.gamma(2.0, 10.0, len(seconds)))).with_columns(
            ts=pl.Series([T0 + timedelta(seconds=int(s)) for s in seconds]).dt.cast_time_unit("us"),
            server_id=pl.lit(f"srv-{i}"),
        )
        for i in range(2)
    ]
    points = pl.concat(frames)
    plan = _batch_plan(timedelta(days=1), step_s=86400)
    got = merge_buckets(
        select_segments(plan, {ROLLUP_1M: rollup_rows(points, window_s=60)}),
        plan=plan,
        group_by=(),
        aggs=("count", "p50", "p99"),
    )
    values = np.sort(points["value"].to_numpy())
    assert got["count"].to_list() == [len(values)]
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        rank = np.searchsorted(values, got[name][0], side="right") / len(values)
        assert abs(rank - q) <= RANK_EPS, (name, rank)


@pytest.mark.parametrize("order", ["files out of order", "random"])
def test_a_projection_comes_sorted_whatever_order_its_rows_came_in(order: str) -> None:
    """Rows as a scan of hour files yields them (each file sorted, the files not) or in any
    order: the answer is sorted by time, then server, either way."""
    minutes = [m for m in range(180) for _ in range(3)]
    points = _frame_at(minutes, [float(m % 17) for m in minutes]).with_columns(
        server_id=pl.Series([f"srv-{i % 3}" for i in range(len(minutes))])
    )
    rows = rollup_rows(points, window_s=60).sort("window_start", "server_id")
    if order == "random":
        shuffled = rows.sample(fraction=1.0, shuffle=True, seed=5)
    else:
        shuffled = pl.concat(rows.filter(pl.col("window_start").dt.hour() == h) for h in (2, 0, 1))
    plan = _batch_plan(timedelta(hours=3), step_s=60)
    aggs = ("avg", "max", "p95")
    got = merge_buckets(shuffled, plan=plan, group_by=("server_id",), aggs=aggs)
    assert not shuffled.select("window_start", "server_id").equals(
        got.select("window_start", "server_id")
    )
    assert got.equals(merge_buckets(rows, plan=plan, group_by=("server_id",), aggs=aggs))
    assert got.height == 180 * 3
    assert got.select("window_start", "server_id").equals(
        got.select("window_start", "server_id").sort("window_start", "server_id")
    )
