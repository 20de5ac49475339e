"""
### FleetLens backfill

Manual only. Runs ``fleetlens spark run backfill`` over ``[start, end)``: compact, rollups,
quality and watermark, day by day, then the daily rollups. Each chunk commits on its own and
unchanged partitions are skipped, so triggering again after a failure resumes; ``force``
recomputes every partition (reprocessing after a fix).

Trigger with, e.g.:

```
airflow dags trigger fleetlens_backfill \\
  --conf '{"start": "2026-11-18T00:00:00Z", "end": "2026-11-20T00:00:00Z"}'
```
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param

from fleetlens.orchestration import BACKFILL_JOB, jinja_filters, jinja_macros, spark_run_template

#: An hour-aligned UTC instant, as `fleetlens spark run` takes it.
_HOUR_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:00:00(Z|\+00:00)$"

with DAG(
    dag_id="fleetlens_backfill",
    doc_md=__doc__,
    schedule=None,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    # Two backfills over overlapping ranges would replace the same partitions concurrently.
    max_active_runs=1,
    # Chunks commit as they go: a run cut off by the timeout resumes when triggered again.
    dagrun_timeout=timedelta(hours=12),
    default_args={
        "owner": "fleetlens",
        # Resumable: a retry redoes only the chunk that failed.
        "retries": 1,
        "retry_delay": timedelta(minutes=5),
    },
    params={
        "start": Param(
            type="string",
            pattern=_HOUR_PATTERN,
            description="Start, hour-aligned UTC, e.g. 2026-11-18T00:00:00Z",
        ),
        "end": Param(
            type="string",
            pattern=_HOUR_PATTERN,
            description="End (exclusive), hour-aligned UTC, e.g. 2026-11-20T00:00:00Z",
        ),
        "force": Param(
            False, type="boolean", description="Recompute every partition, changed or not."
        ),
    },
    user_defined_macros=jinja_macros(),
    user_defined_filters=jinja_filters(),
    tags=["fleetlens", "batch", "backfill"],
) as dag:
    BashOperator(
        task_id=BACKFILL_JOB,
        bash_command=spark_run_template(
            BACKFILL_JOB,
            start="params.start",
            end="params.end",
            extra="{{ '--force' if params.force else '' }}",
        ),
    )
