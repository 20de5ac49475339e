"""Integrity of the DAGs in dags/: they load, wire the expected jobs, render runnable
`fleetlens spark run` commands, set their run policies, and import cheaply.

In the spirit of astronomer's `dagintegritytestdefault.py`, without Airflow's database.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG
from airflow.sdk.execution_time.context import VariableAccessor
from airflow.serialization.encoders import coerce_to_core_timetable

from fleetlens.orchestration import (
    BACKFILL_JOB,
    CAPACITY_REPORT_TASK,
    DAILY_JOBS,
    HOURLY_JOBS,
    iso_z,
)

REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "dags"
VENV_BIN = REPO / ".venv" / "bin"

EXPECTED = {
    "fleetlens_hourly": HOURLY_JOBS,
    "fleetlens_daily": DAILY_JOBS,
    "fleetlens_backfill": (BACKFILL_JOB,),
}
SAMPLE_RUN_AFTER = pendulum.datetime(2026, 11, 21, 0, 30, tz="UTC")
BACKFILL_PARAMS = {"start": "2026-11-18T00:00:00Z", "end": "2026-11-20T00:00:00Z", "force": True}


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS_FOLDER))


@pytest.fixture(scope="module")
def cli_jobs() -> tuple[str, ...]:
    """The jobs `fleetlens spark run` takes, as the CLI lists them."""
    listed = subprocess.run(
        [str(VENV_BIN / "fleetlens"), "spark", "jobs"], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    return tuple(listed.stdout.split())


def rendered_commands(dag: DAG) -> dict[str, list[str]]:
    """Each BashOperator's command rendered for a sample run, split into arguments."""
    interval = coerce_to_core_timetable(dag.timetable).infer_manual_data_interval(
        run_after=SAMPLE_RUN_AFTER
    )
    context: dict[str, Any] = {
        "data_interval_start": interval.start,
        "data_interval_end": interval.end,
        "params": BACKFILL_PARAMS,  # only the backfill has params
        "var": {"value": VariableAccessor(False), "json": VariableAccessor(True)},
    }
    return {
        task.task_id: shlex.split(
            task.render_template(task.bash_command, context, jinja_env=dag.get_template_env())
        )
        for task in dag.tasks
        if isinstance(task, BashOperator)
    }


def test_no_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}


#: Tasks beside the chains of Spark jobs: task -> the task it runs after.
REPORTS = {"fleetlens_daily": {CAPACITY_REPORT_TASK: "rollup_1d"}}


def test_expected_dags_and_tasks(dagbag: DagBag) -> None:
    assert set(dagbag.dag_ids) == set(EXPECTED)
    for dag_id, jobs in EXPECTED.items():
        dag = dagbag.dags[dag_id]
        reports = REPORTS.get(dag_id, {})
        for task_id, after in reports.items():
            assert dag.get_task(task_id).upstream_task_ids == {after}, task_id
        bash = [
            task
            for task in dag.topological_sort()
            if isinstance(task, BashOperator) and task.task_id not in reports
        ]
        assert tuple(task.task_id for task in bash) == jobs, dag_id
        # A chain: each job waits for the one before it.
        for before, after in itertools.pairwise(bash):
            assert before.task_id in after.upstream_task_ids


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_commands_render_to_cli_jobs(
    dagbag: DagBag, cli_jobs: tuple[str, ...], dag_id: str
) -> None:
    commands = rendered_commands(dagbag.dags[dag_id])

    assert commands, dag_id
    for task_id, argv in commands.items():
        if task_id in REPORTS.get(dag_id, {}):
            continue  # test_the_daily_report_covers_the_last_30_days
        executable, group, run, job, *options = argv
        assert executable == str(VENV_BIN / "fleetlens"), argv  # next to sys.executable
        assert (group, run, job) == ("spark", "run", task_id)
        assert job in cli_jobs, f"{job} is not a job of `fleetlens spark run` ({cli_jobs})"
        start, end = options[options.index("--start") + 1], options[options.index("--end") + 1]
        assert iso_z(start) == start and iso_z(end) == end  # hour-aligned, ...Z
        assert start < end, argv


def test_hourly_and_daily_run_their_data_interval(dagbag: DagBag) -> None:
    hourly = rendered_commands(dagbag.dags["fleetlens_hourly"])["compact"]
    daily = rendered_commands(dagbag.dags["fleetlens_daily"])["rollup_1d"]

    assert hourly[4:] == ["--start", "2026-11-20T23:00:00Z", "--end", "2026-11-21T00:00:00Z"]
    assert daily[4:] == ["--start", "2026-11-20T00:00:00Z", "--end", "2026-11-21T00:00:00Z"]


def test_the_daily_report_covers_the_last_30_days(dagbag: DagBag) -> None:
    argv = rendered_commands(dagbag.dags["fleetlens_daily"])[CAPACITY_REPORT_TASK]

    assert argv[0] == str(VENV_BIN / "fleetlens")
    assert argv[1:] == [
        "report", "capacity", "--start", "2026-10-22T00:00:00Z", "--end", "2026-11-21T00:00:00Z",
    ]  # fmt: skip
    help_text = subprocess.run(
        [argv[0], *argv[1:3], "--help"], capture_output=True, text=True, timeout=60
    )
    assert help_text.returncode == 0 and "--group-by" in help_text.stdout, help_text.stderr


def test_backfill_takes_params(dagbag: DagBag) -> None:
    dag = dagbag.dags["fleetlens_backfill"]

    argv = rendered_commands(dag)["backfill"]

    assert argv[4:] == [
        "--start", "2026-11-18T00:00:00Z", "--end", "2026-11-20T00:00:00Z", "--force",
    ]  # fmt: skip
    assert dag.schedule is None
    dag.params.get_param("start").resolve("2026-11-18T00:00:00Z")
    with pytest.raises(Exception, match="does not match"):
        dag.params.get_param("start").resolve("2026-11-18T00:30:00Z")


def test_executable_from_variable(dagbag: DagBag, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_FLEETLENS_EXECUTABLE", "/opt/fleetlens/bin/fleetlens")

    argv = rendered_commands(dagbag.dags["fleetlens_daily"])["maintain"]

    assert argv[0] == "/opt/fleetlens/bin/fleetlens"


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_run_policies(dagbag: DagBag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]

    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "fleetlens" in dag.tags and len(dag.tags) >= 2
    assert dag.doc_md
    assert isinstance(dag.dagrun_timeout, timedelta)
    assert dag.start_date is not None and dag.start_date.utcoffset() == timedelta(0)
    for task in dag.tasks:
        assert task.owner == "fleetlens", task.task_id
        assert task.retries is not None and task.retry_delay, task.task_id
        if isinstance(task, BashOperator) and task.task_id != "quality":
            assert task.retries >= 1, task.task_id


def test_parsing_is_cheap_and_touches_nothing(tmp_path: Any) -> None:
    """Parse in a fresh interpreter: < 1 s once Airflow is imported, no Spark, no Great
    Expectations, no settings, no subprocess, nothing created in the lake."""
    lake = tmp_path / "lake"
    script = f"""
import json, subprocess, sys, time
from airflow.dag_processing.dagbag import DagBag
before = set(sys.modules)
def refuse(*args, **kwargs):
    raise AssertionError(f"subprocess at import: {{args}}")
subprocess.Popen.__init__ = refuse
started = time.perf_counter()
bag = DagBag(dag_folder={str(DAGS_FOLDER)!r})
print(json.dumps({{
    "seconds": time.perf_counter() - started,
    "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
    "dags": sorted(bag.dag_ids),
    "modules": sorted(set(sys.modules) - before),
}}))
"""
    airflow_env = {k: v for k, v in os.environ.items() if k.startswith("AIRFLOW")}
    env = {**airflow_env, "FLEETLENS_LAKE__ROOT": str(lake), "PATH": str(VENV_BIN)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])

    assert found["errors"] == {}
    assert found["dags"] == sorted(EXPECTED)
    assert found["seconds"] < 1.0
    heavy = [m for m in found["modules"] if m.split(".")[0] in {"pyspark", "great_expectations"}]
    assert heavy == []
    assert "fleetlens.config" not in found["modules"]
    assert not lake.exists()
