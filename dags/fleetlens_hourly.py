"""
### FleetLens hourly batch

For each hour ``[data_interval_start, data_interval_end)``: compact the landing zone into
``raw_points``, roll it up to ``rollup_1m`` and ``rollup_1h``, check all three with the quality
suites, then move the batch watermark. Each task runs one ``fleetlens spark run JOB`` (see
``fleetlens/orchestration.py``); the jobs live behind the CLI, this file only wires them.

Missed hours (Airflow down, DAG paused) are not caught up here: run ``fleetlens_backfill`` over
the gap. Until then the watermark stays before the gap, and the serving layer reads the speed
layer's data there.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.sensors.time_delta import TimeDeltaSensor
from airflow.sdk import DAG, CronDataIntervalTimetable, chain

from fleetlens.orchestration import HOURLY_JOBS, jinja_filters, jinja_macros, spark_run_template

with DAG(
    dag_id="fleetlens_hourly",
    doc_md=__doc__,
    # Data intervals of one hour (an Airflow 3 cron string would give zero-length intervals):
    # the run for [13:00, 14:00) starts after 14:00.
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    # No catch-up: after an outage one run per missed hour would each start Spark five times;
    # fleetlens_backfill covers a gap in day-sized chunks instead (and compact already folds
    # in late files of the last batch.late_lookback_hours).
    catchup=False,
    # One run at a time: the jobs replace partitions of shared tables and the watermark only
    # moves forward without gaps, so hours are processed in order.
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=55),
    default_args={
        "owner": "fleetlens",
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "execution_timeout": timedelta(minutes=45),
    },
    user_defined_macros=jinja_macros(),
    user_defined_filters=jinja_filters(),
    tags=["fleetlens", "batch", "hourly"],
) as dag:
    # The archiver flushes every archive.flush_interval_s (30 s by default): give the hour's
    # last files a few minutes to land. Rescheduling frees the worker slot while waiting.
    wait = TimeDeltaSensor(
        task_id="wait_for_landing",
        delta=timedelta(minutes=5),
        mode="reschedule",
        poke_interval=60,
        retries=0,
    )
    jobs = [BashOperator(task_id=job, bash_command=spark_run_template(job)) for job in HOURLY_JOBS]
    # A failed expectation is a fact about the data: running the suite again cannot change
    # it. The job's output names what failed.
    dag.get_task("quality").retries = 0
    chain(wait, *jobs)
