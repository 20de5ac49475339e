"""The plan: which table serves which part of a range, the step, and the errors that name
what would work."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleetlens.config import RetentionSettings
from fleetlens.lake.schemas import RAW_POINTS, ROLLUP_1D, ROLLUP_1H, ROLLUP_1M, SPEED_1M
from fleetlens.serving.tiers import StepError, format_step, parse_step, plan_query

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
MARKS = {
    ROLLUP_1M: NOW - 2 * HOUR,
    ROLLUP_1H: NOW - 2 * HOUR,
    ROLLUP_1D: datetime(2026, 12, 1, tzinfo=UTC),
}


def plan(start: datetime, end: datetime = NOW, step: int | None = None, marks=MARKS):  # type: ignore[no-untyped-def]
    return plan_query(
        start=start, end=end, step_s=step, watermarks=marks, retention=RetentionSettings(), now=NOW
    )


def tables(p) -> list[tuple[str, datetime, datetime]]:  # type: ignore[no-untyped-def]
    return [(s.table, s.start, s.end) for s in p.segments]


def test_each_tier_serves_up_to_its_watermark_and_the_speed_layer_the_rest() -> None:
    p = plan(NOW - timedelta(days=3), step=86400)
    assert p.tier.table == ROLLUP_1D
    assert tables(p) == [
        (ROLLUP_1D, datetime(2026, 11, 28, tzinfo=UTC), MARKS[ROLLUP_1D]),
        (ROLLUP_1H, MARKS[ROLLUP_1D], MARKS[ROLLUP_1H]),
        (SPEED_1M, MARKS[ROLLUP_1M], datetime(2026, 12, 2, tzinfo=UTC)),
    ]
    assert not p.cacheable
    assert plan(NOW - 6 * HOUR, NOW - 3 * HOUR, step=3600).cacheable


def test_without_watermarks_the_speed_layer_serves_everything() -> None:
    p = plan(NOW - 6 * HOUR, step=60, marks={})
    assert tables(p) == [(SPEED_1M, NOW - 6 * HOUR, NOW)]


def test_sub_minute_steps_come_from_raw_points() -> None:
    p = plan(NOW - HOUR, step=10)
    assert p.tier.table == RAW_POINTS
    assert tables(p) == [(RAW_POINTS, NOW - HOUR, NOW)]


def test_auto_aims_at_about_a_thousand_points_and_never_below_a_minute() -> None:
    assert plan(NOW - timedelta(minutes=15)).step_s == 60
    assert plan(NOW - timedelta(hours=24)).step_s == 300
    assert plan(NOW - timedelta(days=30)).step_s == 3600
    assert plan(NOW - timedelta(days=365)).step_s == 43200


def test_a_range_beyond_retention_falls_back_to_a_coarser_tier_with_a_note() -> None:
    p = plan(NOW - timedelta(days=60), step=300)
    assert p.tier.table == ROLLUP_1H
    assert p.step_s == 3600
    assert "rollup_1m keeps 30 days" in p.notes[0]
    assert "raised from 5m to 1h" in p.notes[0]


def test_bounds_are_aligned_to_the_step() -> None:
    p = plan(NOW - timedelta(minutes=90, seconds=7), NOW - timedelta(seconds=1), step=3600)
    assert (p.start, p.end) == (NOW - 2 * HOUR, NOW)


def test_errors_name_a_step_that_would_work() -> None:
    with pytest.raises(StepError, match="try 2m") as error:
        plan(NOW - HOUR, step=100)
    assert error.value.suggestion == 120
    with pytest.raises(StepError, match="a step of 1m or more would work") as error:
        plan(NOW - timedelta(days=7), step=10)  # 60,480 raw points per series
    assert error.value.suggestion is not None
    with pytest.raises(StepError, match="end must be after start"):
        plan(NOW, NOW - HOUR)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("auto", None), ("10s", 10), ("5m", 300), ("1h", 3600), ("2d", 172800), ("90", 90)],
)
def test_steps_parse_and_format(text: str, seconds: int | None) -> None:
    assert parse_step(text) == seconds
    if seconds is not None and text != "90":
        assert format_step(seconds) == text


def test_a_step_that_is_not_one_is_refused() -> None:
    for text in ("fast", "-5m", "0"):
        with pytest.raises(StepError):
            parse_step(text)
