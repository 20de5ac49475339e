"""Trino over the lake: the statements that register the lake's Delta tables in Trino's Delta
Lake connector, and the serving views that Grafana (or anyone with a SQL client) queries.

The views are generated from the same definitions as the Python query engine
(:func:`~fleetlens.serving.tiers.tiers`, the schemas' table names and tag columns), and they
split time at the batch watermarks as :func:`~fleetlens.serving.tiers.plan_query` does. One
view per rollup tier, named after its resolution (``fleet_1m``, ``fleet_1h``, ``fleet_1d``)::

    fleet_1h = rollup_1h                              before wm_1h
         UNION ALL hour(rollup_1m UNION ALL speed_1m) from wm_1h on (rollup_1m before wm_1m)

The watermarks are read from ``batch_watermarks`` inside each view, so the views follow the
batch layer without being redefined. A missing watermark hands its tier's part to the next
finer source, down to ``speed_1m``, which serves everything when there is none.

Rows of the view's own tier pass through (Trino pushes a time filter down to the files'
statistics); finer rows are re-aggregated to the view's resolution, together, so a bucket
that straddles two finer sources is still one row: ``sum(count)``, ``sum(sum)``,
``min(min)``, ``max(max)``, ``max_by(last, last_ts)``. That rests on the watermarks being
aligned to their tier's resolution, as the batch jobs keep them (see
:mod:`fleetlens.serving.tiers`). Rows are grouped by the tags too, as the Python merge
groups by the ones asked for.

Quantiles: Trino cannot merge the DataSketches KLL sketches, so the views carry no
``sketch``. ``p50``/``p95``/``p99`` are a source window's stored values where the row is one
source window (the view's own tier, and a re-aggregated bucket of a single window), NULL
otherwise. The Python engine (``GET /api/v1/query``) merges sketches for the rest.

Retention is not applied: a view's finer parts hold what the finer tables still keep, so
ranges longer than a finer table's retention belong on a coarser view.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlglot import exp

from fleetlens.alerts.control import ACKS_TABLE, SILENCES_TABLE
from fleetlens.alerts.history import ALERTS_TABLE
from fleetlens.config import RetentionSettings, Settings
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import (
    BASELINE,
    QUARANTINE,
    RAW_POINTS,
    ROLLUP_1D,
    ROLLUP_1H,
    ROLLUP_1M,
    SPEED_1M,
    SPEED_LATE_1M,
    TAG_COLUMNS,
    WATERMARKS,
    WINDOW_KEY,
)
from fleetlens.serving.tiers import Tier, format_step, tiers
from spark_jobs.control import LANDING_FILES, PARTITIONS

__all__ = [
    "DEFAULT_CATALOG",
    "DEFAULT_SCHEMA",
    "LAKE_TABLES",
    "VIEW_COLUMNS",
    "register_statements",
    "serving_tiers",
    "serving_views",
    "statements",
    "view_name",
]

DEFAULT_CATALOG = "delta"
DEFAULT_SCHEMA = "fleetlens"

#: Every Delta table the project writes, each named where it is written.
LAKE_TABLES = (
    RAW_POINTS,
    QUARANTINE,
    ROLLUP_1M,
    ROLLUP_1H,
    ROLLUP_1D,
    BASELINE,
    SPEED_1M,
    SPEED_LATE_1M,
    WATERMARKS,
    PARTITIONS,
    LANDING_FILES,
    ALERTS_TABLE,
    SILENCES_TABLE,
    ACKS_TABLE,
)

#: The columns of every serving view, in this order.
VIEW_COLUMNS = (
    "window_start",
    "server_id",
    "metric",
    *TAG_COLUMNS,
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "last",
    "last_ts",
    "p50",
    "p95",
    "p99",
)
#: The rollup columns a view reads from each source table.
_SOURCE_COLUMNS = [c for c in VIEW_COLUMNS if c != "avg"]
_QUANTILES = ("p50", "p95", "p99")
#: ``date_trunc`` units of the tiers' resolutions.
_TRUNC_UNITS = {60: "minute", 3600: "hour", 86400: "day"}
_DIALECT = "trino"


def serving_tiers(retention: RetentionSettings) -> tuple[Tier, ...]:
    """The tiers that get a view: the rollups (raw points have no speed-layer counterpart)."""
    return tuple(t for t in tiers(retention) if not t.is_raw)


def view_name(tier: Tier) -> str:
    """The view of a tier: ``fleet_`` and its resolution (``fleet_1h``)."""
    return f"fleet_{format_step(tier.resolution_s)}"


def _table(name: str, catalog: str, schema: str, alias: str | None = None) -> exp.Table:
    return exp.table_(name, db=schema, catalog=catalog, alias=alias)


def _col(name: str, table: str = "t") -> exp.Column:
    return exp.column(name, table=table)


def _bounds(cascade: Sequence[Tier], catalog: str, schema: str) -> exp.Select:
    """One row: per source of the cascade, where its part ends (``<table>_end``).

    A part ends at the latest watermark among its tier and the coarser ones (a finer tier
    never serves before a coarser one's watermark): NULL if none of them has one.
    """
    ends = [
        exp.alias_(
            exp.Filter(
                this=exp.Max(this=exp.column("complete_until")),
                expression=exp.Where(
                    this=exp.column("table_name").isin(*(t.table for t in cascade[: i + 1]))
                ),
            ),
            f"{tier.table}_end",
        )
        for i, tier in enumerate(cascade)
    ]
    return exp.select(*ends).from_(_table(WATERMARKS, catalog, schema))


def _avg(table: str) -> exp.Expression:
    return exp.Div(this=_col("sum", table), expression=_col("count", table))


def _part(
    table: str,
    start: str | None,
    end: str | None,
    catalog: str,
    schema: str,
    *,
    with_avg: bool,
) -> exp.Select:
    """``table``'s rows with ``window_start`` in ``[bounds.start, bounds.end)``, with the
    view's columns (``with_avg``) or the rollup columns. A NULL start is open; a NULL end
    is empty (no watermark: the part serves nothing)."""
    columns = VIEW_COLUMNS if with_avg else _SOURCE_COLUMNS
    rows = (
        exp.select(*(exp.alias_(_avg("t"), c) if c == "avg" else _col(c) for c in columns))
        .from_(_table(table, catalog, schema, alias="t"))
        .join(exp.to_table("bounds"), join_type="cross")
    )
    if start is not None:
        bound = _col(start, "bounds")
        rows = rows.where(exp.or_(bound.is_(exp.null()), _col("window_start") >= bound))
    if end is not None:
        rows = rows.where(_col("window_start") < _col(end, "bounds"))
    return rows


def _reaggregated(parts: Sequence[exp.Select], resolution_s: int) -> exp.Select:
    """Finer parts merged into windows of ``resolution_s``, as the Python merge does."""
    unit = _TRUNC_UNITS[resolution_s]
    bucket = exp.func("date_trunc", exp.Literal.string(unit), _col("window_start", "p"))
    union: exp.Query = parts[0]
    for part in parts[1:]:
        union = exp.union(union, part, distinct=False)
    one_window = exp.EQ(this=exp.Count(this=exp.Star()), expression=exp.Literal.number(1))
    merged_count, merged_sum = exp.Sum(this=_col("count", "p")), exp.Sum(this=_col("sum", "p"))
    merged = {
        "window_start": bucket,
        "count": merged_count,
        "sum": merged_sum,
        "min": exp.Min(this=_col("min", "p")),
        "max": exp.Max(this=_col("max", "p")),
        "avg": exp.Div(this=merged_sum, expression=merged_count),
        "last": exp.func("max_by", _col("last", "p"), _col("last_ts", "p")),
        "last_ts": exp.Max(this=_col("last_ts", "p")),
        # A single window's stored quantile; a merge of several needs the sketches.
        **{
            q: exp.Case().when(one_window, exp.Max(this=_col(q, "p"))).else_(exp.null())
            for q in _QUANTILES
        },
    }
    keys = [c for c in (*WINDOW_KEY, *TAG_COLUMNS) if c != "window_start"]
    columns = [exp.alias_(merged[c], c) if c in merged else _col(c, "p") for c in VIEW_COLUMNS]
    return (
        exp.select(*columns)
        .from_(union.subquery("p"))
        .group_by(bucket, *(_col(k, "p") for k in keys))
    )


def serving_views(
    retention: RetentionSettings,
    *,
    catalog: str = DEFAULT_CATALOG,
    schema: str = DEFAULT_SCHEMA,
    speed_resolution_s: int = 60,
) -> dict[str, exp.Create]:
    """``CREATE OR REPLACE VIEW`` per serving tier, by view name (see the module's doc).

    Args:
        retention: The batch tables' retention (the tiers' definition needs it).
        catalog: The Trino catalog of the lake's tables.
        schema: The schema they are registered in; the views go there too.
        speed_resolution_s: The speed layer's window width (``speed.window_s``).
    """
    views: dict[str, exp.Create] = {}
    chain = serving_tiers(retention)
    for tier in chain:
        # From the view's tier down to the finest rollup, then the speed layer: the order
        # in which plan_query hands the range over.
        cascade = list(chain[chain.index(tier) :: -1])
        ends = [f"{t.table}_end" for t in cascade]
        # Rows with the view's resolution pass through; finer ones are merged, together.
        query: exp.Query = _part(tier.table, None, ends[0], catalog, schema, with_avg=True)
        finer: list[exp.Select] = []
        parts = [(t.table, t.resolution_s) for t in cascade[1:]]
        parts.append((SPEED_1M, speed_resolution_s))
        for i, (table, resolution_s) in enumerate(parts):
            start, end = ends[i], ends[i + 1] if i + 1 < len(ends) else None
            if resolution_s == tier.resolution_s:
                part = _part(table, start, end, catalog, schema, with_avg=True)
                query = exp.union(query, part, distinct=False)
            else:
                finer.append(_part(table, start, end, catalog, schema, with_avg=False))
        if finer:
            query = exp.union(query, _reaggregated(finer, tier.resolution_s), distinct=False)
        query = query.with_("bounds", as_=_bounds(cascade, catalog, schema))
        name = view_name(tier)
        views[name] = exp.Create(
            this=_table(name, catalog, schema),
            kind="VIEW",
            replace=True,
            expression=query,
        )
    return views


def _location(lake: Lake, name: str) -> str:
    uri = lake.table_uri(name)
    # Trino opens locations by scheme: a local lake's paths become file:// URIs.
    return uri if "://" in uri else Path(uri).as_uri()


def register_statements(
    lake: Lake,
    tables: Sequence[str] = LAKE_TABLES,
    *,
    catalog: str = DEFAULT_CATALOG,
    schema: str = DEFAULT_SCHEMA,
) -> list[str]:
    """``CALL <catalog>.system.register_table(...)`` for each table at its lake location
    (the catalog needs ``delta.register-table-procedure.enabled=true``)."""
    calls = []
    for name in tables:
        procedure = exp.Dot.build(
            [
                exp.to_identifier(catalog),
                exp.to_identifier("system"),
                exp.Anonymous(
                    this="register_table",
                    expressions=[
                        exp.Kwarg(this=exp.var(key), expression=exp.Literal.string(value))
                        for key, value in (
                            ("schema_name", schema),
                            ("table_name", name),
                            ("table_location", _location(lake, name)),
                        )
                    ],
                ),
            ]
        )
        # sqlglot has no CALL expression; the procedure call itself is built and checked.
        calls.append(f"CALL {procedure.sql(dialect=_DIALECT)}")
    return calls


def statements(
    settings: Settings,
    *,
    catalog: str = DEFAULT_CATALOG,
    schema: str = DEFAULT_SCHEMA,
    tables: Sequence[str] = LAKE_TABLES,
    pretty: bool = True,
) -> list[str]:
    """Everything that sets Trino up over the lake of ``settings``, in order: the schema,
    the tables' registrations, the serving views. Without a trailing ``;``.

    Args:
        settings: The settings (lake root, retention, speed window).
        catalog: The Delta Lake catalog.
        schema: The schema for the tables and views.
        tables: The tables to register (e.g. only those that exist already).
        pretty: Indent the views' SQL.
    """
    create_schema = exp.Create(
        this=exp.Table(this=exp.to_identifier(schema), db=exp.to_identifier(catalog)),
        kind="SCHEMA",
        exists=True,
    )
    views = serving_views(
        settings.batch.retention,
        catalog=catalog,
        schema=schema,
        speed_resolution_s=settings.speed.window_s,
    )
    return [
        create_schema.sql(dialect=_DIALECT),
        *register_statements(Lake(settings.lake), tables, catalog=catalog, schema=schema),
        *(view.sql(dialect=_DIALECT, pretty=pretty) for view in views.values()),
    ]
