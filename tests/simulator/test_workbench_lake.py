"""`fleetlens simulate lake --if-empty`: a simulated workbench lake where there is none,
history behind live data without duplicating its windows, nothing over batch history."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from fleetlens.cli.main import app
from fleetlens.config import load_settings
from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import ROLLUP_1D, SPEED_1M


def _simulate(root: Path) -> dict[str, object]:
    result = CliRunner().invoke(
        app,
        ["simulate", "lake", "--if-empty", "--days", "9", "--servers", "4"],
        env={"FLEETLENS_LAKE__ROOT": str(root), "FLEETLENS_RUNTIME_DIR": str(root.parent / "run")},
    )
    assert result.exit_code == 0, result.output
    answer: dict[str, object] = json.loads(result.output.strip().splitlines()[-1])
    return answer


def _rows(root: Path, table: str) -> int:
    lake = Lake(load_settings("embedded", lake={"root": str(root)}, runtime_dir=root).lake)
    return pl.scan_delta(delta.open_table(lake, table)).select(pl.len()).collect().item()


def test_an_empty_lake_gets_history_and_a_live_tail_then_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    first = _simulate(root)
    assert first["rows"][ROLLUP_1D] > 0 and first["rows"][SPEED_1M] > 0  # type: ignore[index]
    daily = _rows(root, ROLLUP_1D)

    assert "skipped" in _simulate(root)
    assert _rows(root, ROLLUP_1D) == daily


def test_live_data_gets_history_behind_it_and_keeps_its_windows(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    _simulate(root)
    # A lake like the demo's: live windows, no batch tables.
    live = tmp_path / "live"
    (live / "tables").mkdir(parents=True)
    (root / "tables" / SPEED_1M).rename(live / "tables" / SPEED_1M)
    before = _rows(live, SPEED_1M)

    written = _simulate(live)

    assert SPEED_1M not in written["rows"]  # type: ignore[operator]
    assert _rows(live, SPEED_1M) == before
    assert _rows(live, ROLLUP_1D) > 0
