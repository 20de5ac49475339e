"""What the Airflow DAGs run: ``fleetlens spark run JOB`` command lines, as Jinja templates.

Kept free of Airflow imports so it can be tested (and read) without it. The DAG files in
``dags/`` only wire these commands into tasks; everything a job does lives behind the CLI.

The templates are rendered by Airflow in the worker, at run time:

* the executable is the Airflow Variable ``fleetlens_executable`` (also settable as the
  environment variable ``AIRFLOW_VAR_FLEETLENS_EXECUTABLE``), else :func:`default_executable`;
* the interval comes from the run's ``data_interval_start``/``data_interval_end`` (scheduled
  DAGs) or from its ``params`` (backfill), formatted by :func:`iso_z`.
"""

from __future__ import annotations

import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = [
    "BACKFILL_JOB",
    "CAPACITY_REPORT_DAYS",
    "CAPACITY_REPORT_TASK",
    "DAILY_JOBS",
    "EXECUTABLE_VARIABLE",
    "HOURLY_JOBS",
    "capacity_report_template",
    "days_before",
    "default_executable",
    "iso_z",
    "jinja_filters",
    "jinja_macros",
    "parse_hour",
    "spark_run_template",
]

#: The hourly chain, in order: landing → raw_points → rollups → checks → watermark.
HOURLY_JOBS = ("compact", "rollup_1m", "rollup_1h", "quality", "watermark")
#: The daily chain, in order.
DAILY_JOBS = ("rollup_1d", "baseline", "retention", "maintain")
#: The manual, resumable catch-up over any range.
BACKFILL_JOB = "backfill"
#: The daily DAG's report task (after ``rollup_1d``) and the days of history it covers.
CAPACITY_REPORT_TASK = "capacity_report"
CAPACITY_REPORT_DAYS = 30

#: The Airflow Variable naming the ``fleetlens`` executable (optional).
EXECUTABLE_VARIABLE = "fleetlens_executable"

_DATA_INTERVAL = ("data_interval_start", "data_interval_end")
_EXECUTABLE = f"{{{{ var.value.get('{EXECUTABLE_VARIABLE}', fleetlens_executable()) }}}}"


def default_executable() -> str:
    """The ``fleetlens`` console script next to the running interpreter, else from ``PATH``.

    Called while Airflow renders a task's command, i.e. in the worker: the interpreter is the
    one running Airflow, whose environment has FleetLens installed.
    """
    beside = Path(sys.executable).with_name("fleetlens")
    if beside.is_file():
        return str(beside)
    # Unresolved, the plain name makes the task fail with "fleetlens: command not found".
    return shutil.which("fleetlens") or "fleetlens"


def parse_hour(value: datetime | str) -> datetime:
    """An hour-aligned instant, as ``fleetlens spark run`` takes it, in UTC.

    Args:
        value: A timezone-aware datetime (Airflow passes pendulum instants) or an ISO 8601
            string with an offset or ``Z``.

    Raises:
        ValueError: naive, unparsable or not on the hour.
    """
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no timezone; give UTC, e.g. 2026-11-20T13:00:00Z")
    moment = moment.astimezone(UTC)
    if (moment.minute, moment.second, moment.microsecond) != (0, 0, 0):
        raise ValueError(f"{value!r} is not on the hour")
    return moment


def iso_z(value: datetime | str) -> str:
    """An hour-aligned UTC instant as the CLI takes it: ``2026-11-20T13:00:00Z``.

    Raises:
        ValueError: see :func:`parse_hour`. Raised while rendering, so the task fails before
            any job starts.
    """
    return parse_hour(value).strftime("%Y-%m-%dT%H:00:00Z")


def spark_run_template(
    job: str, *, start: str = _DATA_INTERVAL[0], end: str = _DATA_INTERVAL[1], extra: str = ""
) -> str:
    """The Jinja template of ``fleetlens spark run JOB --start … --end …``.

    Args:
        job: A job of ``fleetlens spark jobs``.
        start: Jinja expression of the interval start (default: the run's data interval).
        end: Jinja expression of the interval end (exclusive).
        extra: Further arguments, appended as they are (may hold Jinja).
    """
    command = (
        f'"{_EXECUTABLE}" spark run {job}'
        f" --start {{{{ {start} | iso_z }}}} --end {{{{ {end} | iso_z }}}}"
    )
    return f"{command} {extra}".rstrip()


def capacity_report_template(days: int = CAPACITY_REPORT_DAYS) -> str:
    """The Jinja template of ``fleetlens report capacity`` over the ``days`` before the
    run's data interval end (into ``report.out_dir``, a folder per end date)."""
    end = _DATA_INTERVAL[1]
    return (
        f'"{_EXECUTABLE}" report capacity'
        f" --start {{{{ {end} | days_before({days}) | iso_z }}}} --end {{{{ {end} | iso_z }}}}"
    )


def days_before(value: datetime | str, days: int) -> datetime:
    """``days`` before an hour-aligned instant (a Jinja filter of the DAGs)."""
    # A plain datetime: pendulum's loses its zone in this subtraction.
    moment = datetime.fromtimestamp(parse_hour(value).timestamp(), UTC)
    return moment - timedelta(days=days)


def jinja_macros() -> dict[str, Any]:
    """``user_defined_macros`` for the DAGs that use :func:`spark_run_template`."""
    return {"fleetlens_executable": default_executable}


def jinja_filters() -> dict[str, Any]:
    """``user_defined_filters`` for the DAGs that use :func:`spark_run_template`."""
    return {"iso_z": iso_z, "days_before": days_before}
