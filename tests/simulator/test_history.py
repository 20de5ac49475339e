"""Unit tests of the simulated history writer (fleetlens.simulator.history)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from ulid import ULID

from fleetlens.config import LakeSettings, load_settings
from fleetlens.contract import Validator
from fleetlens.lake.landing import LANDING_SCHEMA
from fleetlens.lake.paths import Lake
from fleetlens.simulator.fleet import METRICS, Fleet, FleetSpec
from fleetlens.simulator.history import history_hour_table, write_history
from fleetlens.simulator.live import build_payloads

HOUR = 3600
ANCHOR = 1_793_491_200  # 2026-11-01T00:00:00Z
NOON = ANCHOR + 12 * HOUR


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet(FleetSpec(servers=30, seed=23, anchor_s=ANCHOR, silences_per_day=3))


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(LakeSettings(root=str(tmp_path / "lake")))


def landing_files(lake: Lake) -> list[str]:
    base = Path(lake.path(Lake.LANDING_METRICS))
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


# -- one hour ----------------------------------------------------------------------------------


def test_hour_table_has_the_landing_schema(fleet: Fleet):
    table = history_hour_table(fleet, NOON, interval_s=60)

    assert table.schema.equals(LANDING_SCHEMA)
    for column in ("event_id", "server_id", "ts", "metrics", "tags", "ingest_ts"):
        assert table[column].null_count == 0
    assert table["kafka_partition"].null_count == table.num_rows
    assert table["kafka_offset"].null_count == table.num_rows


def test_hour_table_rows_are_the_reporting_samples(fleet: Fleet):
    slots = np.arange(NOON, NOON + HOUR, 60, dtype=np.int64)

    table = history_hour_table(fleet, NOON, interval_s=60)

    reporting = fleet.reporting(slots)
    assert not reporting.all()  # some servers are silent in this hour
    assert table.num_rows == reporting.sum()
    ts = pc.cast(table["ts"], pa.int64()).to_numpy()
    assert ts.min() >= NOON * 1000
    assert ts.max() < (NOON + HOUR) * 1000
    ingest = pc.cast(table["ingest_ts"], pa.int64()).to_numpy()
    assert (ingest > ts).all()
    assert len(set(table["event_id"].to_pylist())) == table.num_rows
    for event_id, millis in zip(table["event_id"].to_pylist(), ts.tolist(), strict=True):
        assert ULID.from_str(event_id).milliseconds == millis


def test_hour_table_maps(fleet: Fleet):
    table = history_hour_table(fleet, NOON, interval_s=300)

    rows = table.to_pylist()
    by_server = {f"srv-{i:05d}": tags for i, tags in enumerate(fleet.tags)}
    for row in rows:
        assert [name for name, _ in row["metrics"]] == list(METRICS)
        assert dict(row["tags"]) == by_server[row["server_id"]]


def test_history_matches_the_live_payloads(fleet: Fleet):
    slot = NOON + 20 * 60
    table = history_hour_table(fleet, NOON, interval_s=10)
    rows = {row["event_id"]: row for row in table.to_pylist()}

    payloads = build_payloads(fleet, slot, 10)

    assert payloads
    for payload in payloads:
        row = rows[payload["event_id"]]
        assert row["server_id"] == payload["server_id"]
        assert int(row["ts"].timestamp() * 1000) == payload["ts"]
        assert dict(row["tags"]) == payload["tags"]
        for name, value in row["metrics"]:
            assert value == pytest.approx(payload["metrics"][name], abs=5e-4)


def test_history_rows_pass_the_contract(fleet: Fleet):
    validator = Validator(load_settings("base").contract)
    table = history_hour_table(fleet, NOON, interval_s=120)

    for row in table.to_pylist():
        payload = {
            "schema_version": 1,
            "event_id": row["event_id"],
            "server_id": row["server_id"],
            "ts": row["ts"].isoformat(),
            "metrics": dict(row["metrics"]),
            "tags": dict(row["tags"]),
        }
        event = validator.convert(payload, now_ms=(NOON + HOUR) * 1000)
        assert event.event_id == row["event_id"]


def test_hour_table_is_deterministic(fleet: Fleet):
    again = Fleet(FleetSpec(servers=30, seed=23, anchor_s=ANCHOR, silences_per_day=3))

    first = history_hour_table(fleet, NOON, interval_s=60, duplicate_fraction=0.2)
    second = history_hour_table(again, NOON, interval_s=60, duplicate_fraction=0.2)

    assert first.equals(second)


def test_duplicates_repeat_event_ids(fleet: Fleet):
    plain = history_hour_table(fleet, NOON, interval_s=10)
    table = history_hour_table(fleet, NOON, interval_s=10, duplicate_fraction=0.1)

    counts = Counter(table["event_id"].to_pylist())
    duplicated = [event_id for event_id, n in counts.items() if n > 1]
    assert set(counts) == set(plain["event_id"].to_pylist())
    assert max(counts.values()) == 2
    assert len(duplicated) / len(counts) == pytest.approx(0.1, abs=0.03)
    assert table.num_rows == plain.num_rows + len(duplicated)
    # A copy is the same payload, ingested later (as a retry would be).
    rows: dict[str, list[dict[str, object]]] = {}
    for row in table.to_pylist():
        rows.setdefault(row["event_id"], []).append(row)
    for event_id in duplicated:
        first, second = rows[event_id]
        assert {k: v for k, v in first.items() if k != "ingest_ts"} == {
            k: v for k, v in second.items() if k != "ingest_ts"
        }
        assert first["ingest_ts"] != second["ingest_ts"]


def test_no_duplicates_by_default(fleet: Fleet):
    table = history_hour_table(fleet, NOON, interval_s=10)

    assert pc.count_distinct(table["event_id"]).as_py() == table.num_rows


# -- write_history -----------------------------------------------------------------------------


def test_write_history_hive_layout_one_file_per_hour(fleet: Fleet, lake: Lake):
    start = ANCHOR - 2 * HOUR  # 2026-10-31T22:00Z, across midnight
    done: list[int] = []

    stats = write_history(
        fleet, lake, start_s=start, end_s=start + 4 * HOUR, interval_s=60, progress=done.append
    )

    name = "part-history-s23-n30.parquet"
    assert landing_files(lake) == [
        f"date=2026-10-31/hour=22/{name}",
        f"date=2026-10-31/hour=23/{name}",
        f"date=2026-11-01/hour=00/{name}",
        f"date=2026-11-01/hour=01/{name}",
    ]
    assert stats.files == 4
    assert done == [1, 1, 1, 1]
    base = Path(lake.path(Lake.LANDING_METRICS))
    total = 0
    for relative in landing_files(lake):
        path = base / relative
        schema = pq.read_schema(path)
        assert schema.equals(LANDING_SCHEMA)
        table = pq.read_table(path, schema=LANDING_SCHEMA)
        total += table.num_rows
        # Every row lies in the hour its folder names.
        hours = pc.strftime(table["ts"], format="date=%Y-%m-%d/hour=%H").to_pylist()
        assert set(hours) == {str(Path(relative).parent)}
    assert stats.payloads == total
    assert stats.points == total * len(METRICS)


def test_write_history_rounds_outwards_to_whole_hours(fleet: Fleet, lake: Lake):
    stats = write_history(
        fleet, lake, start_s=ANCHOR + 1_800, end_s=ANCHOR + HOUR + 1, interval_s=300
    )

    assert [str(Path(f).parent) for f in landing_files(lake)] == [
        "date=2026-11-01/hour=00",
        "date=2026-11-01/hour=01",
    ]
    assert stats.files == 2


def test_rerun_replaces_rather_than_adds(fleet: Fleet, lake: Lake):
    kwargs = {"start_s": ANCHOR, "end_s": ANCHOR + 2 * HOUR, "interval_s": 60}
    first = write_history(fleet, lake, **kwargs)
    files = landing_files(lake)
    base = Path(lake.path(Lake.LANDING_METRICS))
    before = [pq.read_table(base / f) for f in files]

    second = write_history(fleet, lake, **kwargs)

    assert landing_files(lake) == files
    after = [pq.read_table(base / f) for f in files]
    assert all(a.equals(b) for a, b in zip(before, after, strict=True))
    assert first == second
    dataset = pq.read_table(base, schema=LANDING_SCHEMA)
    assert dataset.num_rows == first.payloads


def test_write_history_into_another_landing_dir(fleet: Fleet, lake: Lake, tmp_path: Path):
    other = tmp_path / "elsewhere"

    write_history(
        fleet, lake, start_s=NOON, end_s=NOON + HOUR, interval_s=600, landing_dir=str(other)
    )

    assert landing_files(lake) == []
    written = sorted(str(p.relative_to(other)) for p in other.rglob("*.parquet"))
    assert written == ["date=2026-11-01/hour=12/part-history-s23-n30.parquet"]


def test_write_history_with_duplicates_writes_the_copies(fleet: Fleet, lake: Lake):
    stats = write_history(
        fleet, lake, start_s=NOON, end_s=NOON + HOUR, interval_s=10, duplicate_fraction=0.05
    )

    table = pq.read_table(Path(lake.path(Lake.LANDING_METRICS)), schema=LANDING_SCHEMA)
    distinct = pc.count_distinct(table["event_id"]).as_py()
    assert table.num_rows == stats.payloads
    assert distinct < table.num_rows


@pytest.mark.parametrize("interval_s", [7, 7_200])
def test_interval_must_divide_an_hour(fleet: Fleet, lake: Lake, interval_s: int):
    with pytest.raises(ValueError, match="divide an hour"):
        write_history(fleet, lake, start_s=NOON, end_s=NOON + HOUR, interval_s=interval_s)
    assert landing_files(lake) == []


def test_empty_range_writes_nothing(fleet: Fleet, lake: Lake):
    stats = write_history(fleet, lake, start_s=NOON, end_s=NOON, interval_s=60)

    assert (stats.files, stats.payloads, stats.points) == (0, 0, 0)
    assert landing_files(lake) == []


def test_an_hour_without_reports_is_an_empty_table(monkeypatch: pytest.MonkeyPatch):
    fleet = Fleet(FleetSpec(servers=4, seed=1, anchor_s=ANCHOR))
    monkeypatch.setattr(fleet, "reporting", lambda slots: np.zeros((len(slots), 4), dtype=bool))

    table = history_hour_table(fleet, NOON, interval_s=60, duplicate_fraction=0.5)

    assert table.num_rows == 0
    assert table.schema.equals(LANDING_SCHEMA)
