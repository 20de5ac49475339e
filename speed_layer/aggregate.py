"""The window aggregate: count, sum, min, max, last (with its time) and a KLL quantile sketch.

Pure: no I/O. The sketch is Apache DataSketches' KLL doubles sketch, whose bytes Spark's
``kll_sketch_agg_double``/``kll_merge_agg_double`` produce and merge too, so speed-layer and
batch-layer quantiles merge.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasketches import kll_doubles_sketch

__all__ = ["QUANTILES", "WindowAggregate"]

#: The quantiles written next to the sketch.
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(slots=True)
class WindowAggregate:
    """Running aggregate of one metric of one server in one window."""

    count: int
    sum: float
    min: float
    max: float
    last: float
    last_ts: int
    sketch: kll_doubles_sketch

    @classmethod
    def initialize(cls, value: float, ts: int, *, k: int) -> WindowAggregate:
        """The aggregate of a single value observed at ``ts`` (epoch ms)."""
        sketch = kll_doubles_sketch(k)
        sketch.update(value)
        return cls(1, value, value, value, value, ts, sketch)

    def add(self, value: float, ts: int) -> None:
        """Fold one more value in; ``last`` follows the latest event time (ties: latest arrival)."""
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if ts >= self.last_ts:
            self.last, self.last_ts = value, ts
        self.sketch.update(value)

    def quantiles(self) -> list[float]:
        """p50, p95 and p99 from the sketch."""
        return list(self.sketch.get_quantiles(list(QUANTILES)))

    def to_state(self) -> tuple[int, float, float, float, float, int, bytes]:
        """A plain tuple for checkpoints."""
        return (
            self.count,
            self.sum,
            self.min,
            self.max,
            self.last,
            self.last_ts,
            self.sketch.serialize(),
        )

    @classmethod
    def from_state(
        cls, state: tuple[int, float, float, float, float, int, bytes]
    ) -> WindowAggregate:
        """Inverse of :meth:`to_state`."""
        count, total, low, high, last, last_ts, sketch = state
        return cls(count, total, low, high, last, last_ts, kll_doubles_sketch.deserialize(sketch))
