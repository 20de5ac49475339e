"""Rows of ``speed_1m`` (SPEED_1M_SCHEMA) for tests of the tables that hold closed windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
from datasketches import kll_doubles_sketch

from fleetlens.lake.schemas import SPEED_1M_SCHEMA, WINDOW_KEY

T0 = datetime(2026, 1, 1, tzinfo=UTC)
METRICS = ("cpu", "mem", "disk", "net_in", "net_out", "load")


def _sketches(count: int = 4) -> list[bytes]:
    out = []
    for i in range(count):
        sketch = kll_doubles_sketch(200)
        for v in range(5):
            sketch.update(float(i * 10 + v))
        out.append(sketch.serialize())
    return out


SKETCHES = _sketches()


def speed_rows(
    n: int, *, first: int = 0, servers: int = 10, value: float = 0.0, start: datetime = T0
) -> pa.Table:
    """``n`` SPEED_1M_SCHEMA rows with distinct keys: row ``i`` (from ``first``) is metric
    ``i % 6`` of server ``i // 6 % servers`` in minute ``i // (6 * servers)`` after
    ``start``; its values derive from ``i + value``."""
    idx = range(first, first + n)
    per_minute = len(METRICS) * servers
    windows = [start + timedelta(minutes=i // per_minute) for i in idx]
    vals = [float(i) + value for i in idx]
    return pa.table(
        {
            "window_start": windows,
            "server_id": [f"srv-{i // len(METRICS) % servers:04d}" for i in idx],
            "metric": [METRICS[i % len(METRICS)] for i in idx],
            "tenant": ["acme"] * n,
            "region": ["eu-west"] * n,
            "env": ["prod"] * n,
            "service": ["api"] * n,
            "cluster": [None if i % 7 == 0 else "c1" for i in idx],
            "count": [5] * n,
            "sum": [v * 5 for v in vals],
            "min": [v - 1 for v in vals],
            "max": [v + 1 for v in vals],
            "last": vals,
            "last_ts": [w + timedelta(seconds=50) for w in windows],
            "sketch": [SKETCHES[i % len(SKETCHES)] for i in idx],
            "p50": vals,
            "p95": [v + 0.5 for v in vals],
            "p99": [None if i % 5 == 0 else v + 0.9 for i, v in zip(idx, vals, strict=True)],
            "emitted_at": [w + timedelta(seconds=90) for w in windows],
        },
        schema=SPEED_1M_SCHEMA,
    )


def ordered(table: pa.Table) -> pa.Table:
    """``table`` in key order, with the speed schema's column order."""
    return table.select(SPEED_1M_SCHEMA.names).sort_by([(c, "ascending") for c in WINDOW_KEY])
