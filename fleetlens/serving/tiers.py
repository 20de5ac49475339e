"""Which tables answer a query: the tiers, the step, and the plan that splits a range at the
batch watermarks.

Pure: no I/O. The same plan drives the Python query engine and the Trino views, so the two
cannot disagree on where batch data ends and speed data begins.

A query over ``[start, end)`` at a step is served by the coarsest *tier* whose resolution
divides the step, unless the range reaches further back than that tier's retention (then
the next coarser one, with a note). Inside the range, windows before the tier's batch
watermark come from its batch table; each finer tier fills from the previous watermark to
its own; the speed layer's ``speed_1m`` fills the rest, up to now::

    rollup_1d  |  rollup_1h  |  rollup_1m  |  speed_1m
            wm_1d         wm_1h         wm_1m          now

Every watermark is aligned to its tier's resolution (the batch jobs move them by whole
hours, ``rollup_1d`` by whole days), so no source window straddles a boundary: none is
counted twice and none is missing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fleetlens.config import RetentionSettings
from fleetlens.lake.schemas import (
    RAW_POINTS,
    ROLLUP_1D,
    ROLLUP_1H,
    ROLLUP_1M,
    SPEED_1M,
    TAG_COLUMNS,
)

__all__ = [
    "GROUP_KEYS",
    "NICE_STEPS",
    "QueryPlan",
    "Segment",
    "StepError",
    "Tier",
    "ceil_to",
    "day_floor",
    "format_step",
    "parse_step",
    "plan_query",
    "tiers",
]

#: The columns a query may group by (``server_id`` is the default: one series per server).
GROUP_KEYS = ("server_id", *TAG_COLUMNS)

#: The steps ``step="auto"`` picks from, in seconds.
NICE_STEPS = (
    60,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    604800,
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_STEP = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")


class StepError(ValueError):
    """The step cannot serve the query; ``suggestion`` is one that would (seconds), if any."""

    def __init__(self, message: str, *, suggestion: int | None = None) -> None:
        super().__init__(message)
        self.suggestion = suggestion


@dataclass(frozen=True)
class Tier:
    """A batch table that serves steps that are multiples of its ``resolution_s``.

    Attributes:
        table: The batch table.
        resolution_s: The width of its windows (raw points: their sampling interval).
        retention_days: How far back it keeps data; None: kept.
    """

    table: str
    resolution_s: int
    retention_days: int | None

    @property
    def is_raw(self) -> bool:
        """Whether the tier holds points rather than window aggregates."""
        return self.table == RAW_POINTS


def tiers(retention: RetentionSettings, *, raw_resolution_s: int = 1) -> tuple[Tier, ...]:
    """The tiers, finest first, with their retention from the settings."""
    return (
        Tier(RAW_POINTS, raw_resolution_s, retention.raw_points_days),
        Tier(ROLLUP_1M, 60, retention.rollup_1m_days),
        Tier(ROLLUP_1H, 3600, retention.rollup_1h_days),
        Tier(ROLLUP_1D, 86400, retention.rollup_1d_days),
    )


def parse_step(text: str | int) -> int | None:
    """Seconds of a step given as ``"auto"`` (None), a number of seconds, or ``10s``,
    ``5m``, ``1h``, ``1d``, ``1w``.

    Raises:
        StepError: Not a step.
    """
    if isinstance(text, int):
        seconds = text
    elif text.strip().lower() == "auto":
        return None
    elif match := _STEP.match(text.lower()):
        seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise StepError(f"step {text!r} is not 'auto', seconds, or a number with s/m/h/d/w")
    if seconds <= 0:
        raise StepError("step must be positive")
    return seconds


def format_step(seconds: int) -> str:
    """The shortest spelling of a step, as :func:`parse_step` reads it."""
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Segment:
    """Windows of ``table`` whose start is in ``[start, end)``."""

    table: str
    start: datetime
    end: datetime
    resolution_s: int


@dataclass(frozen=True)
class QueryPlan:
    """How a query is answered.

    Attributes:
        start: The first bucket's start (the asked start, aligned down to the step).
        end: The end of the last bucket (the asked end, aligned up to the step).
        step_s: The bucket width.
        tier: The tier that serves the step.
        segments: Disjoint, ordered, covering ``[start, end)``.
        notes: Why the plan differs from what was asked (tier fallbacks, raised steps).
    """

    start: datetime
    end: datetime
    step_s: int
    tier: Tier
    segments: tuple[Segment, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def cacheable(self) -> bool:
        """Whether every window comes from batch tables (before their watermarks): the
        answer changes only if the batch layer recomputes a partition."""
        return all(s.table != SPEED_1M for s in self.segments)


def _floor(moment: datetime, step_s: int) -> datetime:
    seconds = math.floor(moment.timestamp() / step_s) * step_s
    return datetime.fromtimestamp(seconds, UTC)


def day_floor(moment: datetime) -> datetime:
    """Midnight UTC of ``moment``'s day (the start of its ``rollup_1d`` window)."""
    return _floor(moment, 86_400)


def ceil_to(moment: datetime, step_s: int) -> datetime:
    """``moment`` rounded up to a multiple of ``step_s`` seconds since the epoch."""
    seconds = math.ceil(moment.timestamp() / step_s) * step_s
    return datetime.fromtimestamp(seconds, UTC)


def _serving_tier(step_s: int, chain: Sequence[Tier]) -> Tier:
    """The coarsest tier whose resolution divides the step."""
    return [t for t in chain if step_s % t.resolution_s == 0][-1]


def _auto_step(span_s: float, target_points: int) -> int:
    wanted = span_s / target_points
    return next((s for s in NICE_STEPS if s >= wanted), NICE_STEPS[-1])


def plan_query(
    *,
    start: datetime,
    end: datetime,
    step_s: int | None,
    watermarks: Mapping[str, datetime],
    retention: RetentionSettings,
    now: datetime,
    auto_points: int = 1000,
    max_points: int = 50_000,
    speed_resolution_s: int = 60,
) -> QueryPlan:
    """Choose the tier and split ``[start, end)`` into segments at the watermarks.

    Args:
        start: Range start (inclusive).
        end: Range end (exclusive).
        step_s: Bucket width in seconds; None picks one (``auto``) that gives about
            ``auto_points`` buckets, never finer than the speed layer's windows.
        watermarks: ``complete_until`` per batch table (missing: nothing verified yet).
        retention: How long each tier keeps data.
        now: The current time (retention is counted back from it).
        auto_points: Buckets per series ``auto`` aims at.
        max_points: The most buckets a series may have.
        speed_resolution_s: The speed layer's window width.

    Raises:
        StepError: The range is empty, or the step gives more than ``max_points`` buckets,
            or it is not a multiple of any tier's resolution.
    """
    if end <= start:
        raise StepError("end must be after start")
    chain = tiers(retention)
    notes: list[str] = []
    step_s = step_s or _auto_step((end - start).total_seconds(), auto_points)
    if step_s >= 60 and step_s % 60:
        fits = 60 * max(1, round(step_s / 60))
        raise StepError(
            f"a step of a minute or more must be whole minutes (the rollups' resolution); "
            f"try {format_step(fits)}",
            suggestion=fits,
        )
    tier = _serving_tier(step_s, chain)
    # A tier that no longer holds the range's start hands over to the next coarser one.
    while tier.retention_days is not None and start < now - timedelta(days=tier.retention_days):
        coarser = chain[chain.index(tier) + 1]
        if step_s % coarser.resolution_s:
            notes.append(
                f"{tier.table} keeps {tier.retention_days} days: the range starts earlier, "
                f"so it is served by {coarser.table} and the step is raised from "
                f"{format_step(step_s)} to {format_step(coarser.resolution_s)}"
            )
            step_s = coarser.resolution_s
        else:
            notes.append(
                f"{tier.table} keeps {tier.retention_days} days: served by {coarser.table}"
            )
        tier = coarser
    aligned_start, aligned_end = _floor(start, step_s), ceil_to(end, step_s)
    buckets = (aligned_end - aligned_start).total_seconds() / step_s
    if buckets > max_points:
        wanted = (aligned_end - aligned_start).total_seconds() / max_points
        coarse_enough = next((s for s in NICE_STEPS if s >= wanted), None)
        raise StepError(
            f"a step of {format_step(step_s)} gives {int(buckets)} points per series, more "
            f"than the {max_points} allowed"
            + (
                f"; a step of {format_step(coarse_enough)} or more would work"
                if coarse_enough
                else ""
            ),
            suggestion=coarse_enough,
        )
    return QueryPlan(
        start=aligned_start,
        end=aligned_end,
        step_s=step_s,
        tier=tier,
        segments=_segments(tier, chain, watermarks, aligned_start, aligned_end, speed_resolution_s),
        notes=tuple(notes),
    )


def _segments(
    tier: Tier,
    chain: Sequence[Tier],
    watermarks: Mapping[str, datetime],
    start: datetime,
    end: datetime,
    speed_resolution_s: int,
) -> tuple[Segment, ...]:
    if tier.is_raw:
        # The speed layer keeps no points: sub-minute steps are the batch layer's alone.
        return (Segment(RAW_POINTS, start, end, tier.resolution_s),)
    # From the serving tier down to the finest rollup, each up to its own watermark (never
    # before the previous one), then the speed layer.
    cascade = [t for t in chain[chain.index(tier) :: -1] if not t.is_raw]
    segments: list[Segment] = []
    cursor = start
    for t in cascade:
        boundary = watermarks.get(t.table)
        if boundary is None:
            continue
        upto = min(max(boundary, cursor), end)
        if upto > cursor:
            segments.append(Segment(t.table, cursor, upto, t.resolution_s))
            cursor = upto
    if cursor < end:
        segments.append(Segment(SPEED_1M, cursor, end, speed_resolution_s))
    return tuple(segments)
