"""Recent samples of one server, and the sliding-window aggregates rules ask for.

Pure: no clock, no I/O. A server's samples are kept packed, one row a sample: its time (8
bytes) and one value (8 bytes) per metric the rules read, in a fixed column order; a sample
without one of the columns has NaN there. Rows are sorted by event time (a late sample is
inserted in place) and kept for as long as the longest window of any rule on the server's
metrics, so a window is a slice of rows found by bisection, and a metric's values in it a
strided slice. One object a server, not one a (server, metric): a checkpoint visits 30,000
of them for a fleet of 30,000 servers, not 180,000.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["ServerSeries", "aggregate", "slope_per_s"]

_NAN = math.nan


class ServerSeries:
    """The samples of one server within ``horizon_ms`` of its newest one, for ``columns``."""

    __slots__ = (
        "_direct",
        "_keys",
        "_layout",
        "_sparse",
        "columns",
        "horizon_ms",
        "index",
        "ts",
        "values",
    )

    def __init__(self, horizon_ms: int, columns: Iterable[str] = ()) -> None:
        self.horizon_ms = horizon_ms
        self.columns: list[str] = list(columns)
        self.index = {name: i for i, name in enumerate(self.columns)}
        self.ts = array("q")
        #: Row-major: row ``r`` is ``values[r * width : (r + 1) * width]``.
        self.values = array("d")
        #: Whether a row lacks a column (NaN); windows then skip the NaNs.
        self._sparse = False
        #: The last metric names seen, if they carried every column; whether they were
        #: exactly the columns, in order (the row is then the sample's values as they are).
        self._keys: tuple[str, ...] | None = None
        self._direct = False
        self._layout: tuple[str, ...] | None = None

    @property
    def layout(self) -> tuple[str, ...]:
        """The columns, as a tuple (the same object until a column is added)."""
        if self._layout is None:
            self._layout = tuple(self.columns)
        return self._layout

    def add(self, ts: int, metrics: Mapping[str, float], wanted: Mapping[str, int]) -> None:
        """Record a sample's values of the metrics in ``wanted`` (metric -> horizon, ms);
        forget rows older than the horizon."""
        keys = tuple(metrics)
        if keys != self._keys:  # agents send the same metrics every time: once per change
            for name in keys:
                if name in wanted and name not in self.index:
                    self._add_column(name, wanted[name])
            complete = all(name in metrics for name in self.columns)
            self._sparse = self._sparse or not complete
            self._keys = keys if complete else None
            self._direct = keys == self.layout
        row: Sequence[float] = (
            list(metrics.values())
            if self._direct
            else [metrics.get(name, _NAN) for name in self.columns]
        )
        times, width = self.ts, len(self.columns)
        if not times or ts >= times[-1]:
            times.append(ts)
            self.values.extend(row)
        else:  # late: keep the order by time
            at = bisect_right(times, ts)
            times.insert(at, ts)
            self.values[at * width : at * width] = array("d", row)
        # A window is (end - length, end]: a row at exactly newest - horizon is never used.
        cut = bisect_right(times, times[-1] - self.horizon_ms)
        if cut:
            del times[:cut]
            del self.values[: cut * width]

    def _add_column(self, name: str, horizon_ms: int) -> None:
        width = len(self.columns)
        if self.ts:  # past rows lack it
            old, rows = self.values, len(self.ts)
            self.values = array("d")
            for r in range(rows):
                self.values.extend(old[r * width : (r + 1) * width])
                self.values.append(_NAN)
            self._sparse = True
        self.index[name] = width
        self.columns.append(name)
        self._keys = self._layout = None
        self.horizon_ms = max(self.horizon_ms, horizon_ms)

    def bounds(self, window_ms: int) -> tuple[int, int]:
        """The rows ``[lo, hi)`` of the window ``(newest - window_ms, newest]``."""
        times = self.ts
        if not times:
            return 0, 0
        return bisect_right(times, times[-1] - window_ms), len(times)

    def column(self, name: str, lo: int, hi: int) -> tuple[Sequence[int], Sequence[float]]:
        """Times and values of ``name`` in rows ``[lo, hi)`` (rows without it left out)."""
        j = self.index.get(name)
        if j is None or lo >= hi:
            return (), ()
        width = len(self.columns)
        values = self.values[lo * width + j : hi * width : width]
        times = self.ts[lo:hi]
        if self._sparse:
            kept = [(t, v) for t, v in zip(times, values, strict=True) if v == v]
            return [t for t, _ in kept], [v for _, v in kept]
        return times, values

    def window(self, name: str, window_ms: int) -> tuple[Sequence[int], Sequence[float]]:
        """Times and values of ``name`` in ``(newest - window_ms, newest]``."""
        return self.column(name, *self.bounds(window_ms))

    @classmethod
    def restored(
        cls,
        horizon_ms: int,
        columns: Sequence[str],
        ts: array[int],
        values: array[float],
    ) -> ServerSeries:
        """A series from checkpointed rows."""
        series = cls(horizon_ms, columns)
        series.ts, series.values = ts, values
        series._sparse = any(v != v for v in values)
        return series


def aggregate(name: str, values: Sequence[float]) -> float | None:
    """``avg, min, max, sum, count, last, p50, p95, p99`` of ``values`` (``None`` if empty;
    quantiles by inclusive rank, as the KLL sketches of ``speed_1m`` report them)."""
    if not values:
        return None if name != "count" else 0.0
    if name == "avg":
        return math.fsum(values) / len(values)
    if name == "sum":
        return math.fsum(values)
    if name == "min":
        return min(values)
    if name == "max":
        return max(values)
    if name == "count":
        return float(len(values))
    if name == "last":
        return values[-1]
    q = {"p50": 0.5, "p95": 0.95, "p99": 0.99}[name]
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


def slope_per_s(times: Sequence[int], values: Sequence[float]) -> float | None:
    """Least-squares slope of ``values`` over ``times`` (epoch ms), per second; ``None``
    with fewer than two distinct times."""
    n = len(times)
    if n < 2:
        return None
    t0 = times[0]
    xs = [(t - t0) / 1000 for t in times]
    mean_x = math.fsum(xs) / n
    mean_y = math.fsum(values) / n
    sxx = math.fsum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        return None
    sxy = math.fsum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values, strict=True))
    return sxy / sxx
