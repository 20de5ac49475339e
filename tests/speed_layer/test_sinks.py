"""speed_1m's writes against a real Delta table: appended when no row can be there yet,
merged on the window's key when a restarted layer may be writing a window again."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from speed_rows import T0, ordered, speed_rows

from fleetlens.config import LakeSettings
from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import SPEED_1M
from speed_layer.sinks import SpeedTable

#: Rows of one minute with the default ten servers.
MINUTE = 60


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(LakeSettings(root=str(tmp_path / "lake")))


def _operations(lake: Lake) -> list[str]:
    """The table's write operations, oldest first."""
    history = delta.open_table(lake, SPEED_1M).history()
    return [c["operation"] for c in reversed(history) if c["operation"] != "CREATE TABLE"]


def test_a_new_table_is_only_appended_to(lake: Lake) -> None:
    table = SpeedTable(lake)
    assert table.written_through is None
    for minute in range(3):
        table.write(speed_rows(MINUTE, first=minute * MINUTE))
    assert _operations(lake) == ["WRITE"] * 3
    assert ordered(delta.read_table(lake, SPEED_1M)).num_rows == 3 * MINUTE


def test_after_a_restart_windows_written_before_are_merged_not_repeated(lake: Lake) -> None:
    # Before the crash: minutes 0-2 written, the checkpoint had minute 0 only.
    before = SpeedTable(lake)
    before.write(speed_rows(3 * MINUTE))
    restarted = SpeedTable(lake)
    assert restarted.written_through == T0 + timedelta(minutes=2)
    # The replay closes minutes 1-2 again, in two batches, the second reaching minute 3.
    restarted.write(speed_rows(MINUTE, first=MINUTE))
    restarted.write(speed_rows(2 * MINUTE, first=2 * MINUTE))
    restarted.write(speed_rows(MINUTE, first=4 * MINUTE))
    assert _operations(lake) == ["WRITE", "MERGE", "MERGE", "WRITE"]
    content = ordered(delta.read_table(lake, SPEED_1M))
    assert content.num_rows == 5 * MINUTE
    assert content.equals(ordered(speed_rows(5 * MINUTE)))


def test_the_latest_window_is_read_from_the_data_when_the_log_has_no_statistics(
    lake: Lake,
) -> None:
    rows = speed_rows(2 * MINUTE)
    write_deltalake(
        lake.table_uri(SPEED_1M),
        rows,
        configuration={"delta.dataSkippingNumIndexedCols": "0"},
    )
    table = delta.open_table(lake, SPEED_1M)
    actions = pa.table(table.get_add_actions(flatten=True))
    assert "max.window_start" not in actions.schema.names
    assert delta.column_max(table, "window_start") == T0 + timedelta(minutes=1)
