"""The window aggregate: count, sum, min, max, last (with its time) and a KLL quantile sketch.

Pure: no I/O. The sketch is Apache DataSketches' KLL doubles sketch, whose bytes Spark's
``kll_sketch_agg_double``/``kll_merge_agg_double`` produce and merge too, so speed-layer and
batch-layer quantiles merge.

A KLL sketch of ``k`` keeps its first ``k`` values as they are (it compacts only when the
``k + 1``-th arrives), so while a window has at most ``k`` values (a 1-minute window of 10 s
samples has 6) the aggregate keeps the values in arrival order instead of a sketch object
(~1.8 KB each, and ~6 µs to create): the sketch built from them when it is needed is the one
the same updates would have built. Past ``k`` values the aggregate switches to a real sketch.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasketches import kll_doubles_sketch

__all__ = ["QUANTILES", "WindowAggregate"]

#: The quantiles written next to the sketch.
QUANTILES = (0.5, 0.95, 0.99)
_QUANTILES = list(QUANTILES)
#: Inclusive ranks, as Spark's ``kll_sketch_get_quantile_double`` computes them, so that the
#: speed and batch layers report the same p50/p95/p99 for the same values.
_INCLUSIVE = True

#: What a checkpoint holds for the sketch: the values (at most ``k``) or the sketch's bytes.
SketchState = list[float] | bytes


@dataclass(slots=True)
class WindowAggregate:
    """Running aggregate of one metric of one server in one window.

    ``values`` holds the values in arrival order while there are at most ``k`` of them;
    afterwards it is ``None`` and ``real_sketch`` holds them.
    """

    count: int
    sum: float
    min: float
    max: float
    last: float
    last_ts: int
    k: int
    values: list[float] | None
    real_sketch: kll_doubles_sketch | None = None

    @classmethod
    def initialize(cls, value: float, ts: int, *, k: int) -> WindowAggregate:
        """The aggregate of a single value observed at ``ts`` (epoch ms)."""
        return cls(1, value, value, value, value, ts, k, [value])

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
        values = self.values
        if values is None:
            assert self.real_sketch is not None
            self.real_sketch.update(value)
        elif len(values) < self.k:
            values.append(value)
        else:
            self.real_sketch = self.sketch
            self.real_sketch.update(value)
            self.values = None

    @property
    def sketch(self) -> kll_doubles_sketch:
        """The KLL sketch of the values (built from them while there are at most ``k``)."""
        if self.values is None:
            assert self.real_sketch is not None
            return self.real_sketch
        sketch = kll_doubles_sketch(self.k)
        update = sketch.update
        for value in self.values:
            update(value)
        return sketch

    def quantiles(self) -> list[float]:
        """p50, p95 and p99 from the sketch."""
        return list(self.sketch.get_quantiles(_QUANTILES, _INCLUSIVE))

    def finish(self) -> tuple[bytes, list[float]]:
        """The serialized sketch and p50, p95, p99 (the sketch is built once)."""
        sketch = self.sketch
        return sketch.serialize(), list(sketch.get_quantiles(_QUANTILES, _INCLUSIVE))

    def to_state(self) -> tuple[int, float, float, float, float, int, SketchState]:
        """A plain tuple for checkpoints: the values while at most ``k``, else the sketch."""
        values = self.values
        return (
            self.count,
            self.sum,
            self.min,
            self.max,
            self.last,
            self.last_ts,
            list(values) if values is not None else self.sketch.serialize(),
        )

    @classmethod
    def from_state(
        cls, state: tuple[int, float, float, float, float, int, SketchState], *, k: int = 200
    ) -> WindowAggregate:
        """Inverse of :meth:`to_state` (also reads checkpoints holding the sketch's bytes)."""
        count, total, low, high, last, last_ts, sketch = state
        if isinstance(sketch, bytes):
            restored = kll_doubles_sketch.deserialize(sketch)
            return cls(count, total, low, high, last, last_ts, restored.k, None, restored)
        return cls(count, total, low, high, last, last_ts, k, [float(v) for v in sketch])
