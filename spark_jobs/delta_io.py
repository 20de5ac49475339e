"""The batch layer's Delta I/O: Spark DataFrames in and out of the lake's Delta tables.

Two ways to commit, one table format (see :func:`resolve_mode`):

* ``native``: delta-spark on the classpath (production images): ``format("delta")`` with
  ``replaceWhere``.
* ``delta-rs``: no delta-spark jars. Spark writes the Parquet files into a staging folder of
  the table (``<table>/staging-<write id>/``); they are moved into the table's hive-style
  partition folders and committed by delta-rs as one transaction, with the file statistics
  read from the Parquet footers. Nothing refers to a file until that commit: a crash leaves
  only unreferenced files, which vacuum (:func:`fleetlens.lake.delta.maintain`) deletes
  once older than its retention.

Either way the tables are created by :func:`fleetlens.lake.delta.ensure_table` (same
protocol 1/2 without table features, same properties) and are read alike by Spark,
delta-rs, polars, DuckDB and Trino.

Writes replace whole partitions, given by their values: delta-rs only removes files by
partition values (no row predicate like ``replaceWhere`` with ``window_start >= ...``), and
an hour or a day is what the jobs recompute anyway. A replace of partitions that a
concurrent replace also touched fails with
:class:`~deltalake.exceptions.CommitFailedError` and leaves the table as the other one made
it; replaces are idempotent, so the job is simply run again.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable, Transaction
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import AddAction, CommitProperties, RemoveAction
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from fleetlens.lake import delta
from fleetlens.lake.delta import TableMismatchError
from fleetlens.lake.paths import Lake
from fleetlens.logging import get_logger
from spark_jobs.session import MODE_CONF, has_delta_spark

__all__ = [
    "MAX_RECORDS_PER_FILE",
    "MODE_CONF",
    "CommitFailedError",
    "DeltaMode",
    "TableMismatchError",
    "ensure_table",
    "overwrite",
    "read_table",
    "replace_partitions",
    "resolve_mode",
]

log = get_logger("delta_io")

DeltaMode = Literal["native", "delta-rs"]


#: Cap on a data file's rows, so that one large partition still makes files of sane size.
MAX_RECORDS_PER_FILE: Final = 5_000_000

#: A partition: one value per partition column of the table.
Partition = Mapping[str, object]

_STAGING_PREFIX = "staging-"
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
# Partition values and file paths are kept to characters that need no escaping in a Hive
# path, a Delta log path (a URI) or a Spark SQL literal: there is then no encoding to get
# wrong between Spark, delta-rs and the other readers.
_SAFE_VALUE = re.compile(r"[A-Za-z0-9._-]+")
_SAFE_PATH = re.compile(r"[A-Za-z0-9._=/-]+")
# Delta Spark keeps statistics of the first 32 columns only, and readers assume no more.
_INDEXED_COLUMNS = 32
# Delta Spark truncates longer strings in statistics (with a tie-breaker for the maximum);
# their bounds are left out instead, which only costs skipping on long strings.
_MAX_STRING_STAT = 32


@dataclass(frozen=True)
class _StagedFile:
    """A data file Spark wrote into the staging folder, read from its footer."""

    relative: str  # below the staging folder: ``date=…/hour=…/part-….parquet``
    partition_values: dict[str, str | None]
    rows: int
    stats: str


def resolve_mode(spark: SparkSession, *, mode: DeltaMode | None = None) -> DeltaMode:
    """How tables are committed: ``mode`` if given, else :data:`MODE_CONF`, where ``auto``
    (or nothing) means ``native`` exactly when delta-spark's classes are on the classpath.

    Raises:
        RuntimeError: ``native`` is asked for without delta-spark.
        ValueError: :data:`MODE_CONF` holds something else.
    """
    wanted = mode or spark.conf.get(MODE_CONF, "auto") or "auto"
    if wanted not in ("auto", "native", "delta-rs"):
        raise ValueError(f"{MODE_CONF} must be auto, native or delta-rs, not {wanted!r}")
    present = has_delta_spark(spark)
    if wanted == "native" and not present:
        raise RuntimeError(
            "spark.delta_mode is 'native' but delta-spark is not on the classpath; add its "
            "jars (e.g. --packages io.delta:delta-spark_2.13:4.1.0) or use delta-rs"
        )
    if wanted == "auto":
        return "native" if present else "delta-rs"
    return "native" if wanted == "native" else "delta-rs"


def ensure_table(
    lake: Lake,
    name: str,
    *,
    schema: pa.Schema,
    partition_by: Sequence[str] = (),
    description: str,
) -> DeltaTable:
    """Create the table if missing (properties, protocol and layout of
    :func:`fleetlens.lake.delta.ensure_table`), else check its columns and partitioning.

    Raises:
        TableMismatchError: The existing table has other columns or partitioning.
    """
    return delta.ensure_table(
        lake, name, schema=schema, partition_by=list(partition_by), description=description
    )


def read_table(
    spark: SparkSession,
    lake: Lake,
    name: str,
    *,
    partitions: Sequence[Partition] | None = None,
    mode: DeltaMode | None = None,
) -> DataFrame:
    """The table's current rows, with its columns in its order.

    In ``delta-rs`` mode Spark reads the files of the table's current version (from the
    Delta log) as Parquet, partition columns taken from the hive-style paths, so Spark
    still prunes partitions on filters of partition columns.

    Args:
        spark: The session.
        lake: The lake.
        name: Table name; the table must exist.
        partitions: Only these partitions (values of every partition column); all when None.
        mode: Commit mode; :func:`resolve_mode` when None.

    Raises:
        TableMismatchError: A data file is not in its hive-style partition folder.
    """
    table = delta.open_table(lake, name)
    schema = _arrow_schema(table)
    columns = _partition_columns(table)
    specs = _partition_specs(partitions, columns) if partitions is not None else None
    if resolve_mode(spark, mode=mode) == "native":
        frame = spark.read.format("delta").load(lake.table_uri(name)).select(*schema.names)
        return frame if specs is None else frame.where(_spark_condition(specs))
    spark_schema = from_arrow_schema(schema, prefer_timestamp_ntz=False)
    files = [f for f in _table_files(table, columns) if specs is None or f[1] in specs]
    if not files:
        return spark.createDataFrame([], spark_schema)
    for path, values in files:
        if path.split("/")[:-1] != [f"{c}={_hive_value(values[c])}" for c in columns]:
            raise TableMismatchError(
                f"Delta table {name!r}: {path} is not in its partition folder, "
                "which delta-rs mode reads partition values from"
            )
    return (
        spark.read.schema(spark_schema)
        .option("basePath", lake.table_uri(name))
        .parquet(*(lake.uri("tables", name, path) for path, _ in files))
        .select(*schema.names)
    )


def replace_partitions(
    spark: SparkSession,
    df: DataFrame,
    lake: Lake,
    name: str,
    *,
    partition_by: Sequence[str],
    partitions: Sequence[Partition],
    sort_by: Sequence[str] = (),
    mode: DeltaMode | None = None,
) -> int:
    """Replace the rows of ``partitions`` with the rows of ``df``, in one commit.

    Afterwards the table holds exactly ``df``'s rows in those partitions (none in a
    partition ``df`` has no row for) and is unchanged elsewhere; running it again with the
    same rows gives the same table (in a new version; no commit when there is nothing to
    remove nor to write).

    Args:
        spark: The session.
        df: The rows, with the table's columns (any order; cast to the table's types).
        lake: The lake.
        name: Table name; the table must exist (see :func:`ensure_table`).
        partition_by: The table's partition columns, checked against the table.
        partitions: The partitions replaced, each with a value for every partition column,
            e.g. ``{"date": "2026-11-20", "hour": 13}``.
        sort_by: Columns each data file is sorted by (after the partition columns), for
            readers that filter on them.
        mode: Commit mode; :func:`resolve_mode` when None.

    Returns:
        The number of rows written.

    Raises:
        CommitFailedError: A concurrent commit replaced or removed some of the same
            partitions' files; nothing was committed, run it again.
        TableMismatchError: ``df`` has other columns than the table, rows outside
            ``partitions`` or nulls in NOT NULL columns, or the table another partitioning.
        ValueError: ``partitions`` is empty, or a value is not a plain string or number.
    """
    table = delta.open_table(lake, name)
    columns = _partition_columns(table)
    if list(partition_by) != columns or not columns:
        raise TableMismatchError(
            f"Delta table {name!r} is partitioned by {columns}, not {list(partition_by)}"
        )
    if not partitions:
        raise ValueError("replace_partitions needs at least one partition")
    specs = _partition_specs(partitions, columns)
    frame = _conform(df, _arrow_schema(table), name)
    if resolve_mode(spark, mode=mode) == "native":
        return _write_native(
            frame, lake, name, partition_by=columns, sort_by=sort_by, where=_sql_condition(specs)
        )
    return _write_delta_rs(frame, lake, name, table=table, specs=specs, sort_by=sort_by)


def overwrite(
    spark: SparkSession,
    df: DataFrame,
    lake: Lake,
    name: str,
    *,
    sort_by: Sequence[str] = (),
    mode: DeltaMode | None = None,
) -> int:
    """Replace the whole table's rows with ``df``'s, in one commit (e.g. a baseline).

    Returns:
        The number of rows written.

    Raises:
        CommitFailedError: A concurrent commit removed or replaced the same files.
        TableMismatchError: ``df`` has other columns than the table or nulls in NOT NULL
            columns.
    """
    table = delta.open_table(lake, name)
    frame = _conform(df, _arrow_schema(table), name)
    if resolve_mode(spark, mode=mode) == "native":
        return _write_native(
            frame, lake, name, partition_by=_partition_columns(table), sort_by=sort_by
        )
    return _write_delta_rs(frame, lake, name, table=table, specs=None, sort_by=sort_by)


# -- native -------------------------------------------------------------------------------


def _write_native(
    frame: DataFrame,
    lake: Lake,
    name: str,
    *,
    partition_by: list[str],
    sort_by: Sequence[str] = (),
    where: str | None = None,
) -> int:
    write_id = uuid.uuid4().hex
    writer = (
        _clustered(frame, partition_by, sort_by)
        .write.format("delta")
        .mode("overwrite")
        .option("maxRecordsPerFile", MAX_RECORDS_PER_FILE)
        # Finds this commit in the history for its row count, whatever committed after it.
        .option("userMetadata", write_id)
    )
    if where is not None:
        writer = writer.option("replaceWhere", where)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(lake.table_uri(name))
    for entry in delta.open_table(lake, name).history(20):
        if entry.get("userMetadata") == write_id:
            metrics = entry.get("operationMetrics") or {}
            if "numOutputRows" in metrics:
                return int(metrics["numOutputRows"])
    return frame.count()


# -- delta-rs -----------------------------------------------------------------------------


def _write_delta_rs(
    frame: DataFrame,
    lake: Lake,
    name: str,
    *,
    table: DeltaTable,
    specs: list[dict[str, str | None]] | None,
    sort_by: Sequence[str] = (),
) -> int:
    """Stage with Spark, move into the table, commit adds and removes in one transaction.

    ``table`` is the snapshot the removes are computed from, loaded before anything is
    written: a commit after it that touched the same partitions is a conflict.
    """
    schema = _arrow_schema(table)
    columns = _partition_columns(table)
    write_id = uuid.uuid4().hex
    staging = f"{_STAGING_PREFIX}{write_id}"
    # Each write has its own output folder, so that concurrent writes to the table do not
    # share Spark's _temporary folder; staged there, no reader sees the files.
    writer = (
        _clustered(frame, columns, sort_by)
        .write.mode("errorifexists")
        .option("maxRecordsPerFile", MAX_RECORDS_PER_FILE)
        # No _SUCCESS marker: the staging folder is deleted anyway.
        .option("mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
        .partitionBy(*columns)
    )
    try:
        writer.parquet(lake.uri("tables", name, staging))
        staged = _read_staged(lake, name, staging, schema, columns)
        _check_staged(name, staged, schema, specs)
    except Exception:
        # Best effort: what is left is unreferenced, and vacuum deletes it in time.
        _delete_quietly(lake, lake.path("tables", name, staging))
        raise
    adds = _publish(lake, name, staging, staged)
    removes = [
        RemoveAction(
            path,
            data_change=True,
            deletion_timestamp=_now_ms(),
            size=size,
            partition_values=values,
        )
        for path, size, values in _table_files_with_sizes(table, columns)
        if specs is None or values in specs
    ]
    if not adds and not removes:
        return 0  # nothing there, nothing written: a commit would change nothing
    # One application id per partition replaced: delta-rs fails a commit whose app ids a
    # concurrent commit also set, which catches two replaces of a partition that was empty
    # (no file removed by both, so no other conflict to detect).
    app_ids = ["fleetlens.overwrite"] if specs is None else [_app_id(s) for s in specs]
    properties = CommitProperties(
        custom_metadata={
            "fleetlens": {
                "operation": "overwrite" if specs is None else "replace_partitions",
                "writeId": write_id,
                "partitions": app_ids,
            }
        },
        app_transactions=[
            Transaction(app_id, table.version() + 1, _now_ms()) for app_id in app_ids
        ],
    )
    try:
        _commit(table, [*adds, *removes], columns=columns, properties=properties)
    except CommitFailedError:
        # Certainly not committed: nothing refers to the files, delete them now.
        for add in adds:
            lake.fs.delete_file(lake.path("tables", name, add.path))
        raise
    rows = sum(f.rows for f in staged)
    log.info(
        "delta_io.committed",
        table=name,
        read_version=table.version(),
        files_added=len(adds),
        files_removed=len(removes),
        rows=rows,
    )
    return rows


def _commit(
    table: DeltaTable,
    actions: list[AddAction | RemoveAction],
    *,
    columns: list[str],
    properties: CommitProperties,
) -> None:
    """The commit point: before it the table does not refer to the new files."""
    # Append mode with explicit removes: overwrite mode takes partition filters as one
    # conjunction only, which cannot name e.g. hours 23 and 0 of two days exactly. The
    # table's own schema: no metadata action, the table's types stay as they are.
    table.create_write_transaction(
        actions,
        "append",
        table.schema(),
        partition_by=columns,
        commit_properties=properties,
    )


def _read_staged(
    lake: Lake, name: str, staging: str, schema: pa.Schema, columns: list[str]
) -> list[_StagedFile]:
    """The Parquet files Spark wrote below ``staging``, with their statistics."""
    root = lake.path("tables", name, staging)
    infos = lake.fs.get_file_info(pafs.FileSelector(root, recursive=True))
    staged = []
    for info in infos:
        relative = info.path[len(root) + 1 :]
        parts = relative.split("/")
        # Spark's own files (_temporary, .crc checksums) are hidden.
        if info.type != pafs.FileType.File or any(p[:1] in "._" for p in parts):
            continue
        if not relative.endswith(".parquet"):
            continue
        if not _SAFE_PATH.fullmatch(relative):
            raise TableMismatchError(
                f"Delta table {name!r}: partition values must be plain (letters, digits, "
                f"'.', '_', '-'), got {relative!r}"
            )
        values = dict(_parse_segment(p) for p in parts[:-1])
        if list(values) != columns:
            raise TableMismatchError(f"Delta table {name!r}: unexpected file {relative}")
        with lake.fs.open_input_file(info.path) as source:
            metadata = pq.read_metadata(source)
        if any(
            metadata.schema.column(i).physical_type == "INT96" for i in range(metadata.num_columns)
        ):
            # Legacy timestamps, which delta-rs, Trino and polars read differently.
            raise ValueError(
                "Spark wrote INT96 timestamps: set spark.sql.parquet.outputTimestampType="
                "TIMESTAMP_MICROS (spark_jobs.session.build_session does)"
            )
        staged.append(
            _StagedFile(
                relative=relative,
                partition_values=values,
                rows=metadata.num_rows,
                stats=_stats_json(metadata, schema, columns),
            )
        )
    return staged


def _check_staged(
    name: str,
    staged: list[_StagedFile],
    schema: pa.Schema,
    specs: list[dict[str, str | None]] | None,
) -> None:
    """What delta-spark checks on a write: rows within ``replaceWhere``, no null in NOT NULL
    columns."""
    for staged_file in staged:
        if staged_file.rows == 0:
            continue
        values = staged_file.partition_values
        if specs is not None and values not in specs:
            raise TableMismatchError(
                f"Delta table {name!r}: rows of partition {values} are outside the "
                "partitions replaced"
            )
        nulls = json.loads(staged_file.stats).get("nullCount", {})
        for field in schema:
            if field.nullable:
                continue
            if (field.name in values and values[field.name] is None) or nulls.get(field.name):
                raise TableMismatchError(
                    f"Delta table {name!r}: column {field.name!r} is NOT NULL, "
                    "but rows written have nulls in it"
                )


def _publish(lake: Lake, name: str, staging: str, staged: list[_StagedFile]) -> list[AddAction]:
    """Move the staged files into their partition folders; the add actions for them."""
    adds = []
    for staged_file in staged:
        source = lake.path("tables", name, staging, staged_file.relative)
        if staged_file.rows == 0:
            # Spark writes an empty file for an empty unpartitioned write.
            lake.fs.delete_file(source)
            continue
        # Spark's file names carry its job's UUID: unique within the table.
        target = lake.path("tables", name, staged_file.relative)
        lake.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        lake.fs.move(source, target)
        info = lake.fs.get_file_info(target)
        assert info.size is not None and info.mtime is not None
        adds.append(
            AddAction(
                staged_file.relative,
                info.size,
                staged_file.partition_values,
                int(info.mtime.timestamp() * 1000),
                True,
                staged_file.stats,
            )
        )
    # What is left: empty folders and Spark's checksum files.
    lake.fs.delete_dir(lake.path("tables", name, staging))
    return adds


def _stats_json(metadata: pq.FileMetaData, schema: pa.Schema, columns: list[str]) -> str:
    """Delta file statistics from the footer: numRecords, minValues, maxValues, nullCount."""
    index = {metadata.schema.column(i).path: i for i in range(metadata.num_columns)}
    data_fields = [f for f in schema if f.name not in columns][:_INDEXED_COLUMNS]
    minimums: dict[str, Any] = {}
    maximums: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for field in data_fields:
        if field.name not in index:
            continue
        chunks = [
            metadata.row_group(g).column(index[field.name]) for g in range(metadata.num_row_groups)
        ]
        statistics = [c.statistics for c in chunks]
        if all(s is not None and s.has_null_count for s in statistics):
            nulls[field.name] = sum(s.null_count for s in statistics if s is not None)
        bounds = _bounds(field.type, chunks)
        if bounds is not None:
            minimums[field.name], maximums[field.name] = bounds
    stats: dict[str, Any] = {"numRecords": metadata.num_rows}
    if minimums:
        stats["minValues"] = minimums
        stats["maxValues"] = maximums
    stats["nullCount"] = nulls
    return json.dumps(stats, separators=(",", ":"))


def _bounds(kind: pa.DataType, chunks: list[pq.ColumnChunkMetaData]) -> tuple[Any, Any] | None:
    """JSON minimum and maximum of a column's non-null values, if known and useful.

    Floating-point columns get none: Parquet writers disagree on NaN in bounds, and Spark
    orders NaN above every number, so a bound could wrongly skip a file.
    """
    if not (
        pa.types.is_integer(kind)
        or pa.types.is_timestamp(kind)
        or pa.types.is_date32(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
    ):
        return None
    lows, highs = [], []
    for chunk in chunks:
        s = chunk.statistics
        if s is not None and s.has_min_max:
            lows.append(s.min)
            highs.append(s.max)
        elif s is None or not s.has_null_count or s.null_count != chunk.num_values:
            return None  # a row group with values but no bounds: unknown
    if not lows:
        return None  # only nulls
    low, high = min(lows), max(highs)
    if pa.types.is_timestamp(kind):
        # Delta keeps milliseconds: the minimum rounded down, the maximum up.
        return _timestamp_json(low, up=False), _timestamp_json(high, up=True)
    if isinstance(low, date):
        return low.isoformat(), high.isoformat()
    if isinstance(low, str):
        if len(low) > _MAX_STRING_STAT or len(high) > _MAX_STRING_STAT:
            return None
        return low, high
    if isinstance(low, int) and not isinstance(low, bool):
        return low, high
    return None


def _timestamp_json(value: datetime, *, up: bool) -> str:
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    truncated = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    if up and truncated != moment:
        truncated += timedelta(milliseconds=1)
    text = truncated.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return text[:-3] + "Z"


# -- helpers ------------------------------------------------------------------------------


def _clustered(frame: DataFrame, partition_by: Sequence[str], sort_by: Sequence[str]) -> DataFrame:
    """Each task's rows sorted by partition, then by ``sort_by``.

    No shuffle into one task per partition: an hour of raw points is written by every core,
    one file per task and partition (compaction merges small files later). The sort is
    the one Spark's partitioned writer needs anyway, extended by ``sort_by`` so that each
    file's row groups cover narrow ranges of it (a reader of one server skips the rest).
    """
    columns = [*partition_by, *(c for c in sort_by if c not in partition_by)]
    return frame.sortWithinPartitions(*columns) if columns else frame


def _arrow_schema(table: DeltaTable) -> pa.Schema:
    return pa.schema(table.schema().to_arrow())


def _partition_columns(table: DeltaTable) -> list[str]:
    return list(table.metadata().partition_columns)


def _conform(df: DataFrame, schema: pa.Schema, name: str) -> DataFrame:
    """``df`` with exactly the table's columns, in its order and cast to its types."""
    if missing := [c for c in schema.names if c not in df.columns]:
        raise TableMismatchError(f"Delta table {name!r}: rows lack columns {missing}")
    if extra := [c for c in df.columns if c not in schema.names]:
        raise TableMismatchError(f"Delta table {name!r} has no columns {extra}")
    spark_schema = from_arrow_schema(schema, prefer_timestamp_ntz=False)
    return df.select(*(F.col(f.name).cast(f.dataType).alias(f.name) for f in spark_schema))


def _partition_string(value: object) -> str | None:
    """A partition value as the Delta log spells it (``13``, ``2026-11-20``; null: None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | str):
        text = str(value)
    elif isinstance(value, date) and not isinstance(value, datetime):
        text = value.isoformat()
    else:
        raise ValueError(f"partition value {value!r}: only strings, integers and dates")
    if not _SAFE_VALUE.fullmatch(text):
        raise ValueError(f"partition value {text!r}: only letters, digits, '.', '_', '-'")
    return text


def _partition_specs(
    partitions: Sequence[Partition], columns: list[str]
) -> list[dict[str, str | None]]:
    specs: list[dict[str, str | None]] = []
    for partition in partitions:
        if sorted(partition) != sorted(columns):
            raise ValueError(f"partition {dict(partition)} must give exactly {columns}")
        spec = {c: _partition_string(partition[c]) for c in columns}
        if spec not in specs:
            specs.append(spec)
    return specs


def _table_files_with_sizes(
    table: DeltaTable, columns: list[str]
) -> list[tuple[str, int, dict[str, str | None]]]:
    """The files of ``table``'s version: path, size, partition values as in the log."""
    actions = pa.table(table.get_add_actions(flatten=True))
    paths = actions.column("path").to_pylist()
    sizes = actions.column("size_bytes").to_pylist()
    values = [actions.column(f"partition.{c}").to_pylist() for c in columns]
    return [
        (path, size, {c: _partition_string(v[i]) for c, v in zip(columns, values, strict=True)})
        for i, (path, size) in enumerate(zip(paths, sizes, strict=True))
    ]


def _table_files(table: DeltaTable, columns: list[str]) -> list[tuple[str, dict[str, str | None]]]:
    return [(path, values) for path, _, values in _table_files_with_sizes(table, columns)]


def _parse_segment(segment: str) -> tuple[str, str | None]:
    column, _, value = segment.partition("=")
    text = unquote(value)
    return column, None if text == _HIVE_NULL else text


def _hive_value(value: str | None) -> str:
    return _HIVE_NULL if value is None else value


def _app_id(spec: Mapping[str, str | None]) -> str:
    return "fleetlens.partition:" + "/".join(f"{c}={_hive_value(v)}" for c, v in spec.items())


def _sql_condition(specs: list[dict[str, str | None]]) -> str:
    """``(date = '…' AND hour = 13) OR …`` (values are plain, see :data:`_SAFE_VALUE`)."""
    terms = []
    for spec in specs:
        tests = [
            f"`{c}` IS NULL" if v is None else f"`{c}` = '{v}'" for c, v in spec.items()
        ]  # Spark casts '13' to the column's type
        terms.append("(" + " AND ".join(tests) + ")")
    return " OR ".join(terms)


def _spark_condition(specs: list[dict[str, str | None]]) -> Column:
    condition = F.lit(False)
    for spec in specs:
        term = F.lit(True)
        for column, value in spec.items():
            test = F.col(column).isNull() if value is None else F.col(column) == F.lit(value)
            term = term & test
        condition = condition | term
    return condition


def _delete_quietly(lake: Lake, path: str) -> None:
    # Absent, or partly deleted: vacuum deletes the rest.
    with contextlib.suppress(OSError):
        lake.fs.delete_dir(path)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
