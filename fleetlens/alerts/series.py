"""Recent samples of one (server, metric), and the sliding-window aggregates rules ask for.

Pure: no clock, no I/O. Samples are kept packed (8 bytes a time, 8 a value) for as long as
the longest window of any rule on the metric, and sorted by event time (a late sample is
inserted in place), so a window is a slice found by bisection.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from collections.abc import Sequence

__all__ = ["Series", "aggregate", "slope_per_s"]


class Series:
    """The samples of one series within ``horizon_ms`` of its newest one."""

    __slots__ = ("horizon_ms", "ts", "values")

    def __init__(self, horizon_ms: int) -> None:
        self.horizon_ms = horizon_ms
        self.ts = array("q")
        self.values = array("d")

    def add(self, ts: int, value: float) -> None:
        """Record a sample; forget those older than the horizon."""
        times = self.ts
        if not times or ts >= times[-1]:
            times.append(ts)
            self.values.append(value)
        else:  # late: keep the order by time
            at = bisect_right(times, ts)
            times.insert(at, ts)
            self.values.insert(at, value)
        # A window is (end - length, end]: a sample at exactly newest - horizon is never used.
        cut = bisect_right(times, times[-1] - self.horizon_ms)
        if cut:
            del times[:cut]
            del self.values[:cut]

    @property
    def newest_ts(self) -> int | None:
        """Event time of the newest sample."""
        return self.ts[-1] if self.ts else None

    def window(self, window_ms: int, *, end: int | None = None) -> tuple[array[int], array[float]]:
        """Times and values of the samples in ``(end - window_ms, end]`` (default end: the
        newest sample)."""
        times = self.ts
        if not times:
            return array("q"), array("d")
        end = times[-1] if end is None else end
        lo = bisect_right(times, end - window_ms)
        hi = bisect_right(times, end)
        return times[lo:hi], self.values[lo:hi]


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
