"""The cache of batch rows before the watermark: where a segment is split, that cached and
uncached engines answer alike while a dashboard's range moves, and that a new version of a
batch table is read rather than the rows kept from the old one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from sample_points import sample_points

import fleetlens
from fleetlens.config import Settings, load_settings
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import ROLLUP_1D, ROLLUP_1H, ROLLUP_1M
from fleetlens.serving.query import QueryEngine, engine_for
from fleetlens.serving.segment_cache import SegmentCache, split_for_cache
from fleetlens.serving.tiers import Segment
from fleetlens.simulator.lake import write_simulated_lake

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
START = NOW - timedelta(hours=10)
BOUNDARY = NOW - timedelta(hours=3)
DAY = datetime(2026, 11, 20, tzinfo=UTC)


def _at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


@pytest.mark.parametrize(
    ("segment", "head", "body"),
    [
        # rollup_1m: the body starts at the first whole hour.
        (Segment(ROLLUP_1M, _at(1.25), _at(5), 60), (_at(1.25), _at(2)), (_at(2), _at(5))),
        (Segment(ROLLUP_1M, _at(2), _at(5), 60), None, (_at(2), _at(5))),
        # Shorter than a chunk: all head.
        (Segment(ROLLUP_1M, _at(1.25), _at(1.75), 60), (_at(1.25), _at(1.75)), None),
        # rollup_1h and rollup_1d: at the first whole day.
        (Segment(ROLLUP_1H, _at(5), _at(50), 3600), (_at(5), _at(24)), (_at(24), _at(50))),
        (Segment(ROLLUP_1D, _at(0), _at(24 * 30), 86_400), None, (_at(0), _at(24 * 30))),
        # A resolution without a chunk is never cached.
        (Segment("raw_points", _at(1), _at(3), 10), (_at(1), _at(3)), None),
    ],
)
def test_a_segment_splits_at_its_first_whole_chunk(
    segment: Segment,
    head: tuple[datetime, datetime] | None,
    body: tuple[datetime, datetime] | None,
) -> None:
    got_head, got_body = split_for_cache(segment)
    assert (None if got_head is None else (got_head.start, got_head.end)) == head
    assert (None if got_body is None else (got_body.start, got_body.end)) == body
    for part in (got_head, got_body):
        assert part is None or (part.table, part.resolution_s) == (
            segment.table,
            segment.resolution_s,
        )


def test_the_cache_is_bounded_by_the_size_of_its_frames() -> None:
    frame = pl.DataFrame({"x": np.arange(1000, dtype=np.float64)})  # 8,000 bytes
    cache = SegmentCache(20_000)
    cache.put("a", frame)
    cache.put("b", frame)
    cache.put("c", frame)  # evicts "a", the least recently used
    assert cache.get("a") is None
    assert cache.get("c") is not None
    SegmentCache(4_000).put("big", frame)  # larger than the whole cache: not kept, no error
    assert not SegmentCache(0).enabled


def _points(servers: range, *, seed: int) -> pl.DataFrame:
    return sample_points(START, hours=10, servers=[f"acme-{i}" for i in servers], seed=seed)


def _write(settings: Settings, points: pl.DataFrame) -> None:
    write_simulated_lake(
        Lake(settings.lake),
        points,
        watermarks={ROLLUP_1M: BOUNDARY, ROLLUP_1H: BOUNDARY, ROLLUP_1D: BOUNDARY.replace(hour=0)},
        speed_from=START,
        raw=False,
    )


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        "embedded", lake={"root": str(tmp_path / "lake")}, runtime_dir=tmp_path / "run"
    )


def test_a_moving_range_reads_the_kept_rows_and_answers_as_without_them(
    settings: Settings,
) -> None:
    _write(settings, _points(range(3), seed=1))
    uncached = QueryEngine(settings.model_copy(update={"serving": settings.serving.model_copy(
        update={"segment_cache_mb": 0})}))  # fmt: skip
    cached = QueryEngine(settings)

    def ask(engine: QueryEngine, start: datetime, **kwargs: object) -> pl.DataFrame:
        return engine.query("cpu_pct", start, NOW, now=NOW, **kwargs)  # type: ignore[arg-type]

    # A dashboard refreshing every minute, projections and group-bys, sketches included.
    for minutes in range(0, 5):
        start = START + timedelta(minutes=20 + minutes)
        for kwargs in (
            {"step": "1m"},
            {"step": "5m", "group_by": "service", "aggs": ("count", "sum", "min", "max", "p95")},
            {"step": "1m", "servers": ["acme-2", "acme-0"], "aggs": ("avg", "last")},
        ):
            assert_frame_equal(ask(cached, start, **kwargs), ask(uncached, start, **kwargs))
    assert cached.segment_cache.hits >= 12  # three shapes, each a miss once, then hits
    assert cached.segment_cache.misses == 3
    assert not uncached.segment_cache.enabled


def test_a_new_table_version_is_read_not_the_rows_kept_from_the_old_one(
    settings: Settings,
) -> None:
    _write(settings, _points(range(2), seed=1))
    engine = QueryEngine(settings)
    before = engine.query("cpu_pct", START, NOW, step="1m", aggs=("count",), now=NOW)
    assert set(before["server_id"]) == {"acme-0", "acme-1"}
    # A batch job (a backfill) writes another server's rows into the same windows.
    _write(settings, _points(range(2, 3), seed=2))
    after = engine.query("cpu_pct", START, NOW, step="1m", aggs=("count",), now=NOW)
    assert engine.segment_cache.hits == 0  # the body was kept under the old version
    assert set(after["server_id"]) == {"acme-0", "acme-1", "acme-2"}
    fresh = QueryEngine(settings)
    assert_frame_equal(
        after, fresh.query("cpu_pct", START, NOW, step="1m", aggs=("count",), now=NOW)
    )


def test_the_notebook_function_keeps_an_engine_per_settings(settings: Settings) -> None:
    _write(settings, _points(range(2), seed=1))
    first = fleetlens.query("cpu_pct", START + timedelta(minutes=5), NOW, step="1m",
                            settings=settings)  # fmt: skip
    again = fleetlens.query("cpu_pct", START + timedelta(minutes=6), NOW, step="1m",
                            settings=settings)  # fmt: skip
    assert_frame_equal(again, first.filter(pl.col("window_start") >= START + timedelta(minutes=6)))
    engine = engine_for(settings)
    assert engine is engine_for(settings)
    assert (engine.segment_cache.misses, engine.segment_cache.hits) == (1, 1)
    assert engine_for(settings.model_copy()) is not engine
