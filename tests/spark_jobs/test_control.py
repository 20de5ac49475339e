"""The batch layer's bookkeeping (control tables), without Spark."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleetlens.config import LakeSettings
from fleetlens.lake.paths import Lake
from spark_jobs import control
from spark_jobs.control import DAY, HourPartition

T0 = datetime(2026, 11, 20, 22, tzinfo=UTC)


def lake_at(tmp_path: Path) -> Lake:
    return Lake(LakeSettings(root=str(tmp_path / "lake")))


def test_hour_partitions_cross_midnight() -> None:
    hours = control.hours_between(T0, T0 + timedelta(hours=3))
    assert hours == [
        HourPartition("2026-11-20", 22),
        HourPartition("2026-11-20", 23),
        HourPartition("2026-11-21", 0),
    ]
    assert hours[2].start == T0 + timedelta(hours=2) and hours[2].end == T0 + timedelta(hours=3)
    assert hours[0].day() == HourPartition("2026-11-20", DAY)
    assert hours[0].day().end == datetime(2026, 11, 21, tzinfo=UTC)


def test_new_files_are_those_not_folded_in_or_changed(tmp_path: Path) -> None:
    lake = lake_at(tmp_path)
    folder = Path(lake.path("landing/metrics/date=2026-11-20/hour=22"))
    folder.mkdir(parents=True)
    (folder / "a.parquet").write_bytes(b"x" * 10)
    (folder / "b.parquet").write_bytes(b"x" * 20)
    (folder / "ignore.tmp").write_bytes(b"x")
    files = control.list_landing_files(lake, control.hours_between(T0, T0 + timedelta(hours=2)))
    assert [Path(f.path).name for f in files] == ["a.parquet", "b.parquet"]
    assert control.new_landing_files(lake, files) == files

    control.mark_files(lake, files, run_id="r1")
    assert control.new_landing_files(lake, files) == []
    (folder / "b.parquet").write_bytes(b"x" * 25)  # rewritten: counts as new again
    (folder / "c.parquet").write_bytes(b"x")
    files = control.list_landing_files(lake, control.hours_between(T0, T0 + timedelta(hours=1)))
    assert [Path(f.path).name for f in control.new_landing_files(lake, files)] == [
        "b.parquet",
        "c.parquet",
    ]


def test_stale_partitions_follow_their_sources(tmp_path: Path) -> None:
    lake = lake_at(tmp_path)
    hours = control.hours_between(T0, T0 + timedelta(hours=3))
    control.mark_partitions(lake, "raw", hours[:2], run_id="r1")
    # Never written targets are stale; hours without source data are not.
    assert control.stale_partitions(lake, source="raw", target="r1m", candidates=hours) == hours[:2]
    control.mark_partitions(lake, "r1m", hours[:2], run_id="r2")
    assert control.stale_partitions(lake, source="raw", target="r1m", candidates=hours) == []
    control.mark_partitions(lake, "raw", [hours[0]], run_id="r3")  # late data
    assert control.stale_partitions(lake, source="raw", target="r1m", candidates=hours) == [
        hours[0]
    ]
    days = control.stale_partitions(
        lake, source="raw", target="r1d", candidates=hours, to_target=True
    )
    assert days == [HourPartition("2026-11-20", DAY)]


def test_watermark_moves_forward_without_gaps(tmp_path: Path) -> None:
    lake = lake_at(tmp_path)
    hour = timedelta(hours=1)
    assert control.advance_watermark(lake, "r", start=T0, end=T0 + hour, run_id="a") == T0 + hour
    # A later interval that leaves a gap does not move it.
    assert (
        control.advance_watermark(lake, "r", start=T0 + 2 * hour, end=T0 + 3 * hour, run_id="b")
        is None
    )
    # An older interval does not move it back.
    assert control.advance_watermark(lake, "r", start=T0 - hour, end=T0, run_id="c") == T0 + hour
    assert (
        control.advance_watermark(lake, "r", start=T0 + hour, end=T0 + 2 * hour, run_id="d")
        == T0 + 2 * hour
    )
