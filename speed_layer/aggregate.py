"""Closed windows to rows: count, sum, min, max, last (with its time) and a KLL sketch per
(server, metric, window), computed column-wise with numpy.

Pure: no I/O. The sketch is Apache DataSketches' KLL doubles sketch, whose bytes Spark's
``kll_sketch_agg_double``/``kll_merge_agg_double`` produce and merge too, so speed-layer and
batch-layer quantiles merge. Each sketch is fed its values in arrival order, as a sketch
updated sample by sample would be, so its bytes do not depend on how the samples were
batched.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from datasketches import kll_doubles_sketch

from fleetlens.lake.schemas import SPEED_1M_SCHEMA, TAG_COLUMNS
from speed_layer.windows import OpenWindow

__all__ = ["QUANTILES", "aggregate_windows"]

#: The quantiles written next to the sketch.
QUANTILES = (0.5, 0.95, 0.99)
_QUANTILES = list(QUANTILES)
#: Inclusive ranks, as Spark's ``kll_sketch_get_quantile_double`` computes them, so that the
#: speed and batch layers report the same p50/p95/p99 for the same values.
_INCLUSIVE = True
_US = pa.timestamp("us", tz="UTC")


def aggregate_windows(
    windows: Sequence[OpenWindow], *, sketch_k: int, emitted_at_ms: int
) -> pa.Table:
    """The ``speed_1m`` rows of closed windows: one per (server, metric, window).

    ``sum`` adds the values in arrival order; ``last`` is the value with the latest event
    time (ties: the latest to arrive).
    """
    tables = [_aggregate(w, sketch_k) for w in windows if len(w)]
    if not tables:
        return SPEED_1M_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    emitted = np.full(table.num_rows, emitted_at_ms * 1000, np.int64)
    return table.append_column(SPEED_1M_SCHEMA.field("emitted_at"), pa.array(emitted).cast(_US))


def _aggregate(window: OpenWindow, k: int) -> pa.Table:
    keyset_of = np.frombuffer(window.keyset_of, np.int32)
    names = list(dict.fromkeys(name for keyset in window.keysets for name in keyset))
    code = {name: i for i, name in enumerate(names)}
    widest = max(map(len, window.keysets))
    # Row r: the metric codes of keyset r, padded; an event's codes are its keyset's row.
    table = np.full((len(window.keysets), widest), -1, np.int64)
    for row, keyset in enumerate(window.keysets):
        table[row, : len(keyset)] = [code[name] for name in keyset]
    sizes = np.fromiter(map(len, window.keysets), np.int64, len(window.keysets))[keyset_of]
    codes = table[keyset_of]
    metric_code = codes[codes >= 0]  # row by row: each event's metrics in arrival order
    server_code = np.repeat(np.frombuffer(window.server_of, np.int32).astype(np.int64), sizes)
    key = server_code * len(names) + metric_code
    ts = np.repeat(np.frombuffer(window.ts, np.int64), sizes)
    values = np.frombuffer(window.values, np.float64)
    total = len(values)

    # Stable: within a key the values keep their arrival order.
    order = np.argsort(key, kind="stable")
    grouped = key[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    ends = np.r_[starts[1:], total]
    ordered = values[order]
    # Sorted by key, then time, then arrival: the last of each key is its latest sample.
    latest = np.lexsort((ts, key))[ends - 1]

    counts = ends - starts
    sketches: list[bytes] = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        sketch = kll_doubles_sketch(k)
        sketch.update(ordered[a:b])
        sketches.append(sketch.serialize())
    p = _exact_quantiles(ordered, starts, counts, k)
    for row in np.flatnonzero(counts > k).tolist():
        # More samples than the sketch keeps exactly: its estimate, as Spark would read it.
        sketch = kll_doubles_sketch.deserialize(sketches[row])
        p[row] = sketch.get_quantiles(_QUANTILES, _INCLUSIVE)

    group_server = pa.array(grouped[starts] // len(names))
    group_metric = pa.array(grouped[starts] % len(names))
    columns = {
        "window_start": pa.array(np.full(len(starts), window.start * 1000, np.int64)).cast(_US),
        "server_id": pa.array(window.servers, pa.string()).take(group_server),
        "metric": pa.array(names, pa.string()).take(group_metric),
        **{
            tag: pa.array([t.get(tag) for t in window.tags], pa.string()).take(group_server)
            for tag in TAG_COLUMNS
        },
        "count": pa.array(counts),
        "sum": pa.array(np.add.reduceat(ordered, starts)),
        "min": pa.array(np.minimum.reduceat(ordered, starts)),
        "max": pa.array(np.maximum.reduceat(ordered, starts)),
        "last": pa.array(values[latest]),
        "last_ts": pa.array(ts[latest] * 1000).cast(_US),
        "sketch": pa.array(sketches, pa.binary()),
        "p50": pa.array(p[:, 0]),
        "p95": pa.array(p[:, 1]),
        "p99": pa.array(p[:, 2]),
    }
    return pa.table(columns, schema=SPEED_1M_SCHEMA.remove(len(SPEED_1M_SCHEMA) - 1))


def _exact_quantiles(
    grouped: np.ndarray, starts: np.ndarray, counts: np.ndarray, k: int
) -> np.ndarray:
    """p50/p95/p99 of each group of ``grouped`` (values by group, ``starts``/``counts``), by
    inclusive rank: the first value whose rank reaches ``q`` (``ceil(q * n)``-th smallest).
    Groups of more than ``k`` values are left NaN (their sketch estimates instead).

    What a KLL sketch answers while it holds all its samples (at most ``k``), computed for
    all groups at once instead of one ``get_quantiles`` call each: the groups of each size
    are sorted together as the rows of one matrix (a window holds few sizes; a lexsort of
    all values by group and value took 3x as long).
    """
    out = np.full((len(starts), len(QUANTILES)), np.nan)
    for size in np.unique(counts[counts <= k]).tolist():
        rows = np.flatnonzero(counts == size)
        block = np.sort(grouped[starts[rows, None] + np.arange(size)], axis=1)
        for column, q in enumerate(QUANTILES):
            rank = max(int(np.ceil(q * size)), 1)
            out[rows, column] = block[:, rank - 1]
    return out
