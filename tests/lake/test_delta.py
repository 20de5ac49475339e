"""fleetlens.lake.delta against real Delta tables in a scratch lake (no mocks)."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from speed_rows import T0, ordered, speed_rows

from fleetlens.config import LakeSettings
from fleetlens.lake.delta import (
    DEFAULT_PROPERTIES,
    CommitFailedError,
    TableMismatchError,
    _rows_removed_by_last_commit,
    delete_where,
    ensure_table,
    maintain,
    open_table,
    read_table,
    table_exists,
    upsert,
)
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import SPEED_1M_SCHEMA, WINDOW_KEY

KEY = list(WINDOW_KEY)


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(LakeSettings(root=str(tmp_path / "lake")))


@pytest.fixture
def speed(lake: Lake) -> str:
    ensure_table(lake, "speed_1m", schema=SPEED_1M_SCHEMA, description="speed layer")
    return "speed_1m"


def test_ensure_table_creates_a_plain_table_once(lake: Lake) -> None:
    assert not table_exists(lake, "speed_1m")
    table = ensure_table(lake, "speed_1m", schema=SPEED_1M_SCHEMA, description="1-minute")
    assert table_exists(lake, "speed_1m")
    assert table.table_uri.rstrip("/").endswith("/lake/tables/speed_1m")
    assert pa.schema(table.schema().to_arrow()) == SPEED_1M_SCHEMA
    assert table.metadata().description == "1-minute"
    assert table.metadata().configuration == dict(DEFAULT_PROPERTIES)
    # Reader 1 / writer 2 without table features: what delta-rs writes for this schema and
    # the lowest any current engine writes (writer 2 brings NOT NULL enforcement and
    # appendOnly); readable by every Spark, Trino, DuckDB and polars version. Reader 3 /
    # writer 7 (table features: deletion vectors, column mapping...) is what we avoid.
    protocol = table.protocol()
    assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2)
    assert not protocol.reader_features
    assert not protocol.writer_features
    # A second call opens the table: no new commit.
    again = ensure_table(lake, "speed_1m", schema=SPEED_1M_SCHEMA)
    assert again.version() == table.version() == 0


def test_ensure_table_names_the_differing_columns(lake: Lake, speed: str) -> None:
    other = (
        SPEED_1M_SCHEMA.remove(SPEED_1M_SCHEMA.get_field_index("emitted_at"))
        .set(SPEED_1M_SCHEMA.get_field_index("count"), pa.field("count", pa.float64(), False))
        .set(SPEED_1M_SCHEMA.get_field_index("tenant"), pa.field("tenant", pa.string(), False))
        .append(pa.field("extra", pa.int32()))
    )
    with pytest.raises(TableMismatchError) as info:
        ensure_table(lake, speed, schema=other)
    message = str(info.value)
    assert "missing columns: extra" in message
    assert "unexpected columns: emitted_at" in message
    assert "count (table: long NOT NULL, expected: double NOT NULL)" in message
    assert "tenant (table: string, expected: string NOT NULL)" in message
    assert "server_id" not in message

    with pytest.raises(TableMismatchError, match=r"partitioned by \[\], expected \['metric'\]"):
        ensure_table(lake, speed, schema=SPEED_1M_SCHEMA, partition_by=["metric"])


def test_ensure_table_refuses_tz_naive_timestamps(lake: Lake) -> None:
    schema = pa.schema([pa.field("ts", pa.timestamp("us"))])
    with pytest.raises(ValueError, match="timestampNtz"):
        ensure_table(lake, "naive", schema=schema)
    assert not table_exists(lake, "naive")


def test_upsert_twice_is_idempotent(lake: Lake, speed: str) -> None:
    rows = speed_rows(300)
    first = upsert(lake, speed, rows, key=KEY, prune_column="window_start")
    assert first["num_target_rows_inserted"] == 300
    content = ordered(read_table(lake, speed))
    assert content.equals(ordered(rows))

    again = upsert(lake, speed, rows, key=KEY, prune_column="window_start")
    assert again["num_target_rows_inserted"] == 0
    assert again["num_target_rows_updated"] == 300
    after = read_table(lake, speed)
    assert after.num_rows == 300
    assert ordered(after).equals(content)


def test_upsert_updates_existing_keys_and_inserts_new_ones(lake: Lake, speed: str) -> None:
    upsert(lake, speed, speed_rows(120), key=KEY)
    # Rows 60..179: 60 existing keys with new values, 60 new keys (in the next minutes).
    metrics = upsert(lake, speed, speed_rows(120, first=60, value=1000.0), key=KEY)
    assert metrics["num_target_rows_updated"] == 60
    assert metrics["num_target_rows_inserted"] == 60

    expected = pa.concat_tables([speed_rows(60), speed_rows(120, first=60, value=1000.0)])
    assert ordered(read_table(lake, speed)).equals(ordered(expected))


def test_upsert_keeps_the_last_row_of_a_key_within_a_batch(lake: Lake, speed: str) -> None:
    batch = pa.concat_tables([speed_rows(30), speed_rows(10, value=5.0)])
    upsert(lake, speed, batch, key=KEY)
    expected = pa.concat_tables([speed_rows(10, value=5.0), speed_rows(20, first=10)])
    assert ordered(read_table(lake, speed)).equals(ordered(expected))


def test_upsert_with_prune_column_gives_the_same_table(lake: Lake) -> None:
    for name in ("plain", "pruned"):
        ensure_table(lake, name, schema=SPEED_1M_SCHEMA)
    # Minutes 0-9 in batches of two minutes, then a replay spanning minutes 3-6, late
    # updates of minute 1 alone, and a batch mixing an old minute with new ones.
    batches = [speed_rows(120, first=i * 120) for i in range(5)]
    batches += [
        speed_rows(240, first=180, value=7.0),
        speed_rows(60, first=60, value=3.0),
        pa.concat_tables([speed_rows(30, first=0, value=9.0), speed_rows(90, first=600)]),
    ]
    for batch in batches:
        plain = upsert(lake, "plain", batch, key=KEY)
        pruned = upsert(lake, "pruned", batch, key=KEY, prune_column="window_start")
        for metric in ("num_target_rows_inserted", "num_target_rows_updated"):
            assert plain[metric] == pruned[metric]
    plain_rows, pruned_rows = read_table(lake, "plain"), read_table(lake, "pruned")
    assert pruned_rows.num_rows == 690
    assert ordered(pruned_rows).equals(ordered(plain_rows))
    assert (
        pc.count_distinct(
            pc.binary_join_element_wise(
                pruned_rows["server_id"],
                pruned_rows["metric"],
                pc.cast(pruned_rows["window_start"], pa.string()),
                "|",
            )
        ).as_py()
        == 690
    )


def test_upsert_prune_column_must_be_a_key_column(lake: Lake, speed: str) -> None:
    with pytest.raises(ValueError, match="prune_column 'emitted_at'"):
        upsert(lake, speed, speed_rows(5), key=KEY, prune_column="emitted_at")


def test_upsert_of_nothing_commits_nothing(lake: Lake, speed: str) -> None:
    assert upsert(lake, speed, speed_rows(0), key=KEY, prune_column="window_start") == {}
    assert open_table(lake, speed).version() == 0


def test_upsert_checks_the_columns(lake: Lake, speed: str) -> None:
    rows = speed_rows(5).drop_columns(["p99"]).append_column("bogus", pa.array([1] * 5))
    with pytest.raises(TableMismatchError, match=r"missing columns \['p99'\].*\['bogus'\]"):
        upsert(lake, speed, rows, key=KEY)
    # Same columns in another order, with other (castable) types: accepted.
    shuffled = speed_rows(5).select(list(reversed(SPEED_1M_SCHEMA.names)))
    shuffled = shuffled.set_column(
        shuffled.schema.get_field_index("count"), "count", pc.cast(shuffled["count"], pa.int32())
    )
    upsert(lake, speed, shuffled, key=KEY)
    assert ordered(read_table(lake, speed)).equals(ordered(speed_rows(5)))


def test_concurrent_upserts_never_duplicate(lake: Lake, speed: str) -> None:
    rows = speed_rows(120)
    barrier = threading.Barrier(3)
    outcomes: list[str] = []

    def write() -> None:
        barrier.wait()
        try:
            upsert(lake, speed, rows, key=KEY, prune_column="window_start")
            outcomes.append("ok")
        except CommitFailedError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == ["ok"] * 3  # conflicting merges are run again by upsert itself
    assert ordered(read_table(lake, speed)).equals(ordered(rows))


def test_delete_where_returns_the_rows_deleted(lake: Lake, speed: str) -> None:
    for minute in range(4):  # one file per minute: 60 rows each
        upsert(lake, speed, speed_rows(60, first=minute * 60), key=KEY)
    cutoff = (T0 + timedelta(minutes=2)).isoformat()
    assert delete_where(lake, speed, f"window_start < '{cutoff}'") == 120
    assert _rows_removed_by_last_commit(lake, speed, open_table(lake, speed).version()) == 120
    assert delete_where(lake, speed, "metric = 'cpu'") == 20
    remaining = read_table(lake, speed)
    expected = speed_rows(120, first=120)
    expected = expected.filter(pc.not_equal(expected["metric"], "cpu"))
    assert ordered(remaining).equals(ordered(expected))
    assert delete_where(lake, speed, "metric = 'nothing'") == 0


def test_maintain_compacts_and_keeps_the_content(lake: Lake, speed: str) -> None:
    for minute in range(8):
        upsert(lake, speed, speed_rows(60, first=minute * 60), key=KEY)
    before = ordered(read_table(lake, speed))
    assert len(open_table(lake, speed).file_uris()) == 8

    report = maintain(lake, speed, retention_hours=24)
    assert report.compaction["numFilesRemoved"] == 8
    assert report.compaction["numFilesAdded"] == 1
    table = open_table(lake, speed)
    assert len(table.file_uris()) == 1
    assert report.version == table.version()
    log = Path(lake.path("tables", speed, "_delta_log"))
    assert (log / f"{report.checkpoint_version:020d}.checkpoint.parquet").is_file()
    assert report.vacuumed_files == []  # removed files are younger than 24 h
    assert report.log_files_deleted == 0  # and so are the commits
    assert ordered(read_table(lake, speed)).equals(before)
    with pytest.raises(Exception, match="retention"):
        maintain(lake, speed, retention_hours=1)


def test_maintain_keeps_recently_removed_old_files(lake: Lake, speed: str) -> None:
    # Files written three days ago and compacted away just now: a full vacuum must go by the
    # removal time (tombstone), not by the files' age.
    for minute in range(3):
        upsert(lake, speed, speed_rows(60, first=minute * 60), key=KEY)
    three_days_ago = (datetime.now(UTC) - timedelta(days=3)).timestamp()
    old_files = sorted(Path(lake.table_uri(speed)).glob("*.parquet"))
    for path in old_files:
        os.utime(path, (three_days_ago, three_days_ago))
    report = maintain(lake, speed, retention_hours=24)
    assert report.compaction["numFilesRemoved"] == 3
    assert report.vacuumed_files == []
    assert all(path.is_file() for path in old_files)
    # So the version before compaction is still readable.
    previous = read_table(lake, speed, version=report.checkpoint_version - 1)
    assert ordered(previous).equals(ordered(speed_rows(180)))


def test_maintain_deletes_expired_log_and_files(lake: Lake) -> None:
    ensure_table(
        lake,
        "short",
        schema=SPEED_1M_SCHEMA,
        properties={
            "delta.logRetentionDuration": "interval 0 seconds",
            "delta.deletedFileRetentionDuration": "interval 0 hours",
            # No checkpoint (nor log cleanup) by the writes themselves.
            "delta.checkpointInterval": "1000",
        },
    )
    for minute in range(5):
        upsert(lake, "short", speed_rows(60, first=minute * 60), key=KEY)
    before = ordered(read_table(lake, "short"))

    report = maintain(lake, "short", retention_hours=0)
    assert report.log_files_deleted >= 6  # commits 0-5 before the checkpoint
    assert len(report.vacuumed_files) == 5
    table = open_table(lake, "short")
    assert table.version() == report.version
    assert ordered(read_table(lake, "short")).equals(before)
    assert pl.scan_delta(table.table_uri).collect().height == 300


def test_writes_create_checkpoints_at_the_configured_interval(lake: Lake) -> None:
    ensure_table(lake, "ckpt", schema=SPEED_1M_SCHEMA, properties={"delta.checkpointInterval": "4"})
    for minute in range(5):
        upsert(lake, "ckpt", speed_rows(6, first=minute * 60), key=KEY)
    log = Path(lake.path("tables", "ckpt", "_delta_log"))
    # After every 4th commit: at version 3 (commits 0-3), not yet at 7.
    assert open_table(lake, "ckpt").version() == 5
    assert sorted(p.name for p in log.glob("*.checkpoint.parquet")) == [
        f"{3:020d}.checkpoint.parquet"
    ]


def test_read_table_filters_and_columns(lake: Lake, speed: str) -> None:
    upsert(lake, speed, speed_rows(180), key=KEY)  # minutes 0-2
    # Compacted files have plain string columns, MERGE output string views (in the Arrow
    # schema embedded in the Parquet file): reads must cope with both in one table.
    maintain(lake, speed, retention_hours=24)
    upsert(lake, speed, speed_rows(60, first=180), key=KEY)  # minute 3, another file
    everything = ordered(speed_rows(240))
    minute_2 = T0 + timedelta(minutes=2)
    cpu = pc.equal(everything["metric"], "cpu")
    late = pc.greater_equal(
        everything["window_start"], pa.scalar(minute_2, everything["window_start"].type)
    )

    assert ordered(read_table(lake, speed)).equals(everything)
    assert ordered(read_table(lake, speed, filters=[("metric", "=", "cpu")])).equals(
        everything.filter(cpu)
    )
    # DNF: (cpu and minute >= 2) or server 3's mem/disk.
    dnf: list[list[tuple[str, str, Any]]] = [
        [("metric", "==", "cpu"), ("window_start", ">=", minute_2)],
        [("server_id", "=", "srv-0003"), ("metric", "in", ["mem", "disk"])],
    ]
    srv3 = pc.and_(
        pc.equal(everything["server_id"], "srv-0003"),
        pc.is_in(everything["metric"], pa.array(["mem", "disk"])),
    )
    assert ordered(read_table(lake, speed, filters=dnf)).equals(
        everything.filter(pc.or_(pc.and_(cpu, late), srv3))
    )
    sql = f"metric <> 'cpu' AND window_start < '{minute_2.isoformat()}' AND p99 IS NULL"
    got = read_table(lake, speed, columns=["server_id", "p99", "sketch"], filters=sql)
    want = everything.filter(
        pc.and_(pc.and_(pc.invert(cpu), pc.invert(late)), pc.is_null(everything["p99"]))
    )
    assert got.schema == pa.schema(
        [SPEED_1M_SCHEMA.field(c) for c in ["server_id", "p99", "sketch"]]
    )
    assert sorted(got["server_id"].to_pylist()) == sorted(want["server_id"].to_pylist())
    assert got.num_rows == want.num_rows > 0
    assert read_table(lake, speed, filters=[("metric", "=", "nothing")]).num_rows == 0
    with pytest.raises(TableMismatchError, match="bogus"):
        read_table(lake, speed, columns=["bogus"])


def test_other_engines_read_the_table(lake: Lake, speed: str) -> None:
    upsert(lake, speed, speed_rows(180), key=KEY, prune_column="window_start")
    upsert(lake, speed, speed_rows(60, first=60, value=0.5), key=KEY)
    expected = ordered(
        pa.concat_tables(
            [speed_rows(60), speed_rows(60, first=60, value=0.5), speed_rows(60, first=120)]
        )
    )
    uri = lake.table_uri(speed)

    assert ordered(DeltaTable(uri).to_pyarrow_table()).equals(expected)

    frame = pl.scan_delta(uri).collect()
    assert frame.height == 180
    assert pl.scan_delta(uri).filter(pl.col("metric") == "cpu").collect().height == 30
    assert frame["sum"].sum() == pytest.approx(pc.sum(expected["sum"]).as_py())
    assert frame.sort(KEY)["sketch"].to_list() == expected["sketch"].to_pylist()

    # DuckDB's delta extension cannot be downloaded here (no network for extensions), so
    # DuckDB scans the table's files through the pyarrow dataset delta-rs builds. Beware:
    # with pyarrow 26, a filter on a string column pushed into that dataset fails on files
    # written by MERGE (string_view in their embedded Arrow schema); delta_scan does not
    # read that schema.
    dataset = DeltaTable(uri).to_pyarrow_dataset()
    rel = duckdb.from_arrow(dataset)
    count, total, windows = rel.aggregate(
        'count(*), sum("sum"), count(DISTINCT window_start)'
    ).fetchall()[0]
    assert count == 180
    assert total == pytest.approx(pc.sum(expected["sum"]).as_py())
    assert windows == 3


def test_concurrent_writers_with_disjoint_rows_all_commit(lake: Lake, speed: str) -> None:
    """Two writers' MERGEs into the same minutes conflict; each is run again until it lands."""
    servers = {"a": 0, "b": 5}

    def writer(name: str) -> None:
        for minute in range(8):
            rows = speed_rows(30, first=minute * 60 + servers[name] * 6)
            upsert(lake, speed, rows, key=KEY, prune_column="window_start")

    threads = [threading.Thread(target=writer, args=(n,)) for n in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = pa.concat_tables(
        speed_rows(30, first=m * 60 + f * 6) for m in range(8) for f in servers.values()
    )
    assert ordered(read_table(lake, speed)).equals(ordered(expected))
