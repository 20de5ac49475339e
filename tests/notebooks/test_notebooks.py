"""Every notebook runs headless (papermill, through ``fleetlens notebooks run`` as ``make
notebooks`` does) against a simulated lake and the test session's broker, without errors,
with figures, and with an HTML copy."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pytest
from kafka import OffsetAndMetadata, TopicPartition

from fleetlens.config import Settings
from fleetlens.kafka.clients import make_consumer, make_producer, wait_acknowledged
from fleetlens.kafka.dlq import DeadLetterWriter
from fleetlens.lake.paths import Lake
from fleetlens.simulator.fleet import Fleet, FleetSpec
from fleetlens.simulator.workbench import WorkbenchShape, write_workbench_lake
from fleetlens.workbench import NOTEBOOKS, NOTEBOOKS_DIR, figures_in

FLEETLENS = Path(sys.executable).with_name("fleetlens")
SHAPE = WorkbenchShape(days=35, hourly_days=3, minute_hours=8, landing_hours=1)
PRODUCED, COMMITTED = 40, 15


@pytest.fixture
def workbench(settings: Settings) -> Settings:
    """The test's lake simulated; records on its metrics topic, of which the archiver group
    has committed some; dead letters with a reason."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    fleet = Fleet(FleetSpec(servers=36, seed=5, anchor_s=int(today.timestamp())))
    write_workbench_lake(Lake(settings.lake), fleet, end=datetime.now(UTC), shape=SHAPE)
    producer = make_producer(settings.kafka)
    topic = settings.kafka.topics.metrics.name
    sent = [producer.send(topic, value=b"{}", partition=0) for _ in range(PRODUCED)]
    dlq = DeadLetterWriter(producer, topic=settings.kafka.topics.dlq.name, stage="archive")
    for offset in range(3):
        dlq.send(value=b"{", key=None, reason="invalid JSON: unexpected end", source_topic=topic,
                 partition=0, offset=offset)  # fmt: skip
    wait_acknowledged(producer, sent + dlq.take_pending(), timeout_s=30)
    producer.close()
    consumer = make_consumer(settings.kafka, group_id=settings.archive.group_id)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(COMMITTED, "", -1)})
    consumer.close()
    return settings


def test_every_notebook_runs_and_draws(workbench: Settings, tmp_path: Path) -> None:
    out = tmp_path / "notebooks"
    done = subprocess.run(
        [str(FLEETLENS), "notebooks", "run", "--out", str(out), "-p", "days=14", "-p",
         "hours=12", "-p", "detail_hours=4"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    for name in NOTEBOOKS:
        executed = nbformat.read(out / f"{name}.ipynb", as_version=4)
        errors = [
            o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"
        ]
        assert not errors, (name, errors)
        assert figures_in(executed) >= 1, name
        assert executed.metadata.papermill["parameters"], name  # the parameters were injected
        html = (out / f"{name}.html").read_text(encoding="utf-8")
        assert "<img" in html and "data:image/png;base64" in html, name

    health = nbformat.read(out / "04_pipeline_health.ipynb", as_version=4)
    printed = json.dumps([c.get("outputs", []) for c in health.cells])
    assert "not reachable" not in printed
    # The archiver group's lag on partition 0, and the dead letters by reason.
    assert workbench.archive.group_id in printed
    assert f"{PRODUCED - COMMITTED}" in printed
    assert "invalid JSON" in printed


def test_notebooks_are_committed_without_outputs() -> None:
    for name in NOTEBOOKS:
        notebook = nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
        nbformat.validate(notebook)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), name
        assert "parameters" in code[0].metadata.get("tags", []), name
