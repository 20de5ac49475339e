"""The lake's Delta tables, read and written through delta-rs (the ``deltalake`` package).

Every Python component goes through this module, so that all tables are created alike and
stay readable by Spark, Trino's Delta connector, DuckDB and polars:

* Plain protocol: ``minReaderVersion=1``, ``minWriterVersion=2``, no table features (no
  deletion vectors, column mapping, liquid clustering, ``timestampNtz``...). This is what
  delta-rs writes by default for a schema without tz-naive timestamps (which
  :func:`ensure_table` refuses). It is not pinned with ``delta.minReaderVersion`` /
  ``delta.minWriterVersion`` table properties: delta-rs would keep those keys in the table's
  configuration, where Delta/Spark never puts them. The tests assert the protocol instead.
* :data:`DEFAULT_PROPERTIES` for a table committed to every 10 s (8,640 commits a day): a
  checkpoint every 50 commits, one day of log and of removed-file tombstones, expired log
  files deleted after each checkpoint. Every upsert adds a file: run :func:`maintain`
  regularly (hourly, say) to compact them.
* Files written by MERGE embed an Arrow schema with ``string_view``/``binary_view`` columns
  (compaction and appends write plain ``string``/``binary``). Spark, Trino, DuckDB's
  ``delta_scan`` and polars do not mind; a filter on a string column of a pyarrow dataset
  (``DeltaTable.to_pyarrow_dataset()``, also under DuckDB's ``from_arrow``) fails with
  pyarrow 26. :func:`read_table` filters in delta-rs instead.

Writers on an object store need no lock: delta-rs 1.x commits with S3 conditional writes
(put-if-absent). A commit that conflicts with a concurrent one raises
:class:`~deltalake.exceptions.CommitFailedError` (re-exported here); the operation can then
be run again as a whole, which :func:`upsert` and :func:`delete_where` do by themselves
(both are idempotent) for up to :data:`CONFLICT_RETRY_S` seconds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from deltalake import DeltaTable, QueryBuilder, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_random_exponential

from fleetlens.lake.paths import Lake

if TYPE_CHECKING:
    from deltalake.table import FilterType

__all__ = [
    "CONFLICT_RETRY_S",
    "DEFAULT_PROPERTIES",
    "CommitFailedError",
    "MaintenanceReport",
    "TableMismatchError",
    "append",
    "column_max",
    "delete_where",
    "ensure_table",
    "maintain",
    "open_table",
    "read_table",
    "table_exists",
    "upsert",
]

#: Table properties of every table created by :func:`ensure_table`.
DEFAULT_PROPERTIES: Final[Mapping[str, str]] = MappingProxyType(
    {
        # Opening the table reads the last checkpoint plus at most 49 commits (8 min at 10 s).
        "delta.checkpointInterval": "50",
        # Time travel and the log: one day (8,640 commits at 10 s), deleted after checkpoints.
        "delta.logRetentionDuration": "interval 1 days",
        "delta.enableExpiredLogCleanup": "true",
        # Tombstones kept in checkpoints, and the shortest retention vacuum accepts.
        "delta.deletedFileRetentionDuration": "interval 1 days",
        # Explicit, so that no engine turns them on: both need newer readers.
        "delta.enableDeletionVectors": "false",
        "delta.columnMapping.mode": "none",
    }
)

#: How long an idempotent write is retried when concurrent commits conflict with it.
CONFLICT_RETRY_S: Final = 60.0

#: Re-run a whole idempotent operation on a conflicting commit (jittered, so that two
#: writers that collided do not collide again).
_retry_on_conflict = retry(
    retry=retry_if_exception_type(CommitFailedError),
    wait=wait_random_exponential(multiplier=0.05, max=2.0),
    stop=stop_after_delay(CONFLICT_RETRY_S),
    reraise=True,
)

_SOURCE = "source"
_TARGET = "target"
_QUERY_TABLE = "delta_table"
_COMPARISONS = {"=": "=", "==": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_TIME_UNITS = {"s": "Second", "ms": "Millisecond", "us": "Microsecond", "ns": "Nanosecond"}


class TableMismatchError(ValueError):
    """A table, or rows written to it, do not have the expected columns or partitioning."""


@dataclass(frozen=True)
class MaintenanceReport:
    """What :func:`maintain` did.

    Attributes:
        compaction: delta-rs optimize metrics (``numFilesAdded``, ``numFilesRemoved``...).
        checkpoint_version: The table version the checkpoint was written at.
        log_files_deleted: Expired ``_delta_log`` files removed by the metadata cleanup.
        vacuumed_files: Data files deleted by vacuum.
        version: The table version after maintenance.
    """

    compaction: dict[str, Any]
    checkpoint_version: int
    log_files_deleted: int
    vacuumed_files: list[str]
    version: int


def table_exists(lake: Lake, name: str) -> bool:
    """Whether the Delta table ``name`` exists in the lake.

    Args:
        lake: The lake.
        name: Table name (``<root>/tables/<name>``).
    """
    return DeltaTable.is_deltatable(lake.table_uri(name), _options(lake))


def open_table(lake: Lake, name: str, *, version: int | None = None) -> DeltaTable:
    """Open an existing Delta table.

    Args:
        lake: The lake.
        name: Table name.
        version: A past version to load; the latest when None.

    Raises:
        TableNotFoundError: There is no Delta table at ``lake.table_uri(name)``.
    """
    return DeltaTable(lake.table_uri(name), version=version, storage_options=_options(lake))


def column_max(table: DeltaTable, column: str) -> Any:
    """The largest value of ``column`` in ``table`` (None if it has no rows).

    Taken from the files' statistics in the log, so no data is read, except for files
    written without a statistic for the column.
    """
    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return None
    stat = f"max.{column}"
    if stat in actions.schema.names and actions[stat].null_count == 0:
        return pc.max(actions[stat]).as_py()
    values = table.to_pyarrow_dataset().to_table(columns=[column])[column]
    return pc.max(values).as_py()


def ensure_table(
    lake: Lake,
    name: str,
    *,
    schema: pa.Schema,
    partition_by: Sequence[str] | None = None,
    description: str | None = None,
    properties: Mapping[str, str] | None = None,
) -> DeltaTable:
    """Create the table if it is missing, otherwise open it and check its layout.

    A new table gets :data:`DEFAULT_PROPERTIES` updated with ``properties``. An existing one
    is left as it is (properties included) but must have exactly the columns (names, types,
    nullability; order aside) and partition columns asked for. Concurrent callers are safe:
    the one that loses the creation race checks the winner's table.

    Args:
        lake: The lake.
        name: Table name.
        schema: The expected schema. Timestamps must carry a time zone: tz-naive ones would
            need the ``timestampNtz`` table feature (reader version 3).
        partition_by: Partition columns.
        description: Table description, for a new table.
        properties: Table properties of a new table, over :data:`DEFAULT_PROPERTIES`.

    Returns:
        The table, at its latest version.

    Raises:
        TableMismatchError: The existing table has other columns or partitioning.
        ValueError: ``schema`` needs a table feature.
    """
    expected = DeltaSchema.from_arrow(schema)
    if '"timestamp_ntz"' in expected.to_json():
        raise ValueError(
            f"table {name!r}: tz-naive timestamps need the timestampNtz table feature; "
            'use pa.timestamp(unit, tz="UTC")'
        )
    uri = lake.table_uri(name)
    options = _options(lake)
    if not DeltaTable.is_deltatable(uri, options):
        try:
            return DeltaTable.create(
                uri,
                schema=expected,
                mode="error",
                partition_by=list(partition_by) if partition_by else None,
                name=name,
                description=description,
                configuration={**DEFAULT_PROPERTIES, **(properties or {})},
                storage_options=options,
            )
        except DeltaError:
            if not DeltaTable.is_deltatable(uri, options):
                raise
    table = DeltaTable(uri, storage_options=options)
    _check_layout(name, table, expected, list(partition_by or ()))
    return table


@_retry_on_conflict
def upsert(
    lake: Lake,
    name: str,
    rows: pa.Table,
    *,
    key: Sequence[str],
    prune_column: str | None = None,
) -> dict[str, Any]:
    """MERGE ``rows`` into the table on ``key``: update every column of the rows whose key
    exists, insert the others.

    Writing the same rows again leaves the table as it was, so a batch can be replayed after
    a crash. Rows sharing a key within ``rows`` are reduced to the last one. delta-rs only
    reads the table's files whose statistics can hold the batch's keys (it derives that from
    the batch's minimum and maximum of each key column); ``prune_column`` makes the bound
    part of the merge predicate itself.

    Args:
        lake: The lake.
        name: Table name; the table must exist (see :func:`ensure_table`).
        rows: The rows, with exactly the table's columns (in any order, cast to the table's
            types).
        key: The columns that identify a row.
        prune_column: A column of ``key`` (typically the window start) whose batch minimum
            and maximum are added to the merge predicate as
            ``target.<col> >= <min> AND target.<col> <= <max>``.

    Returns:
        delta-rs merge metrics (``num_target_rows_inserted``, ``num_target_rows_updated``,
        ``num_target_files_scanned``...); an empty dict for empty ``rows``, which commit
        nothing.

    Raises:
        CommitFailedError: Concurrent commits kept conflicting with this one for
            :data:`CONFLICT_RETRY_S` seconds (delta-rs retries commits that do not conflict
            by itself; conflicting ones are run again here). Nothing was committed.
        TableMismatchError: ``rows`` lack table columns or have others.
        ValueError: ``key`` is empty or ``prune_column`` is not one of its columns.
    """
    if not key:
        raise ValueError("upsert needs at least one key column")
    if prune_column is not None and prune_column not in key:
        # Bounding a non-key column could hide a matching row and insert a duplicate.
        raise ValueError(f"prune_column {prune_column!r} must be one of the key {list(key)}")
    if rows.num_rows == 0:
        return {}
    table = open_table(lake, name)
    source = _last_per_key(_conform(name, table, rows), list(key))
    predicate = " AND ".join(f"{_TARGET}.{_q(c)} = {_SOURCE}.{_q(c)}" for c in key)
    if prune_column is not None:
        predicate += _range_predicate(source[prune_column], prune_column)
    merger = table.merge(
        source,
        predicate,
        source_alias=_SOURCE,
        target_alias=_TARGET,
        # Collecting the (small) batch lets delta-rs prune the table's files from the batch's
        # key ranges; streamed, it reads the whole table for every merge.
        streamed_exec=False,
    )
    return merger.when_matched_update_all().when_not_matched_insert_all().execute()


def append(lake: Lake, name: str, rows: pa.Table) -> None:
    """Append ``rows`` to the table (no deduplication: for bulk loads of new data).

    Args:
        lake: The lake.
        name: Table name; the table must exist (see :func:`ensure_table`).
        rows: The rows, with exactly the table's columns (in any order).

    Raises:
        TableMismatchError: ``rows`` lack table columns or have others.
    """
    if rows.num_rows == 0:
        return
    table = open_table(lake, name)
    write_deltalake(table, _conform(name, table, rows), mode="append")


@_retry_on_conflict
def delete_where(lake: Lake, name: str, predicate: str) -> int:
    """Delete the rows matching a SQL predicate, e.g. for retention.

    Args:
        lake: The lake.
        name: Table name.
        predicate: A delta-rs (DataFusion) SQL predicate, e.g.
            ``"window_start < '2026-01-01T00:00:00Z'"``.

    Returns:
        The number of rows deleted.

    Raises:
        CommitFailedError: Concurrent commits kept conflicting for :data:`CONFLICT_RETRY_S`.
    """
    table = open_table(lake, name)
    metrics = table.delete(predicate)
    deleted = metrics.get("num_deleted_rows")
    if deleted is None:
        # delta-rs omits it when files lack row counts; this module always writes them.
        return _rows_removed_by_last_commit(lake, name, table.version())
    return int(deleted)


def maintain(lake: Lake, name: str, *, retention_hours: int) -> MaintenanceReport:
    """Keep the table fast to read and open: compact, checkpoint, clean the log, vacuum.

    Compaction rewrites small files into files of ``delta.targetFileSize`` (100 MB by
    default) without changing the content; a checkpoint is written at the resulting version
    and log files older than ``delta.logRetentionDuration`` are deleted; then a full vacuum
    deletes the data files removed from the table for longer than ``retention_hours`` (and
    unreferenced files older than that, e.g. left by a failed write).

    Args:
        lake: The lake.
        name: Table name.
        retention_hours: Vacuum retention; at least the table's
            ``delta.deletedFileRetentionDuration`` (24 h for tables created here), and
            longer than any query or write that may still read the removed files.

    Returns:
        What was done.

    Raises:
        CommitFailedError: Compaction conflicts with a concurrent commit that removed the
            same files (an update or delete); call again.
        DeltaError: ``retention_hours`` is below the table's minimum.
    """
    table = open_table(lake, name)
    compaction = table.optimize.compact()
    table.update_incremental()
    table.create_checkpoint()
    checkpoint_version = table.version()
    before = _log_file_count(lake, name)
    table.cleanup_metadata()
    log_files_deleted = before - _log_file_count(lake, name)
    # Full mode: delta-rs's default (lite) mode only sees the files removed since the last
    # checkpoint, and the table's writes checkpoint every delta.checkpointInterval commits.
    vacuumed = table.vacuum(
        retention_hours=retention_hours,
        dry_run=False,
        enforce_retention_duration=True,
        full=True,
    )
    table.update_incremental()
    return MaintenanceReport(
        compaction=compaction,
        checkpoint_version=checkpoint_version,
        log_files_deleted=log_files_deleted,
        vacuumed_files=vacuumed,
        version=table.version(),
    )


def read_table(
    lake: Lake,
    name: str,
    *,
    columns: Sequence[str] | None = None,
    filters: str | FilterType | None = None,
    version: int | None = None,
) -> pa.Table:
    """Read a table, or the rows and columns of it asked for, into memory.

    The query runs in delta-rs (DataFusion), which skips the files and row groups whose
    statistics exclude ``filters``.

    Args:
        lake: The lake.
        name: Table name.
        columns: Columns to read; all when None.
        filters: Rows to read: a SQL predicate as for :func:`delete_where`, or filter tuples
            in disjunctive normal form, e.g. ``[("metric", "=", "cpu")]`` (operators ``=``,
            ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``in``, ``not in``); all rows when None.
        version: A past version to read; the latest when None.

    Returns:
        The rows, in no particular order, with the table's column types.

    Raises:
        TableMismatchError: ``columns`` or ``filters`` name columns the table lacks.
    """
    table = open_table(lake, name, version=version)
    schema = pa.schema(table.schema().to_arrow())
    names = list(columns) if columns is not None else schema.names
    if unknown := [c for c in names if c not in schema.names]:
        raise TableMismatchError(f"Delta table {name!r} has no columns {unknown}")
    # Quoted identifiers; the predicate is the caller's SQL by design.
    sql = f"SELECT {', '.join(_q(c) for c in names)} FROM {_q(_QUERY_TABLE)}"  # noqa: S608
    where = filters if isinstance(filters, str) else _dnf_to_sql(name, filters, schema)
    if where:
        sql += f" WHERE {where}"
    result = pa.table(QueryBuilder().register(_QUERY_TABLE, table).execute(sql))
    # DataFusion hands out string and binary views; give back the table's own types.
    return result.cast(pa.schema([schema.field(c) for c in names]))


def _options(lake: Lake) -> dict[str, str] | None:
    return lake.delta_options


def _q(column: str) -> str:
    """A column name quoted for delta-rs SQL (``count``, ``min``... are keywords)."""
    return "`" + column.replace("`", "``") + "`"


def _fields(schema: DeltaSchema) -> dict[str, tuple[str, bool]]:
    return {
        f["name"]: (
            f["type"] if isinstance(f["type"], str) else json.dumps(f["type"], sort_keys=True),
            bool(f["nullable"]),
        )
        for f in json.loads(schema.to_json())["fields"]
    }


def _describe(field: tuple[str, bool]) -> str:
    return field[0] + ("" if field[1] else " NOT NULL")


def _check_layout(
    name: str, table: DeltaTable, expected: DeltaSchema, partition_by: list[str]
) -> None:
    actual_fields, expected_fields = _fields(table.schema()), _fields(expected)
    problems = []
    if missing := [c for c in expected_fields if c not in actual_fields]:
        problems.append(f"missing columns: {', '.join(missing)}")
    if extra := [c for c in actual_fields if c not in expected_fields]:
        problems.append(f"unexpected columns: {', '.join(extra)}")
    if differing := [
        f"{c} (table: {_describe(actual_fields[c])}, expected: {_describe(expected_fields[c])})"
        for c in expected_fields
        if c in actual_fields and actual_fields[c] != expected_fields[c]
    ]:
        problems.append(f"columns of another type or nullability: {', '.join(differing)}")
    actual_partitions = table.metadata().partition_columns
    if actual_partitions != partition_by:
        problems.append(f"partitioned by {actual_partitions}, expected {partition_by}")
    if problems:
        raise TableMismatchError(
            f"Delta table {name!r} at {table.table_uri} does not have the expected layout: "
            + "; ".join(problems)
        )


def _conform(name: str, table: DeltaTable, rows: pa.Table) -> pa.Table:
    """``rows`` with the table's columns, in its order and with its types."""
    schema = pa.schema(table.schema().to_arrow())
    missing = [c for c in schema.names if c not in rows.column_names]
    extra = [c for c in rows.column_names if c not in schema.names]
    if missing or extra:
        raise TableMismatchError(
            f"rows for Delta table {name!r}: missing columns {missing}, unknown columns {extra}"
        )
    return rows.select(schema.names).cast(schema)


def _last_per_key(rows: pa.Table, key: list[str]) -> pa.Table:
    """``rows`` without earlier rows sharing a key with a later one (order kept)."""
    last = (
        rows.select(key)
        .append_column("__row", pa.array(range(rows.num_rows), pa.int64()))
        .group_by(key, use_threads=False)
        .aggregate([("__row", "max")])
        .column("__row_max")
    )
    if len(last) == rows.num_rows:
        return rows
    return rows.take(last.sort())


def _dnf_to_sql(name: str, filters: FilterType | None, schema: pa.Schema) -> str:
    """Filter tuples in disjunctive normal form as a SQL predicate ("" for none)."""
    if not filters:
        return ""
    disjunction = cast(
        "list[list[tuple[str, str, Any]]]",
        filters if filters and isinstance(filters[0], list) else [filters],
    )
    terms = []
    for conjunction in disjunction:
        tests = []
        for column, op, value in conjunction:
            if column not in schema.names:
                raise TableMismatchError(f"Delta table {name!r} has no column {column!r}")
            kind = schema.field(column).type
            if op in ("in", "not in"):
                values = ", ".join(_sql_literal(pa.scalar(v, kind)) for v in value)
                tests.append(f"{_q(column)} {op.upper()} ({values})")
            elif op in _COMPARISONS:
                tests.append(
                    f"{_q(column)} {_COMPARISONS[op]} {_sql_literal(pa.scalar(value, kind))}"
                )
            else:
                raise ValueError(f"unsupported filter operator {op!r}")
        terms.append("(" + " AND ".join(tests) + ")")
    return " OR ".join(terms)


def _range_predicate(values: pa.ChunkedArray, column: str) -> str:
    """`` AND target.col >= <min> AND target.col <= <max>`` for the batch's values."""
    bounds = pc.min_max(values)
    low, high = bounds["min"], bounds["max"]
    if not low.is_valid:  # only nulls, which match nothing
        return ""
    target = f"{_TARGET}.{_q(column)}"
    return f" AND {target} >= {_sql_literal(low)} AND {target} <= {_sql_literal(high)}"


def _sql_literal(value: pa.Scalar) -> str:
    """A delta-rs SQL literal of exactly ``value``'s type (so it prunes on file statistics)."""
    kind = value.type
    if pa.types.is_timestamp(kind):
        raw = value.cast(pa.int64()).as_py()
        zone = f'Some("{kind.tz}")' if kind.tz else "None"
        return f"arrow_cast({raw}, 'Timestamp({_TIME_UNITS[kind.unit]}, {zone})')"
    if pa.types.is_date32(kind):
        return f"arrow_cast('{value.as_py().isoformat()}', 'Date32')"
    if pa.types.is_boolean(kind):
        return "true" if value.as_py() else "false"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return repr(value.as_py())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text: str = value.as_py()
        return "'" + text.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for values of type {kind}")


def _log_file_count(lake: Lake, name: str) -> int:
    selector = pafs.FileSelector(lake.path("tables", name, "_delta_log"), allow_not_found=True)
    return len(lake.fs.get_file_info(selector))


def _rows_removed_by_last_commit(lake: Lake, name: str, version: int) -> int:
    """Rows at ``version - 1`` minus rows at ``version``, counted from the data files."""
    before = open_table(lake, name, version=version - 1).to_pyarrow_dataset().count_rows()
    after = open_table(lake, name, version=version).to_pyarrow_dataset().count_rows()
    return int(before - after)
