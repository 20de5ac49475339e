"""
### FleetLens daily batch

For each UTC day ``[data_interval_start, data_interval_end)``: ``rollup_1d`` from the day's
hourly rollups, the anomaly ``baseline``, ``retention`` (drops partitions past each table's
retention) and ``maintain`` (compaction, checkpoints, vacuum). One ``fleetlens spark run JOB``
per task (see ``fleetlens/orchestration.py``). After ``rollup_1d``, beside that chain,
``capacity_report`` writes the capacity-planning report of the last 30 days
(``fleetlens report capacity``, into ``report.out_dir``).

The run starts at midnight, possibly alongside the hourly run of the day's last hour: a
``rollup_1d`` that misses it is recomputed by the next day's run (the jobs recompute
partitions whose sources changed, ``batch.late_lookback_hours`` back).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, CronDataIntervalTimetable, chain

from fleetlens.orchestration import (
    CAPACITY_REPORT_TASK,
    DAILY_JOBS,
    capacity_report_template,
    jinja_filters,
    jinja_macros,
    spark_run_template,
)

with DAG(
    dag_id="fleetlens_daily",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    # A missed day is folded in by the next run's lookback; older gaps: fleetlens_backfill.
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args={
        "owner": "fleetlens",
        "retries": 2,
        "retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(hours=2),
    },
    user_defined_macros=jinja_macros(),
    user_defined_filters=jinja_filters(),
    tags=["fleetlens", "batch", "daily"],
) as dag:
    # In sequence: each job is a Spark application of its own, and retention must delete
    # partitions before maintain vacuums their files.
    jobs = [BashOperator(task_id=job, bash_command=spark_run_template(job)) for job in DAILY_JOBS]
    chain(*jobs)
    # Reads rollup_1d only: it need not wait for the baseline, retention or maintenance.
    jobs[0] >> BashOperator(task_id=CAPACITY_REPORT_TASK, bash_command=capacity_report_template())
