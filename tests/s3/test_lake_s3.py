"""The lake on S3-compatible storage (moto's S3 server, a real process): settings and ``Lake``
without network, the storage options of each engine, whole-object writes, Delta tables."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from fleetlens.config import LakeSettings, load_settings
from fleetlens.lake import storage
from fleetlens.lake.delta import delete_where, ensure_table, maintain, read_table, upsert
from fleetlens.lake.landing import LANDING_SCHEMA, write_landing_file
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import SPEED_1M_SCHEMA, WINDOW_KEY
from ports import free_port

T0 = datetime(2026, 11, 30, tzinfo=UTC)
KEY = list(WINDOW_KEY)


def lake_of(root: str, options: dict[str, str]) -> Lake:
    return Lake(LakeSettings.model_validate({"root": root, "storage_options": options}))


def object_keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key of ``bucket`` below ``prefix``, listed by boto3 (not by our code)."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def test_settings_and_lake_reach_no_network_until_used(
    monkeypatch: pytest.MonkeyPatch, s3_options: dict[str, str]
) -> None:
    # The production profile's bucket has no endpoint: pyarrow's from_uri asked AWS for its
    # region while constructing the lake, which fails on a machine without internet.
    monkeypatch.setenv("FLEETLENS_LAKE__STORAGE_OPTIONS__AWS_SECRET_ACCESS_KEY", "s3cr3t")
    production = load_settings("production").lake
    started = time.monotonic()
    lake = Lake(production)
    assert time.monotonic() - started < 0.5
    assert not lake.is_local
    assert lake.path("tables", "x") == "fleetlens-lake/prod/tables/x"
    assert lake.table_uri("x") == "s3://fleetlens-lake/prod/tables/x"
    assert lake.delta_options == {"AWS_REGION": "us-east-1", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}

    # Nothing listens at this endpoint: only the first use of the filesystem finds out.
    closed = s3_options | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    unreachable = lake_of("s3://nowhere/lake", closed)
    with pytest.raises(OSError):
        unreachable.fs.get_file_info(unreachable.path("x"))


def test_each_engine_gets_the_storage_options_in_its_own_names(
    s3_options: dict[str, str],
) -> None:
    endpoint = s3_options["AWS_ENDPOINT_URL"]
    assert storage.pyarrow_s3_options(s3_options) == {
        "access_key": "test",
        "secret_key": "test",
        "region": "us-east-1",
        "scheme": "http",
        "endpoint_override": endpoint.removeprefix("http://"),
    }
    # object_store's aliases (no AWS_ prefix, AWS_ENDPOINT) mean the same.
    aliases = {"ENDPOINT": endpoint, "ALLOW_HTTP": "true", "AWS_DEFAULT_REGION": "eu-west-3"}
    assert storage.pyarrow_s3_options(aliases)["region"] == "eu-west-3"
    assert storage.delta_options(s3_options) == storage.polars_options(s3_options) == s3_options
    assert storage.delta_options({}) is None
    hadoop = storage.spark_hadoop_conf(s3_options)
    assert hadoop["spark.hadoop.fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
    assert hadoop["spark.hadoop.fs.s3a.endpoint"] == endpoint
    assert hadoop["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert hadoop["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    # A plain-http endpoint without AWS_ALLOW_HTTP is refused when the lake is made, as
    # delta-rs would refuse it at the first table operation.
    strict = {k: v for k, v in s3_options.items() if k != "AWS_ALLOW_HTTP"}
    with pytest.raises(ValueError, match="AWS_ALLOW_HTTP"):
        lake_of("s3://b/lake", strict)


def test_files_are_written_whole_and_read_back(
    s3: Any, bucket: str, s3_root: str, s3_options: dict[str, str]
) -> None:
    lake = lake_of(s3_root, s3_options)
    state = lake.path("_state", "x", "ckpt.json")
    assert lake.read_bytes(state) is None
    lake.write_bytes_atomically(state, b'{"offset": 1}')
    lake.write_bytes_atomically(state, b'{"offset": 2}')
    assert lake.read_bytes(state) == b'{"offset": 2}'
    body = s3.get_object(Bucket=bucket, Key="fleet/_state/x/ckpt.json")["Body"].read()
    assert body == b'{"offset": 2}'

    rows = pa.table(
        {
            "event_id": ["e1", "e2"],
            "server_id": ["s1", "s2"],
            "ts": [T0, T0 + timedelta(seconds=10)],
            "metrics": [[("cpu_pct", 1.5)], [("cpu_pct", 2.5), ("mem_pct", 40.0)]],
            "tags": [[("tenant", "acme")], []],
            "kafka_partition": [0, None],
            "kafka_offset": [7, None],
            "ingest_ts": [T0, T0],
        },
        schema=LANDING_SCHEMA,
    )
    write_landing_file(lake, lake.path("landing", "metrics", "h", "part-1.parquet"), rows)
    data = s3.get_object(Bucket=bucket, Key="fleet/landing/metrics/h/part-1.parquet")["Body"]
    assert pq.read_table(pa.BufferReader(data.read())).equals(rows)
    # No empty "folder" objects: the store has files only.
    assert object_keys(s3, bucket) == [
        "fleet/_state/x/ckpt.json",
        "fleet/landing/metrics/h/part-1.parquet",
    ]


def speed_rows(n: int, *, first: int = 0, value: float = 0.0) -> pa.Table:
    """``n`` ``speed_1m`` rows with distinct keys (row ``i``: server ``i % 5``, minute
    ``i // 5``); their values derive from ``i + value``."""
    idx = range(first, first + n)
    windows = [T0 + timedelta(minutes=i // 5) for i in idx]
    vals = [float(i) + value for i in idx]
    return pa.table(
        {
            "window_start": windows,
            "server_id": [f"srv-{i % 5}" for i in idx],
            "metric": ["cpu_pct"] * n,
            "tenant": ["acme"] * n,
            "region": ["eu-west-1"] * n,
            "env": ["prod"] * n,
            "service": ["api"] * n,
            "cluster": ["c1"] * n,
            "count": [6] * n,
            "sum": [6 * v for v in vals],
            "min": [v - 1 for v in vals],
            "max": [v + 1 for v in vals],
            "last": vals,
            "last_ts": [w + timedelta(seconds=50) for w in windows],
            "sketch": [b"\x00"] * n,
            "p50": vals,
            "p95": vals,
            "p99": vals,
            "emitted_at": [T0] * n,
        },
        schema=SPEED_1M_SCHEMA,
    )


def frame(table: pa.Table) -> pl.DataFrame:
    out = pl.from_arrow(table)
    assert isinstance(out, pl.DataFrame)
    return out.sort(KEY)


def test_delta_tables_on_s3_merge_delete_compact_and_commit_concurrently(
    s3: Any, bucket: str, s3_root: str, s3_options: dict[str, str]
) -> None:
    lake = lake_of(s3_root, s3_options)
    ensure_table(lake, "speed", schema=SPEED_1M_SCHEMA)
    upsert(lake, "speed", speed_rows(50), key=KEY, prune_column="window_start")
    # Replayed (a crash after the commit): nothing changes. Then 10 rows updated, 10 new.
    upsert(lake, "speed", speed_rows(50), key=KEY, prune_column="window_start")
    upsert(lake, "speed", speed_rows(20, first=40, value=0.5), key=KEY)
    # Two writers at once, disjoint rows: delta-rs commits with conditional PUTs (moto
    # refuses a second PUT of the same log entry), the loser retries, both land.
    errors: list[BaseException] = []

    def write(first: int) -> None:
        try:
            upsert(lake, "speed", speed_rows(10, first=first), key=KEY)
        except BaseException as error:
            errors.append(error)

    writers = [threading.Thread(target=write, args=(first,)) for first in (100, 200)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert not errors
    expected = pl.concat(
        [
            frame(speed_rows(40)),
            frame(speed_rows(20, first=40, value=0.5)),
            frame(speed_rows(10, first=100)),
            frame(speed_rows(10, first=200)),
        ]
    ).sort(KEY)
    assert frame(read_table(lake, "speed")).equals(expected)

    cutoff = T0 + timedelta(minutes=4)
    assert delete_where(lake, "speed", f"window_start < '{cutoff:%Y-%m-%dT%H:%M:%SZ}'") == 20
    report = maintain(lake, "speed", retention_hours=24)
    assert report.compaction["numFilesRemoved"] > report.compaction["numFilesAdded"] == 1
    remaining = expected.filter(pl.col("window_start") >= cutoff)
    # Read back by polars from the store, through the DeltaTable delta-rs opened.
    table = DeltaTable(lake.table_uri("speed"), storage_options=lake.delta_options)
    got = pl.scan_delta(table, storage_options=lake.polars_options).collect().sort(KEY)
    assert got.equals(remaining)
    log = object_keys(s3, bucket, "fleet/tables/speed/_delta_log/")
    assert any(key.endswith(".checkpoint.parquet") for key in log)
