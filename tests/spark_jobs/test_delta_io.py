"""spark_jobs.delta_io against real Delta tables written by local Spark (no mocks; faults
are injected at the commit point)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from fleetlens.config import Settings
from fleetlens.lake.delta import DEFAULT_PROPERTIES, maintain
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import BASELINE_SCHEMA, HOUR_PARTITIONS, RAW_POINTS_SCHEMA
from spark_jobs import delta_io
from spark_jobs.delta_io import (
    CommitFailedError,
    TableMismatchError,
    ensure_table,
    overwrite,
    read_table,
    replace_partitions,
    resolve_mode,
)

pytestmark = pytest.mark.spark

NAME = "raw_points"
SCHEMA = RAW_POINTS_SCHEMA
PARTS = HOUR_PARTITIONS
D1, D2 = "2026-11-20", "2026-11-21"


def points(hours: list[tuple[str, int]], *, per_hour: int = 5, tag: str = "a") -> pa.Table:
    """``per_hour`` RAW_POINTS_SCHEMA rows in each hour; ``tag`` makes event ids and values
    differ between batches."""
    rows = []
    for day, hour in hours:
        start = datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)
        for i in range(per_hour):
            ts = start + timedelta(minutes=i * 7, microseconds=123_456)
            rows.append(
                {
                    "ts": ts,
                    "server_id": f"srv-{i % 3:05d}",
                    "metric": "cpu_pct",
                    "value": float(i) + (50.0 if tag == "b" else 0.0),
                    "tenant": "acme",
                    "region": "eu-west-1",
                    "env": "prod",
                    "service": "api",
                    "cluster": None if i % 2 else "c1",
                    "event_id": f"{tag}-{day}-{hour:02d}-{i}",
                    "ingest_ts": ts + timedelta(seconds=2),
                    "date": day,
                    "hour": hour,
                }
            )
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def spec(hours: list[tuple[str, int]]) -> list[dict[str, Any]]:
    return [{"date": day, "hour": hour} for day, hour in hours]


def canon(table: pa.Table) -> list[dict[str, Any]]:
    """Rows in the table's schema, in a fixed order, for comparing engines' reads."""
    fields = pa.schema([f.with_nullable(True) for f in SCHEMA])
    rows = table.select(SCHEMA.names).cast(fields)
    ordered: list[dict[str, Any]] = rows.sort_by(
        [("event_id", "ascending"), ("metric", "ascending")]
    ).to_pylist()
    return ordered


def duckdb_read(uri: str) -> pa.Table:
    con = duckdb.connect()
    # Fail at once instead of trying to download the extension.
    con.sql("SET autoinstall_known_extensions = false")
    try:
        con.sql("LOAD delta")
    except duckdb.Error:
        # The delta extension is downloaded on first use and this machine is offline: DuckDB
        # reads the current snapshot's files through delta-rs's Arrow dataset instead.
        dataset = DeltaTable(uri).to_pyarrow_dataset()  # noqa: F841 (DuckDB finds it by name)
        return con.sql("SELECT * FROM dataset").to_arrow_table()
    return con.sql(f"SELECT * FROM delta_scan('{uri}')").to_arrow_table()


def data_files(root: str) -> set[str]:
    """Every Parquet file below the table's folder, relative to it (log excluded)."""
    base = Path(root)
    return {
        str(p.relative_to(base))
        for p in base.rglob("*.parquet")
        if "_delta_log" not in p.parts and not p.name.startswith(".")
    }


def paths(table: DeltaTable) -> set[str]:
    """The table's current data files, relative to its folder."""
    return set(pa.table(table.get_add_actions()).column("path").to_pylist())


@pytest.fixture
def lake(lake_settings: Settings) -> Iterator[Lake]:
    lake = Lake(lake_settings.lake)
    ensure_table(lake, NAME, schema=SCHEMA, partition_by=PARTS, description="test points")
    yield lake


def write(spark: SparkSession, lake: Lake, data: pa.Table, hours: list[tuple[str, int]]) -> int:
    # One task: a file per partition (each task writes its own file of every partition).
    frame: DataFrame = spark.createDataFrame(data).coalesce(1)
    return replace_partitions(spark, frame, lake, NAME, partition_by=PARTS, partitions=spec(hours))


def test_replaced_partitions_read_alike_everywhere_and_reruns_are_idempotent(
    spark: SparkSession, lake: Lake
) -> None:
    assert resolve_mode(spark) in ("native", "delta-rs")
    uri = lake.table_uri(NAME)
    hours = [(D1, 13), (D1, 14), (D2, 0)]
    data = points(hours)
    assert write(spark, lake, data, hours) == data.num_rows

    expected = canon(data)
    assert canon(DeltaTable(uri).to_pyarrow_table()) == expected
    assert canon(pl.scan_delta(uri).collect().to_arrow()) == expected
    assert canon(duckdb_read(uri)) == expected
    assert canon(read_table(spark, lake, NAME).toArrow()) == expected
    only = read_table(spark, lake, NAME, partitions=spec([(D1, 14)])).toArrow()
    assert canon(only) == canon(points([(D1, 14)]))

    table = DeltaTable(uri)
    protocol = table.protocol()
    assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2)
    assert not protocol.reader_features and not protocol.writer_features
    assert table.metadata().partition_columns == list(PARTS)
    assert DEFAULT_PROPERTIES.items() <= table.metadata().configuration.items()
    types = {f["name"]: f["type"] for f in json.loads(table.schema().to_json())["fields"]}
    assert types["ts"] == types["ingest_ts"] == "timestamp"
    # Hive-style partition folders, with statistics readers can skip files on.
    actions = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    assert sorted(a["path"].rsplit("/", 1)[0] for a in actions) == [
        f"date={d}/hour={h}" for d, h in hours
    ]
    for action in actions:
        hour = datetime.fromisoformat(action["partition.date"]).replace(
            hour=action["partition.hour"], tzinfo=UTC
        )
        assert action["num_records"] == 5
        # Milliseconds, the minimum rounded down and the maximum up (rows are at .123456).
        assert action["min.ts"] == hour + timedelta(microseconds=123_000)
        assert action["max.ts"] == hour + timedelta(minutes=28, microseconds=124_000)
        assert action["min.event_id"].startswith("a-") and action["null_count.cluster"] == 2
        assert action["null_count.value"] == 0 and action.get("min.value") is None
    # No staging left behind.
    assert sorted(os.listdir(uri)) == ["_delta_log", f"date={D1}", f"date={D2}"]

    # The same rows again: a new version with the same content and as many files.
    version, files = table.version(), data_files(uri)
    assert write(spark, lake, data, hours) == data.num_rows
    table = DeltaTable(uri)
    assert table.version() == version + 1
    assert canon(table.to_pyarrow_table()) == expected
    assert len(table.file_uris()) == len(hours)
    assert not paths(table) & files

    # One partition replaced, one emptied (named, no rows), the third untouched.
    untouched = {p for p in paths(table) if p.startswith(f"date={D1}/hour=13/")}
    fresh = points([(D1, 14)], per_hour=3, tag="b")
    assert write(spark, lake, fresh, [(D1, 14), (D2, 0)]) == 3
    table = DeltaTable(uri)
    assert canon(table.to_pyarrow_table()) == canon(pa.concat_tables([points([(D1, 13)]), fresh]))
    assert {p for p in paths(table) if p.startswith(f"date={D1}/hour=13/")} == untouched
    assert canon(read_table(spark, lake, NAME).toArrow()) == canon(table.to_pyarrow_table())


def test_writes_outside_the_contract_are_refused_and_commit_nothing(
    spark: SparkSession, lake: Lake
) -> None:
    uri = lake.table_uri(NAME)
    version = DeltaTable(uri).version()
    data = points([(D1, 1), (D1, 2)])
    with pytest.raises(TableMismatchError, match="outside the partitions replaced"):
        write(spark, lake, data, [(D1, 1)])
    nulls = spark.createDataFrame(points([(D1, 1)])).withColumn(
        "server_id", F.lit(None).cast("string")
    )
    with pytest.raises(TableMismatchError, match="'server_id' is NOT NULL"):
        replace_partitions(spark, nulls, lake, NAME, partition_by=PARTS, partitions=spec([(D1, 1)]))
    frame = spark.createDataFrame(data)
    with pytest.raises(TableMismatchError, match="partitioned by"):
        replace_partitions(spark, frame, lake, NAME, partition_by=["date"], partitions=[])
    with pytest.raises(TableMismatchError, match="no columns"):
        replace_partitions(
            spark,
            frame.withColumn("x", frame.value),
            lake,
            NAME,
            partition_by=PARTS,
            partitions=spec([(D1, 1)]),
        )
    with pytest.raises(ValueError, match="at least one partition"):
        replace_partitions(spark, frame, lake, NAME, partition_by=PARTS, partitions=[])
    with pytest.raises(ValueError, match="only letters"):
        replace_partitions(
            spark, frame, lake, NAME, partition_by=PARTS, partitions=[{"date": "x'y", "hour": 1}]
        )
    assert DeltaTable(uri).version() == version
    assert sorted(os.listdir(uri)) == ["_delta_log"]
    assert read_table(spark, lake, NAME).count() == 0
    assert read_table(spark, lake, NAME).schema.fieldNames() == SCHEMA.names


def test_crash_before_the_commit_leaves_the_table_and_vacuum_deletes_the_files(
    spark: SparkSession, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = lake.table_uri(NAME)
    first = points([(D1, 5)])
    write(spark, lake, first, [(D1, 5)])
    version = DeltaTable(uri).version()

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("simulated crash before the commit")

    monkeypatch.setattr(delta_io, "_commit", crash)
    second = points([(D1, 5)], tag="b")
    with pytest.raises(RuntimeError, match="simulated crash"):
        write(spark, lake, second, [(D1, 5)])
    table = DeltaTable(uri)
    assert table.version() == version
    assert canon(table.to_pyarrow_table()) == canon(first)
    assert canon(read_table(spark, lake, NAME).toArrow()) == canon(first)
    orphans = data_files(uri) - paths(table)
    assert orphans  # written, moved into the table's folder, never committed

    monkeypatch.undo()
    write(spark, lake, second, [(D1, 5)])
    assert canon(DeltaTable(uri).to_pyarrow_table()) == canon(second)

    # What a process killed while Spark was still writing leaves in its staging folder.
    staged = "staging-0123456789abcdef/_temporary/0/date=2026-11-20/hour=5/part-0.parquet"
    Path(uri, staged).parent.mkdir(parents=True)
    Path(uri, staged).write_bytes(b"partial")
    orphans.add(staged)
    # Vacuum deletes unreferenced files older than its retention (24 h at least).
    old = time.time() - 48 * 3600
    for orphan in orphans:
        os.utime(Path(uri, orphan), (old, old))
    report = maintain(lake, NAME, retention_hours=24)
    assert orphans <= {p.removeprefix(uri).lstrip("/") for p in report.vacuumed_files}
    assert not orphans & data_files(uri)
    assert not Path(uri, staged).exists()
    assert canon(DeltaTable(uri).to_pyarrow_table()) == canon(second)


def run_together(
    monkeypatch: pytest.MonkeyPatch, writes: list[Callable[[], int]]
) -> list[int | BaseException]:
    """Run the writes in threads that all reach the commit point before any commits, so
    they commit against the same table version."""
    barrier = threading.Barrier(len(writes))
    commit = delta_io._commit

    def commit_together(*args: Any, **kwargs: Any) -> None:
        barrier.wait(timeout=120)
        commit(*args, **kwargs)

    monkeypatch.setattr(delta_io, "_commit", commit_together)
    results: list[int | BaseException] = [0] * len(writes)

    def run(i: int) -> None:
        try:
            results[i] = writes[i]()
        except BaseException as error:
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(writes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    monkeypatch.undo()
    return results


def test_concurrent_replaces_of_a_partition_conflict_and_disjoint_ones_commit(
    spark: SparkSession, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = lake.table_uri(NAME)
    a, b = points([(D1, 7)], tag="a"), points([(D1, 7)], tag="b")
    # The partition is empty: no file that both remove, still one must fail.
    results = run_together(
        monkeypatch,
        [lambda: write(spark, lake, a, [(D1, 7)]), lambda: write(spark, lake, b, [(D1, 7)])],
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], CommitFailedError), results
    winner, loser = (a, b) if results[0] == a.num_rows else (b, a)
    table = DeltaTable(uri)
    assert canon(table.to_pyarrow_table()) == canon(winner)
    assert data_files(uri) == paths(table)  # the loser's files are gone
    write(spark, lake, loser, [(D1, 7)])  # run again, it commits
    assert canon(DeltaTable(uri).to_pyarrow_table()) == canon(loser)

    # Other partitions, concurrently: both commit.
    c, d = points([(D1, 8)], tag="a"), points([(D2, 8)], tag="b")
    results = run_together(
        monkeypatch,
        [lambda: write(spark, lake, c, [(D1, 8)]), lambda: write(spark, lake, d, [(D2, 8)])],
    )
    assert results == [c.num_rows, d.num_rows]
    assert canon(DeltaTable(uri).to_pyarrow_table()) == canon(pa.concat_tables([loser, c, d]))


def test_overwrite_replaces_the_whole_table(spark: SparkSession, lake: Lake) -> None:
    ensure_table(lake, "baseline", schema=BASELINE_SCHEMA, description="test baseline")
    uri = lake.table_uri("baseline")
    at = datetime(2026, 11, 23, tzinfo=UTC)

    def baseline(n: int) -> pa.Table:
        return pa.Table.from_pylist(
            [
                {
                    "server_id": f"srv-{i:05d}",
                    "metric": "cpu_pct",
                    "hour_of_week": i % 168,
                    "mean": 1.0 * i,
                    "stddev": None,
                    "samples": 4,
                    "computed_at": at,
                }
                for i in range(n)
            ],
            schema=BASELINE_SCHEMA,
        )

    assert overwrite(spark, spark.createDataFrame(baseline(10)), lake, "baseline") == 10
    assert overwrite(spark, spark.createDataFrame(baseline(4)), lake, "baseline") == 4
    table = DeltaTable(uri)
    assert table.to_pyarrow_table().sort_by("server_id") == baseline(4)
    assert pl.scan_delta(uri).select(pl.len()).collect().item() == 4
    assert read_table(spark, lake, "baseline").count() == 4
    assert data_files(uri) - paths(table)  # the first version's files, until vacuum
