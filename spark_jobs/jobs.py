"""The batch jobs: each reads what changed, transforms it (``spark_jobs.transforms``) and
replaces whole partitions of its target in one commit (``spark_jobs.delta_io``).

Every job takes an hour-aligned UTC interval ``[start, end)``. Scheduled runs also look
``batch.late_lookback_hours`` back, so late landing files reach every table; partitions
are only recomputed when their source changed after them (``spark_jobs.control``), or
always with ``force`` (reprocessing after a fix).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from tqdm import tqdm

from fleetlens.config import Settings
from fleetlens.lake.delta import delete_where, table_exists
from fleetlens.lake.delta import maintain as maintain_table
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import (
    BASELINE,
    BASELINE_SCHEMA,
    HOUR_PARTITIONS,
    QUARANTINE,
    QUARANTINE_SCHEMA,
    RAW_POINTS,
    RAW_POINTS_SCHEMA,
    ROLLUP_1D,
    ROLLUP_1D_SCHEMA,
    ROLLUP_1H,
    ROLLUP_1M,
    ROLLUP_HOURLY_SCHEMA,
    SPEED_1M,
    SPEED_LATE_1M,
)
from fleetlens.logging import get_logger
from spark_jobs import control, delta_io, quality
from spark_jobs.control import HourPartition
from spark_jobs.transforms.baseline import hourly_baseline
from spark_jobs.transforms.points import (
    POINT_COLUMNS,
    first_copies,
    landing_to_points,
    repeated_keys,
    split_by_keys,
    split_valid_points,
)
from spark_jobs.transforms.rollups import rollup_points, rollup_rollups, with_partitions

__all__ = ["JOBS", "JobContext", "JobResult", "run_job"]

log = get_logger("batch")


#: Target tables: schema, partition columns, description.
TABLES: dict[str, tuple[Any, tuple[str, ...], str]] = {
    RAW_POINTS: (RAW_POINTS_SCHEMA, HOUR_PARTITIONS, "One row per point, deduplicated"),
    QUARANTINE: (QUARANTINE_SCHEMA, HOUR_PARTITIONS, "Landing points that break the contract"),
    ROLLUP_1M: (ROLLUP_HOURLY_SCHEMA, HOUR_PARTITIONS, "1-minute rollups"),
    ROLLUP_1H: (ROLLUP_HOURLY_SCHEMA, HOUR_PARTITIONS, "1-hour rollups"),
    ROLLUP_1D: (ROLLUP_1D_SCHEMA, ("date",), "1-day rollups"),
    BASELINE: (BASELINE_SCHEMA, (), "Anomaly baseline per server, metric and hour of week"),
}


@dataclass
class JobContext:
    """What every job gets: settings, the Spark session, the lake and the run's id."""

    settings: Settings
    spark: SparkSession
    lake: Lake
    force: bool = False
    #: Whether scheduled-run semantics apply (look ``batch.late_lookback_hours`` back).
    lookback: bool = True
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def table(self, name: str) -> None:
        """Create the table if needed (same layout on every engine)."""
        schema, partition_by, description = TABLES[name]
        delta_io.ensure_table(
            self.lake, name, schema=schema, partition_by=partition_by, description=description
        )


@dataclass
class JobResult:
    """What a job did, for logs and the CLI's JSON line."""

    job: str
    start: str
    end: str
    partitions: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def _lookback(ctx: JobContext, start: datetime) -> datetime:
    if not ctx.lookback:
        return start
    return start - timedelta(hours=ctx.settings.batch.late_lookback_hours)


def _labels(partitions: Sequence[HourPartition]) -> list[str]:
    return [p.date if p.hour == control.DAY else f"{p.date}/{p.hour:02d}" for p in partitions]


def _where(partitions: Sequence[HourPartition], *, hour: bool = True) -> Any:
    """A Spark condition selecting the partitions."""
    if hour:
        wanted = [F.lit(f"{p.date}/{p.hour}") for p in partitions]
        return F.concat_ws("/", "date", F.col("hour").cast("string")).isin(wanted)
    return F.col("date").isin([p.date for p in partitions])


def _partition_values(partitions: Sequence[HourPartition]) -> list[dict[str, Any]]:
    return [
        {"date": p.date} if p.hour == control.DAY else {"date": p.date, "hour": p.hour}
        for p in partitions
    ]


# -- compact ------------------------------------------------------------------------------


def compact(ctx: JobContext, start: datetime, end: datetime) -> JobResult:
    """Landing Parquet → ``raw_points`` (+ ``quarantine``), for the hours with new files."""
    result = JobResult("compact", start.isoformat(), end.isoformat())
    ctx.table(RAW_POINTS)
    ctx.table(QUARANTINE)
    files = control.list_landing_files(ctx.lake, control.hours_between(_lookback(ctx, start), end))
    fresh = files if ctx.force else control.new_landing_files(ctx.lake, files)
    hours = sorted({f.partition for f in fresh})
    result.partitions[RAW_POINTS] = _labels(hours)
    if not hours:
        return result
    # Every file of a touched hour is read again: dedup spans the whole hour.
    inputs = [f for f in files if f.partition in set(hours)]
    landing = _read_landing(ctx, [ctx.lake.uri_of(f.path) for f in inputs])
    points = landing_to_points(_deduplicated(ctx, landing), ordered=True)
    checked = Observation("compact")
    valid, rejected = split_valid_points(
        points, metrics=ctx.settings.contract.metrics, observation=checked
    )
    raw = valid.select(*POINT_COLUMNS)
    quarantine = rejected.select(
        "source_file",
        "event_id",
        "server_id",
        "ts",
        "metric",
        "value",
        "reason",
        "ingest_ts",
        F.coalesce("date", F.lit("unknown")).alias("date"),
        F.coalesce("hour", F.lit(-1)).alias("hour"),
    )
    values = _partition_values(hours)
    result.rows[RAW_POINTS] = delta_io.replace_partitions(
        ctx.spark,
        raw,
        ctx.lake,
        RAW_POINTS,
        partition_by=HOUR_PARTITIONS,
        partitions=values,
        # Already in file order (date, hour, server_id, ts): see landing_to_points.
    )
    # The landing zone holds what the archiver validated: rejects are rare, and reading the
    # hours again for them is only worth it when the raw write counted some.
    if not checked.get.get("rejected"):
        quarantine = quarantine.limit(0)
    result.rows[QUARANTINE] = delta_io.replace_partitions(
        ctx.spark,
        quarantine,
        ctx.lake,
        QUARANTINE,
        partition_by=HOUR_PARTITIONS,
        partitions=values,
    )
    control.mark_partitions(ctx.lake, RAW_POINTS, hours, run_id=ctx.run_id)
    control.mark_files(ctx.lake, inputs, run_id=ctx.run_id)
    return result


def _read_landing(ctx: JobContext, uris: Sequence[str]) -> DataFrame:
    return ctx.spark.read.parquet(*uris).withColumn("source_file", F.input_file_name())


def _deduplicated(ctx: JobContext, landing: DataFrame) -> DataFrame:
    """The landing rows with each event once (:func:`first_copies`), shuffling only the
    rows of repeated events and reading again only the files that hold them."""
    keys = repeated_keys(landing).localCheckpoint()  # eager: tiny, and read three times
    if keys.isEmpty():
        return landing
    singles, _ = split_by_keys(landing, keys)
    _, holders = split_by_keys(landing.select("event_id", "source_file"), keys)
    files = sorted(row.source_file for row in holders.select("source_file").distinct().collect())
    _, repeated = split_by_keys(_read_landing(ctx, files), keys)
    return singles.unionByName(first_copies(repeated))


# -- rollups ------------------------------------------------------------------------------


def _stale(
    ctx: JobContext, source: str, target: str, start: datetime, end: datetime, *, daily: bool
) -> list[HourPartition]:
    candidates = control.hours_between(_lookback(ctx, start), end)
    if ctx.force:
        in_range = control.hours_between(start, end)
        return sorted({p.day() for p in in_range}) if daily else in_range
    return control.stale_partitions(
        ctx.lake, source=source, target=target, candidates=candidates, to_target=daily
    )


#: How rollup files are sorted within a partition: by series, then time.
_SERIES_ORDER = ("server_id", "metric", "window_start")


def _rollup(ctx: JobContext, source: str, target: str, start: datetime, end: datetime) -> JobResult:
    """Recompute ``target``'s partitions whose ``source`` partitions changed: points to
    minutes, minutes to hours, hours to days."""
    result = JobResult(target, start.isoformat(), end.isoformat())
    daily = target == ROLLUP_1D
    ctx.table(source)
    ctx.table(target)
    stale = _stale(ctx, source, target, start, end, daily=daily)
    result.partitions[target] = _labels(stale)
    if not stale:
        return result
    rows = delta_io.read_table(ctx.spark, ctx.lake, source).where(_where(stale, hour=not daily))
    if source == RAW_POINTS:
        rolled = rollup_points(rows, grain="minute", sketch_k=ctx.settings.batch.sketch_k)
    else:
        rolled = rollup_rollups(rows, grain="day" if daily else "hour")
    result.rows[target] = delta_io.replace_partitions(
        ctx.spark,
        with_partitions(rolled, hour=not daily),
        ctx.lake,
        target,
        partition_by=TABLES[target][1],
        partitions=_partition_values(stale),
        sort_by=_SERIES_ORDER,
    )
    control.mark_partitions(ctx.lake, target, stale, run_id=ctx.run_id)
    return result


def rollup_1m(ctx: JobContext, start: datetime, end: datetime) -> JobResult:
    """``raw_points`` → ``rollup_1m`` for the hours whose points changed."""
    return _rollup(ctx, RAW_POINTS, ROLLUP_1M, start, end)


def rollup_1h(ctx: JobContext, start: datetime, end: datetime) -> JobResult:
    """``rollup_1m`` → ``rollup_1h`` (sums, extremes and sketches merged) for the hours whose
    minutes changed: 60 rows per window instead of every point."""
    return _rollup(ctx, ROLLUP_1M, ROLLUP_1H, start, end)


def rollup_1d(ctx: JobContext, start: datetime, end: datetime) -> JobResult:
    """``rollup_1h`` → ``rollup_1d`` for the days with a changed hour."""
    return _rollup(ctx, ROLLUP_1H, ROLLUP_1D, start, end)


# -- baseline, retention, maintenance -------------------------------------------------------


def baseline(ctx: JobContext, start: datetime, end: datetime) -> JobResult:
    """``rollup_1h`` of the ``batch.baseline_weeks`` weeks before ``end`` → ``baseline_hourly``
    (replaced as a whole)."""
    result = JobResult(BASELINE, start.isoformat(), end.isoformat())
    ctx.table(ROLLUP_1H)
    ctx.table(BASELINE)
    since = end - timedelta(weeks=ctx.settings.batch.baseline_weeks)
    hours = delta_io.read_table(ctx.spark, ctx.lake, ROLLUP_1H).where(
        (F.col("window_start") >= F.lit(since)) & (F.col("window_start") < F.lit(end))
    )
    frame = hourly_baseline(hours, computed_at=end)
    result.rows[BASELINE] = delta_io.overwrite(ctx.spark, frame, ctx.lake, BASELINE)
    result.details["since"] = since.isoformat()
    return result


def _retention_days(ctx: JobContext) -> dict[str, int | None]:
    days = ctx.settings.batch.retention
    return {
        RAW_POINTS: days.raw_points_days,
        QUARANTINE: days.quarantine_days,
        ROLLUP_1M: days.rollup_1m_days,
        ROLLUP_1H: days.rollup_1h_days,
        ROLLUP_1D: days.rollup_1d_days,
    }


def retention(ctx: JobContext, start: datetime, end: datetime) -> JobResult:
    """Delete the partitions that ended more than each table's retention before ``end``
    (whole files, nothing rewritten); ``maintain`` vacuums them later."""
    result = JobResult("retention", start.isoformat(), end.isoformat())
    for name, days in _retention_days(ctx).items():
        if days is None:
            continue
        ctx.table(name)
        cutoff = HourPartition.of(end - timedelta(days=days))
        if TABLES[name][1] == ("date",):
            predicate = f"date < '{cutoff.date}'"
        else:
            predicate = (
                f"date < '{cutoff.date}' OR (date = '{cutoff.date}' AND hour < {cutoff.hour})"
            )
        result.rows[name] = delete_where(ctx.lake, name, predicate)
        result.details[name] = predicate
    return result


def maintain(ctx: JobContext, start: datetime, end: datetime) -> JobResult:
    """Compact small files, checkpoint, clean the log and vacuum every batch table and the
    speed layer's ``speed_1m``."""
    result = JobResult("maintain", start.isoformat(), end.isoformat())
    hours = ctx.settings.batch.retention.vacuum_hours
    for name in (*TABLES, SPEED_1M, SPEED_LATE_1M):
        if not table_exists(ctx.lake, name):
            continue
        report = maintain_table(ctx.lake, name, retention_hours=hours)
        result.details[name] = {
            "files_added": report.compaction.get("numFilesAdded"),
            "files_removed": report.compaction.get("numFilesRemoved"),
            "log_files_deleted": report.log_files_deleted,
            "vacuumed": len(report.vacuumed_files),
            "version": report.version,
        }
    return result


# -- quality ------------------------------------------------------------------------------


def _verified(table: str) -> str:
    """The pseudo-table under which the quality job marks the partitions it passed."""
    return f"quality:{table}"


#: The tables the quality job checks, with the grain of their partitions.
_CHECKED = ((RAW_POINTS, False), (ROLLUP_1M, False), (ROLLUP_1H, False), (ROLLUP_1D, True))


def _unverified(
    ctx: JobContext, table: str, start: datetime, end: datetime, *, daily: bool
) -> list[HourPartition]:
    """``table``'s partitions of the interval (and its look-back) that changed since the
    quality job last passed them; with ``force``, all of the interval's."""
    if ctx.force:
        in_range = control.hours_between(start, end)
        return sorted({p.day() for p in in_range}) if daily else in_range
    hours = control.hours_between(_lookback(ctx, start), end)
    candidates = sorted({p.day() for p in hours}) if daily else hours
    return control.stale_partitions(
        ctx.lake, source=table, target=_verified(table), candidates=candidates
    )


def quality_job(ctx: JobContext, start: datetime, end: datetime) -> JobResult:
    """Run the quality suites over every partition of ``raw_points`` and the rollups that
    changed since it was last verified, reconcile the rollups' counts with the points, and
    check that ``raw_points`` is fresh at the interval's end.

    Every report is kept under ``<lake>/_quality/``. If all pass, the partitions are marked
    verified (what :func:`watermark` waits for); if one fails, the job fails with the
    reports' summaries and nothing is marked.
    """
    result = JobResult("quality", start.isoformat(), end.isoformat())
    settings = ctx.settings
    pending: dict[str, list[HourPartition]] = {}
    for name, daily in _CHECKED:
        ctx.table(name)
        pending[name] = _unverified(ctx, name, start, end, daily=daily)
        result.partitions[_verified(name)] = _labels(pending[name])

    reports: list[quality.QualityReport] = []
    raw_hours = sorted(set(pending[RAW_POINTS]) | set(pending[ROLLUP_1M]) | set(pending[ROLLUP_1H]))
    if raw_hours:
        checked = control.partition_times(raw_hours)
        raw = delta_io.read_table(ctx.spark, ctx.lake, RAW_POINTS).where(_where(raw_hours))
        raw.persist()
        try:
            reports.append(quality.validate_raw_points(raw, settings, interval=checked))
            for name in (ROLLUP_1M, ROLLUP_1H):
                rows = delta_io.read_table(ctx.spark, ctx.lake, name).where(_where(raw_hours))
                reports.append(
                    quality.validate_rollup(rows, settings, table=name, interval=checked)
                )
                reports.append(quality.reconcile(raw, rows, interval=checked, table=name))
        finally:
            raw.unpersist()
    if days := pending[ROLLUP_1D]:
        rows = delta_io.read_table(ctx.spark, ctx.lake, ROLLUP_1D).where(_where(days, hour=False))
        reports.append(
            quality.validate_rollup(
                rows, settings, table=ROLLUP_1D, interval=control.partition_times(days)
            )
        )
    horizon = timedelta(minutes=settings.batch.freshness_minutes)
    recent = control.hours_between(max(start, end - horizon - timedelta(hours=1)), end)
    newest = delta_io.read_table(ctx.spark, ctx.lake, RAW_POINTS).where(_where(recent))
    reports.append(
        quality.check_freshness(
            newest, table=RAW_POINTS, column="ts", interval=(start, end), horizon=horizon
        )
    )

    for report in reports:
        result.details[report.name] = {
            "success": report.success,
            "evaluated": report.evaluated,
            "failed": len(report.failures),
            "kept": quality.write_report(ctx.lake, report),
        }
        log.info("quality.report", name=report.name, success=report.success)
    quality.raise_for_failures(reports)
    for name, parts in pending.items():
        if parts:
            control.mark_partitions(ctx.lake, _verified(name), parts, run_id=ctx.run_id)
    return result


# -- watermark ----------------------------------------------------------------------------


class IncompleteIntervalError(RuntimeError):
    """The interval is not complete and verified yet; the watermark stays where it was."""


def watermark(ctx: JobContext, start: datetime, end: datetime) -> JobResult:
    """Move each rollup's ``complete_until`` in ``batch_watermarks`` to ``end`` once every
    hour of ``[start, end)`` is rolled up from the latest points and passed quality.

    The watermark only moves forward, and only without a gap: if it is before ``start``,
    an earlier interval is not complete and it stays there.
    """
    result = JobResult("watermark", start.isoformat(), end.isoformat())
    hours = control.hours_between(start, end)
    problems: list[str] = []
    for source, target in (
        (RAW_POINTS, ROLLUP_1M),
        (ROLLUP_1M, ROLLUP_1H),
        (RAW_POINTS, _verified(RAW_POINTS)),
        (ROLLUP_1M, _verified(ROLLUP_1M)),
        (ROLLUP_1H, _verified(ROLLUP_1H)),
    ):
        stale = control.stale_partitions(ctx.lake, source=source, target=target, candidates=hours)
        if stale:
            problems.append(f"{target} is behind {source} for {', '.join(_labels(stale))}")
    if problems:
        raise IncompleteIntervalError("; ".join(problems))
    for table in (ROLLUP_1M, ROLLUP_1H):
        moved = control.advance_watermark(ctx.lake, table, start=start, end=end, run_id=ctx.run_id)
        result.details[table] = moved.isoformat() if moved else "gap before start: not moved"
    result.details[ROLLUP_1D] = _advance_daily_watermark(ctx)
    return result


def _advance_daily_watermark(ctx: JobContext) -> str:
    """Move ``rollup_1d``'s ``complete_until`` to the last midnight before ``rollup_1h``'s
    once every day up to there is rolled up from the latest hours and verified.

    ``rollup_1d`` runs once a day, so lagging the hourly watermark is normal, not an error:
    the query layer reads ``rollup_1h`` for the days in between.
    """
    hourly = control.watermark_of(ctx.lake, ROLLUP_1H)
    first = control.first_partition(ctx.lake, ROLLUP_1H)
    if hourly is None or first is None:
        return "no hourly watermark yet: not moved"
    day_end = hourly.replace(hour=0, minute=0, second=0, microsecond=0)
    begin = control.watermark_of(ctx.lake, ROLLUP_1D) or first.day().start
    if day_end <= begin:
        return f"{begin.isoformat()} (no complete day since)"
    hours = control.hours_between(begin, day_end)
    days = sorted({h.day() for h in hours})
    behind = control.stale_partitions(
        ctx.lake, source=ROLLUP_1H, target=ROLLUP_1D, candidates=hours, to_target=True
    ) + control.stale_partitions(
        ctx.lake, source=ROLLUP_1D, target=_verified(ROLLUP_1D), candidates=days
    )
    if behind:
        return f"not moved: {', '.join(_labels(sorted(set(behind))))} not rolled up and verified"
    moved = control.advance_watermark(
        ctx.lake, ROLLUP_1D, start=begin, end=day_end, run_id=ctx.run_id
    )
    return moved.isoformat() if moved else "gap before start: not moved"


# -- backfill -----------------------------------------------------------------------------

#: The jobs a backfill runs for each chunk, in order.
_BACKFILL_CHAIN = ("compact", "rollup_1m", "rollup_1h", "quality", "watermark")


def backfill(ctx: JobContext, start: datetime, end: datetime) -> JobResult:
    """Compact, roll up, check and move the watermark over ``[start, end)``, chunk by chunk
    (``batch.backfill_chunk_hours``), then the daily rollups. Each chunk commits on its
    own, and unchanged partitions are skipped: rerunning after a failure resumes. With
    ``force`` every partition is recomputed (reprocessing after a fix)."""
    result = JobResult("backfill", start.isoformat(), end.isoformat())
    step = timedelta(hours=ctx.settings.batch.backfill_chunk_hours)
    chunks = []
    moment = start
    while moment < end:
        chunks.append((moment, min(moment + step, end)))
        moment += step
    scoped = replace(ctx, lookback=False)
    with tqdm(total=len(chunks), desc="backfill", unit="chunk", disable=None) as bar:
        for begin, finish in chunks:
            bar.set_postfix_str(f"{begin:%Y-%m-%d %H:%M}")
            for name in _BACKFILL_CHAIN:
                step_result = JOBS[name](scoped, begin, finish)
                for table, parts in step_result.partitions.items():
                    result.partitions.setdefault(table, []).extend(parts)
            bar.update()
    daily = rollup_1d(scoped, start, end)
    result.partitions.update(daily.partitions)
    # The days just rolled up are verified and watermarked now, not at the next hourly run.
    quality_job(scoped, start, end)
    result.details["watermark"] = watermark(scoped, start, end).details
    result.details["chunks"] = len(chunks)
    return result


Job = Callable[[JobContext, datetime, datetime], JobResult]

#: Jobs by name, as ``fleetlens spark run JOB`` takes them.
JOBS: dict[str, Job] = {
    "compact": compact,
    "rollup_1m": rollup_1m,
    "rollup_1h": rollup_1h,
    "rollup_1d": rollup_1d,
    "quality": quality_job,
    "baseline": baseline,
    "retention": retention,
    "maintain": maintain,
    "watermark": watermark,
    "backfill": backfill,
}


def run_job(ctx: JobContext, name: str, start: datetime, end: datetime) -> JobResult:
    """Run one job by name, with structured logs around it."""
    if name not in JOBS:
        raise KeyError(f"unknown job {name!r}; jobs: {', '.join(JOBS)}")
    log.info(
        "job.started", job=name, start=start.isoformat(), end=end.isoformat(), run_id=ctx.run_id
    )
    result = JOBS[name](ctx, start, end)
    log.info(
        "job.finished", job=name, run_id=ctx.run_id, partitions=result.partitions, rows=result.rows
    )
    return result
