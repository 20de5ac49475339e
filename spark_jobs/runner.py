"""What ``fleetlens spark run`` calls: build the session, run the job, report."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from fleetlens.config import Settings

__all__ = ["JOB_NAMES", "job_names", "run_cli_job"]

#: The jobs ``fleetlens spark run`` knows, in pipeline order (importing Spark not needed).
JOB_NAMES = (
    "compact",
    "rollup_1m",
    "rollup_1h",
    "rollup_1d",
    "quality",
    "watermark",
    "baseline",
    "retention",
    "maintain",
    "backfill",
)


def job_names() -> tuple[str, ...]:
    """The job names (what the DAGs may call)."""
    return JOB_NAMES


def run_cli_job(
    settings: Settings, job: str, start: datetime, end: datetime, *, force: bool = False
) -> dict[str, Any]:
    """Run ``job`` over ``[start, end)`` in a session built from ``settings``."""
    if job not in JOB_NAMES:
        raise ValueError(f"unknown job {job!r}; jobs: {', '.join(JOB_NAMES)}")
    from fleetlens.lake.paths import Lake
    from spark_jobs.delta_io import resolve_mode
    from spark_jobs.jobs import JobContext, run_job
    from spark_jobs.session import build_session

    spark = build_session(settings, app_name=f"fleetlens-{job}")
    context = JobContext(settings=settings, spark=spark, lake=Lake(settings.lake), force=force)
    result = asdict(run_job(context, job, start, end))
    # Where it ran: spark-submit's --master wins over the settings' spark.master.
    result["spark"] = {"master": spark.sparkContext.master, "delta_mode": resolve_mode(spark)}
    return result
