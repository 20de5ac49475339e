"""Evaluation plans: what a sample's rules need from its server's series, computed once.

A server sends the same metrics every time and its labels rarely change, so which rules a
sample touches, which (metric, window) slices they read and which aggregates of each slice
they compare are worked out once per (metric names, matching rules) and shared by every
server with the same ones (:func:`compile_plan`). Evaluating a sample is then one bisection
per window length, one slice per (metric, window) and one aggregate per (slice, aggregation),
however many rules share them, and a flat loop of comparisons (:func:`measure` and the
engine's ``observe``).

Pure: no clock, no state.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fleetlens.alerts.rules import (
    AnomalyRule,
    CompositeRule,
    RateOfChangeRule,
    Rule,
    ThresholdRule,
)
from fleetlens.alerts.series import aggregate, slope_per_s

__all__ = [
    "ANOMALY",
    "COMPARE",
    "COMPOSITE",
    "SLOT",
    "TIME_TO_LIMIT",
    "Plan",
    "compile_plan",
    "measure",
]

COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}

#: Check kinds. A check is ``(rule, kind, operand, compare, threshold)``; the operand is a
#: slot (SLOT, ANOMALY), the (slope, last) slots and
#: the limit (TIME_TO_LIMIT) or the conditions'
#: ``(slot, compare, threshold)`` (COMPOSITE, whose ``compare`` is ``all`` or ``any``).
#: SLOT compares one slot: a threshold rule's aggregate, a rate rule's change or slope.
SLOT, COMPOSITE, TIME_TO_LIMIT, ANOMALY = range(4)

Check = tuple[Rule, int, Any, Any, float]


@dataclass(frozen=True, slots=True)
class Plan:
    """The evaluation of one kind of sample.

    ``slices`` are ``(window_ms, ((metric, ((measure, slot), ...)), ...))``: for each window
    length, the measures of each metric in it (an aggregation, or ``change`` / ``slope`` for
    rate-of-change rules) go into a list of ``size`` slots that ``checks`` read.
    """

    names: tuple[str, ...]
    slices: tuple[tuple[int, tuple[tuple[str, tuple[tuple[str, int], ...]], ...]], ...]
    checks: tuple[Check, ...]
    size: int


def compile_plan(names: tuple[str, ...], rules: Sequence[Rule]) -> Plan:
    """The plan of a sample carrying ``names`` for a server the ``rules`` apply to (the rules
    on none of ``names`` are left out; absence rules run on the clock, not here)."""
    slots: dict[tuple[str, int, str], int] = {}

    def slot(metric: str, window_s: float, what: str) -> int:
        return slots.setdefault((metric, int(window_s * 1000), what), len(slots))

    carried = set(names)
    checks: list[Check] = []
    for rule in rules:
        if not carried.intersection(rule.metrics):
            continue
        if isinstance(rule, ThresholdRule):
            at = slot(rule.metric, rule.window_s, rule.aggregation)
            checks.append((rule, SLOT, at, COMPARE[rule.op], rule.value))
        elif isinstance(rule, CompositeRule):
            conditions = tuple(
                (slot(c.metric, c.window_s, c.aggregation), COMPARE[c.op], c.value)
                for c in rule.conditions
            )
            combine = all if rule.operator == "and" else any
            checks.append((rule, COMPOSITE, conditions, combine, 0.0))
        elif isinstance(rule, RateOfChangeRule):
            compare = COMPARE[rule.op]
            if rule.mode == "change":
                checks.append(
                    (rule, SLOT, slot(rule.metric, rule.window_s, "change"), compare, rule.value)
                )
            elif rule.mode == "rate":
                checks.append(
                    (rule, SLOT, slot(rule.metric, rule.window_s, "slope"), compare, rule.value)
                )
            else:
                operand = (
                    slot(rule.metric, rule.window_s, "slope"),
                    slot(rule.metric, rule.window_s, "last"),
                    rule.limit,
                )
                checks.append((rule, TIME_TO_LIMIT, operand, compare, rule.value))
        elif isinstance(rule, AnomalyRule):
            at = slot(rule.metric, rule.window_s, rule.aggregation)
            checks.append((rule, ANOMALY, at, None, rule.k))
    windows: dict[int, dict[str, list[tuple[str, int]]]] = {}
    for (metric, window_ms, what), at in slots.items():
        windows.setdefault(window_ms, {}).setdefault(metric, []).append((what, at))
    slices = tuple(
        (window_ms, tuple((m, tuple(measures)) for m, measures in by_metric.items()))
        for window_ms, by_metric in windows.items()
    )
    return Plan(names=names, slices=slices, checks=tuple(checks), size=len(slots))


def measure(what: str, times: Sequence[int], values: Sequence[float]) -> float | None:
    """An aggregation of a window's ``values``, or its ``change`` (newest minus oldest) or
    least-squares ``slope`` per second (``None`` with fewer than two samples)."""
    if what == "change":
        return values[-1] - values[0] if len(values) >= 2 else None
    if what == "slope":
        return slope_per_s(times, values)
    return aggregate(what, values)
