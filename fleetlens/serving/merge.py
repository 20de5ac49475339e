"""Re-aggregating windows to a query's step: mergeable partials in, one row per bucket and
group out.

Pure: polars frames in and out, no I/O. ``count``, ``sum``, ``min``, ``max`` and ``last``
merge exactly; quantiles come from the merged KLL sketches (Apache DataSketches), never from
averaging percentiles. A bucket made of a single window reuses the window's stored
p50/p95/p99, which were read from the same sketch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
from datasketches import kll_doubles_sketch

from fleetlens.lake.schemas import TAG_COLUMNS
from fleetlens.serving.tiers import QueryPlan, Segment

__all__ = [
    "AGGREGATES",
    "PARTIAL_COLUMNS",
    "AggregateError",
    "is_projection",
    "last_window",
    "merge_buckets",
    "parse_aggregates",
    "partial_columns",
    "points_to_buckets",
    "quantile_of",
    "segment_rows",
    "select_segments",
    "sort_partials",
]

#: The aggregates a query may ask for, besides quantiles ``pNN`` (``p50``, ``p99.9``...).
AGGREGATES = ("avg", "min", "max", "sum", "count", "last")
#: The columns of a window aggregate that :func:`merge_buckets` reads.
PARTIAL_COLUMNS = (
    "window_start",
    "server_id",
    *TAG_COLUMNS,
    "count",
    "sum",
    "min",
    "max",
    "last",
    "last_ts",
    "sketch",
    "p50",
    "p95",
    "p99",
)
#: Quantiles stored beside every window's sketch.
_STORED = {0.5: "p50", 0.95: "p95", 0.99: "p99"}
_QUANTILE = re.compile(r"^p(\d{1,2}(\.\d+)?)$")
#: Inclusive ranks, as the rollups' stored quantiles were computed (Spark and speed layer).
_INCLUSIVE = True
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class AggregateError(ValueError):
    """An aggregate name is not one of :data:`AGGREGATES` or ``pNN``."""


def quantile_of(name: str) -> float | None:
    """The quantile (0..1) an aggregate name asks for (``p95`` -> 0.95), or None."""
    match = _QUANTILE.match(name)
    if match is None:
        return None
    q = float(match.group(1)) / 100
    return q if 0 < q < 1 else None


def parse_aggregates(names: Sequence[str]) -> tuple[str, ...]:
    """Check aggregate names, keeping their order and dropping repeats.

    Raises:
        AggregateError: A name is unknown.
    """
    if not names:
        raise AggregateError("ask for at least one aggregate")
    for name in names:
        if name not in AGGREGATES and quantile_of(name) is None:
            raise AggregateError(
                f"unknown aggregate {name!r}: use {', '.join(AGGREGATES)} or a quantile "
                "pNN (p50, p95, p99.9...)"
            )
    return tuple(dict.fromkeys(names))


def _bucket(column: str, plan: QueryPlan) -> pl.Expr:
    """The start of the bucket of ``column``: buckets are aligned to the epoch, as the
    plan's range is."""
    step_us = plan.step_s * 1_000_000
    micros = pl.col(column).dt.epoch("us")
    return ((micros // step_us) * step_us).cast(pl.Datetime("us", "UTC")).alias("window_start")


def segment_rows(segment: Segment, column: str = "window_start") -> list[pl.Expr]:
    """The filter of the rows a segment takes from its table."""
    return [pl.col(column) >= _instant(segment.start), pl.col(column) < _instant(segment.end)]


def _instant(moment: datetime) -> pl.Expr:
    # A literal from epoch microseconds: polars converts an aware datetime through its time
    # zone (0.3 ms each, several per query).
    micros = (moment - _EPOCH) // timedelta(microseconds=1)
    return pl.lit(micros, pl.Int64).cast(pl.Datetime("us", "UTC"))


def select_segments(plan: QueryPlan, frames: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    """The rows each of the plan's segments takes from its table's frame, concatenated:
    the partials :func:`merge_buckets` merges."""
    parts = [frames[s.table].filter(*segment_rows(s)) for s in plan.segments if s.table in frames]
    return pl.concat(parts) if parts else pl.DataFrame()


def merge_buckets(
    partials: pl.DataFrame,
    *,
    plan: QueryPlan,
    group_by: Sequence[str],
    aggs: Sequence[str],
    presorted: bool = False,
) -> pl.DataFrame:
    """One row per bucket of ``plan.step_s`` and group, from window aggregates.

    Args:
        partials: Rows with :func:`partial_columns`, from windows that do not overlap (the
            plan's segments) and are no wider than the step.
        plan: The query plan (its step; its range, which the rows must already be within).
        group_by: Key columns of a series (``server_id``, or tags); empty: one series.
        aggs: Aggregates, checked by :func:`parse_aggregates`.
        presorted: The rows are sorted by time, then ``group_by`` (:func:`sort_partials`),
            so a projection need not sort them again.

    Returns:
        ``window_start``, the group keys, then one column per aggregate, sorted by time,
        then keys.
    """
    quantiles = {name: q for name in aggs if (q := quantile_of(name)) is not None}
    keys = ["window_start", *group_by]
    if is_projection(plan, group_by, aggs):
        # Every bucket is one window and every quantile is stored beside it: the answer is
        # a projection, sorted once it is narrow (the sort is most of its time).
        projected = partials.select(*keys, *_projected(aggs))
        return projected if presorted else sort_partials(projected, keys)
    if _one_window_per_bucket(plan, group_by):
        # Each window is a bucket of its own: a row per server, metric and window already.
        grouped = partials.with_columns(_windows=pl.lit(1, pl.UInt32))
    else:
        stored = {_STORED[q] for q in quantiles.values() if q in _STORED}
        grouped = partials.group_by(_bucket("window_start", plan), *group_by).agg(
            pl.col("count").sum(),
            pl.col("sum").sum(),
            pl.col("min").min(),
            pl.col("max").max(),
            pl.col("last").sort_by("last_ts").last(),
            pl.len().alias("_windows"),
            *(pl.col(c).first() for c in sorted(stored)),
            *([pl.col("sketch")] if quantiles else []),
        )
    out = grouped.with_columns(avg=pl.col("sum") / pl.col("count"))
    if quantiles:
        out = out.with_columns(_quantiles(out, quantiles))
    return out.select(*keys, *(pl.col(a) for a in aggs)).sort(keys)


def sort_partials(frame: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """``frame`` sorted by ``keys`` (time first), for rows that come as the table's files hold
    them: each file sorted, the files in no particular order (a Delta log lists them as they
    were added). A stable sort by time alone puts such runs in order cheaply; the full sort
    follows only if that left a key out of order (144,000 rows in hour files: 5 ms instead of
    14; input in random order costs what one full sort does)."""
    by_time = frame.sort(keys[0], maintain_order=True)
    return by_time if _in_order(by_time, keys) else by_time.sort(list(keys))


def _in_order(by_time: pl.DataFrame, keys: Sequence[str]) -> bool:
    """Whether ``by_time``, sorted by ``keys[0]``, is sorted by ``keys`` too. Checked for one
    more key without nulls (the server); with more keys, or nulls, the answer is False."""
    if len(keys) == 1:
        return True
    if len(keys) > 2 or by_time.get_column(keys[1]).null_count():
        return False
    first, second = pl.col(keys[0]), pl.col(keys[1])
    ordered = (first != first.shift()) | (second >= second.shift())
    return bool(by_time.select(ordered.fill_null(True).all()).item())


#: A one-window bucket's aggregates, from the window's own columns.
_SINGLE = {
    **{a: pl.col(a) for a in AGGREGATES if a != "avg"},
    "avg": pl.col("sum") / pl.col("count"),
}


def _one_window_per_bucket(plan: QueryPlan, group_by: Sequence[str]) -> bool:
    return "server_id" in group_by and all(s.resolution_s == plan.step_s for s in plan.segments)


def _projected(aggs: Sequence[str]) -> list[pl.Expr]:
    """Each aggregate of one-window buckets whose quantiles are all stored, as a column."""
    return [
        (_SINGLE[a] if a in _SINGLE else pl.col(_STORED[quantile_of(a)])).alias(a)  # type: ignore[index]
        for a in aggs
    ]


def is_projection(plan: QueryPlan, group_by: Sequence[str], aggs: Sequence[str]) -> bool:
    """Whether every bucket is one window whose stored columns answer every aggregate (no
    merging: :func:`merge_buckets` only selects and orders the rows)."""
    stored = all(q in _STORED for a in aggs if (q := quantile_of(a)) is not None)
    return stored and _one_window_per_bucket(plan, group_by)


def partial_columns(
    plan: QueryPlan, group_by: Sequence[str], aggs: Sequence[str]
) -> tuple[str, ...]:
    """The columns of :data:`PARTIAL_COLUMNS` that :func:`merge_buckets` reads for this
    query: a scan need not read the others (the ``sketch`` column, the widest, only when a
    bucket merges several windows or asks for a quantile that is not stored)."""
    keys = ("window_start", *group_by)
    if is_projection(plan, group_by, aggs):
        reads = (c for expr in _projected(aggs) for c in expr.meta.root_names())
        return tuple(dict.fromkeys((*keys, *reads)))
    columns = (*keys, "count", "sum", "min", "max", "last", "last_ts")
    if any(quantile_of(a) is not None for a in aggs):
        columns += ("p50", "p95", "p99", "sketch")
    return columns


def _quantiles(frame: pl.DataFrame, quantiles: Mapping[str, float]) -> list[pl.Series]:
    """Each bucket's quantiles: a single window's stored value where there is one, else the
    estimate of the bucket's sketches (a binary, or a list of them) merged."""
    qs = list(quantiles.values())
    single = (frame["_windows"] == 1).to_numpy()
    every_stored = all(q in _STORED for q in qs)
    # Only the buckets that need a sketch read go through Python.
    todo = np.flatnonzero(~single) if every_stored else np.arange(frame.height)
    estimates = np.full((frame.height, len(qs)), np.nan)
    sketches = frame["sketch"].gather(todo).to_list() if len(todo) else []
    for row, parts in zip(todo.tolist(), sketches, strict=True):
        parts = parts if isinstance(parts, list) else [parts]
        sketch = kll_doubles_sketch.deserialize(parts[0])
        for part in parts[1:]:
            sketch.merge(kll_doubles_sketch.deserialize(part))
        estimates[row] = sketch.get_quantiles(qs, _INCLUSIVE)
    columns = []
    for i, (name, q) in enumerate(quantiles.items()):
        values = estimates[:, i]
        if q in _STORED:
            values = np.where(single, frame[_STORED[q]].to_numpy(), values)
        columns.append(pl.Series(name, values, pl.Float64))
    return columns


def points_to_buckets(
    points: pl.DataFrame,
    *,
    plan: QueryPlan,
    group_by: Sequence[str],
    aggs: Sequence[str],
) -> pl.DataFrame:
    """Like :func:`merge_buckets`, from ``raw_points`` rows (``ts``, ``value``, keys):
    quantiles are exact, by inclusive rank (the ``ceil(q * n)``-th smallest value)."""
    quantiles = {name: q for name in aggs if (q := quantile_of(name)) is not None}
    keys = ["window_start", *group_by]
    value = pl.col("value")
    out = points.group_by(_bucket("ts", plan), *group_by).agg(
        count=pl.len().cast(pl.Int64),
        sum=value.sum(),
        min=value.min(),
        max=value.max(),
        last=value.sort_by("ts").last(),
        avg=value.mean(),
        **{
            name: value.sort().get((pl.len() * q).ceil().cast(pl.Int64).clip(1) - 1)
            for name, q in quantiles.items()
        },
    )
    return out.select(*keys, *(pl.col(a) for a in aggs)).sort(keys)


def last_window(partials: pl.DataFrame) -> datetime | None:
    """The latest ``window_start`` among ``partials``, or None if there are none."""
    if partials.is_empty():
        return None
    value = partials["window_start"].max()
    assert value is None or isinstance(value, datetime)
    return value
