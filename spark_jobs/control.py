"""The batch layer's bookkeeping, in small Delta control tables.

* ``landing_files``: every landing file compaction has folded into ``raw_points``, with its
  size. A file that is new (or has changed size) marks its hour as to be compacted again.
* ``batch_partitions``: per table and partition, when a job last replaced it. A job
  recomputes a target partition when a source partition it reads was replaced after it:
  late data reaches every rollup, and a rerun with nothing new does nothing.

Both are written with :func:`fleetlens.lake.delta.upsert` (idempotent), after the data
commit they describe: a crash in between only makes the next run redo the same work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import WATERMARK_SCHEMA, WATERMARKS

__all__ = [
    "DAY",
    "LANDING_FILES",
    "PARTITIONS",
    "HourPartition",
    "LandingFile",
    "advance_watermark",
    "first_partition",
    "hours_between",
    "list_landing_files",
    "mark_files",
    "mark_partitions",
    "new_landing_files",
    "partition_times",
    "stale_partitions",
    "watermark_of",
]

LANDING_FILES = "landing_files"
PARTITIONS = "batch_partitions"
#: The ``hour`` of a partition that covers a whole day (``rollup_1d``).
DAY = -1

_FILES_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("date", pa.string(), nullable=False),
        pa.field("hour", pa.int32(), nullable=False),
        pa.field("processed_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)
_PARTITIONS_SCHEMA = pa.schema(
    [
        pa.field("table_name", pa.string(), nullable=False),
        pa.field("date", pa.string(), nullable=False),
        pa.field("hour", pa.int32(), nullable=False),
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True, order=True)
class HourPartition:
    """A ``(date, hour)`` partition; ``hour == DAY`` for a whole-day partition."""

    date: str
    hour: int

    @classmethod
    def of(cls, moment: datetime) -> HourPartition:
        """The hour partition of an instant."""
        moment = moment.astimezone(UTC)
        return cls(f"{moment:%Y-%m-%d}", moment.hour)

    @property
    def start(self) -> datetime:
        """The partition's first instant (UTC)."""
        day = datetime.strptime(self.date, "%Y-%m-%d").replace(tzinfo=UTC)
        return day if self.hour == DAY else day + timedelta(hours=self.hour)

    @property
    def end(self) -> datetime:
        """The first instant after the partition."""
        return self.start + (timedelta(days=1) if self.hour == DAY else timedelta(hours=1))

    def day(self) -> HourPartition:
        """The whole-day partition this hour belongs to."""
        return HourPartition(self.date, DAY)


@dataclass(frozen=True)
class LandingFile:
    """A landing Parquet file (``path`` for the lake's filesystem)."""

    path: str
    size: int
    partition: HourPartition


def hours_between(start: datetime, end: datetime) -> list[HourPartition]:
    """The hour partitions of ``[start, end)`` (both hour-aligned)."""
    out = []
    moment = start
    while moment < end:
        out.append(HourPartition.of(moment))
        moment += timedelta(hours=1)
    return out


def partition_times(partitions: Iterable[HourPartition]) -> tuple[datetime, datetime]:
    """The smallest interval covering the partitions."""
    parts = list(partitions)
    return min(p.start for p in parts), max(p.end for p in parts)


def list_landing_files(lake: Lake, hours: Sequence[HourPartition]) -> list[LandingFile]:
    """The Parquet files in the landing partitions of ``hours`` (missing ones are empty)."""
    files: list[LandingFile] = []
    for hour in hours:
        folder = lake.path(Lake.LANDING_METRICS, f"date={hour.date}", f"hour={hour.hour:02d}")
        selector = pafs.FileSelector(folder, allow_not_found=True)
        for info in lake.fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet"):
                files.append(LandingFile(info.path, int(info.size or 0), hour))
    return sorted(files, key=lambda f: f.path)


def _read(lake: Lake, name: str, schema: pa.Schema) -> pa.Table:
    delta.ensure_table(lake, name, schema=schema, description=f"Batch layer control: {name}")
    return delta.read_table(lake, name)


def new_landing_files(lake: Lake, files: Sequence[LandingFile]) -> list[LandingFile]:
    """The files compaction has not folded in yet (or that changed size since)."""
    done = _read(lake, LANDING_FILES, _FILES_SCHEMA)
    known = dict(zip(done["path"].to_pylist(), done["size"].to_pylist(), strict=True))
    return [f for f in files if known.get(f.path) != f.size]


def mark_files(lake: Lake, files: Sequence[LandingFile], *, run_id: str) -> None:
    """Record files as folded into ``raw_points``."""
    now = datetime.now(UTC)
    rows = pa.Table.from_pylist(
        [
            {
                "path": f.path,
                "size": f.size,
                "date": f.partition.date,
                "hour": f.partition.hour,
                "processed_at": now,
                "run_id": run_id,
            }
            for f in files
        ],
        schema=_FILES_SCHEMA,
    )
    _read(lake, LANDING_FILES, _FILES_SCHEMA)
    delta.upsert(lake, LANDING_FILES, rows, key=["path"])


def mark_partitions(
    lake: Lake, table: str, partitions: Iterable[HourPartition], *, run_id: str
) -> None:
    """Record that ``table``'s partitions were replaced now."""
    now = datetime.now(UTC)
    rows = pa.Table.from_pylist(
        [
            {
                "table_name": table,
                "date": p.date,
                "hour": p.hour,
                "updated_at": now,
                "run_id": run_id,
            }
            for p in sorted(set(partitions))
        ],
        schema=_PARTITIONS_SCHEMA,
    )
    _read(lake, PARTITIONS, _PARTITIONS_SCHEMA)
    delta.upsert(lake, PARTITIONS, rows, key=["table_name", "date", "hour"])


def _updated(lake: Lake, table: str) -> dict[HourPartition, datetime]:
    rows = _read(lake, PARTITIONS, _PARTITIONS_SCHEMA)
    rows = rows.filter(pc.equal(rows["table_name"], table))
    return {
        HourPartition(d, h): u
        for d, h, u in zip(
            rows["date"].to_pylist(),
            rows["hour"].to_pylist(),
            rows["updated_at"].to_pylist(),
            strict=True,
        )
    }


def stale_partitions(
    lake: Lake,
    *,
    source: str,
    target: str,
    candidates: Iterable[HourPartition],
    to_target: bool = False,
) -> list[HourPartition]:
    """The ``target`` partitions among ``candidates`` (source partitions) that a source
    partition replaced after them, or that were never written; with ``to_target``, source
    hours map to their whole-day target partition."""
    source_updated = _updated(lake, source)
    target_updated = _updated(lake, target)
    stale: set[HourPartition] = set()
    for part in candidates:
        updated = source_updated.get(part)
        if updated is None:
            continue  # nothing to read
        goal = part.day() if to_target else part
        written = target_updated.get(goal)
        if written is None or written < updated:
            stale.add(goal)
    return sorted(stale)


def watermark_of(lake: Lake, table: str) -> datetime | None:
    """``table``'s ``complete_until``, or None if it has none yet."""
    rows = _read(lake, WATERMARKS, WATERMARK_SCHEMA)
    rows = rows.filter(pc.equal(rows["table_name"], table))
    return rows["complete_until"][0].as_py() if rows.num_rows else None


def first_partition(lake: Lake, table: str) -> HourPartition | None:
    """The earliest partition a job wrote to ``table``, or None if none."""
    return min(_updated(lake, table), default=None)


def advance_watermark(
    lake: Lake, table: str, *, start: datetime, end: datetime, run_id: str
) -> datetime | None:
    """Move ``table``'s ``complete_until`` to ``end`` if it is unset or at least ``start``
    (no gap) and below ``end``; returns the new value, or None if a gap kept it."""
    current = watermark_of(lake, table)
    if current is not None and current < start:
        return None
    if current is not None and current >= end:
        return current
    update = pa.Table.from_pylist(
        [
            {
                "table_name": table,
                "complete_until": end,
                "updated_at": datetime.now(UTC),
                "run_id": run_id,
            }
        ],
        schema=WATERMARK_SCHEMA,
    )
    delta.upsert(lake, WATERMARKS, update, key=["table_name"])
    return end
