"""Grafana dashboards as code (``grafana-foundation-sdk``), over the Trino serving views.

Four dashboards: the fleet overview, a server's drill-down, capacity (daily p95 trends) and
the pipeline's health. Every panel queries Trino through the ``trino-datasource`` plugin,
with its macros (``$__timeFilter(column)``) and Grafana's variables; the tables and views
are named from the same definitions as the SQL that creates them
(:mod:`fleetlens.serving.trino`). ``fleetlens grafana dashboards --out DIR`` writes them for
Grafana's file provisioning (``docker/grafana/``).

The views' quantiles are a single source window's (see :mod:`fleetlens.serving.trino`): the
capacity panels use ``fleet_1d``'s days before the daily watermark, where every row is one
``rollup_1d`` window; the current day has no p95 there.
"""

# The panels' SQL is Grafana's to run, built from the project's own names: no user input.
# ruff: noqa: S608

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table, text, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

from fleetlens.config import Settings
from fleetlens.lake.schemas import (
    QUARANTINE,
    RAW_POINTS,
    ROLLUP_1D,
    ROLLUP_1H,
    ROLLUP_1M,
    SPEED_1M,
    SPEED_LATE_1M,
    TAG_COLUMNS,
    WATERMARKS,
)
from fleetlens.serving.tiers import Tier, format_step
from fleetlens.serving.trino import DEFAULT_CATALOG, DEFAULT_SCHEMA, serving_tiers, view_name
from spark_jobs.control import PARTITIONS

__all__ = [
    "CAPACITY_METRICS",
    "DATASOURCE",
    "TrinoQuery",
    "TrinoTarget",
    "build_dashboards",
    "dashboard_json",
    "write_dashboards",
]

#: The provisioned Trino data source (``docker/grafana/provisioning/datasources``).
DATASOURCE = model.DataSourceRef(type_val="trino-datasource", uid="fleetlens-trino")
#: The metrics of the capacity dashboard.
CAPACITY_METRICS = ("disk_pct", "cpu_pct", "mem_pct")
#: The prefix under which the quality job marks the partitions it passed in
#: ``batch_partitions`` (``spark_jobs.jobs._verified``).
_VERIFIED = "quality:"
_TIME_SERIES, _TABLE = 0, 1


class TrinoQuery(cogvariants.Dataquery):
    """A query of the ``trino-datasource`` plugin: raw SQL and the frame format (0: time
    series, 1: table)."""

    def __init__(self, ref_id: str = "A", raw_sql: str = "", format_val: int = _TIME_SERIES):
        self.ref_id = ref_id
        self.raw_sql = raw_sql
        self.format_val = format_val

    def to_json(self) -> dict[str, object]:
        """The query as Grafana stores it in a panel's ``targets``."""
        return {
            "datasource": DATASOURCE.to_json(),
            "format": self.format_val,
            "rawSQL": self.raw_sql,
            "refId": self.ref_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """The query of a stored panel target."""
        return cls(data.get("refId", "A"), data.get("rawSQL", ""), data.get("format", 0))


# Panels read back from JSON decode their targets with this, not as unknown queries.
cogruntime.register_dataquery_variant(
    cogruntime.DataqueryConfig(identifier="trino-datasource", from_json_hook=TrinoQuery.from_json)
)


class TrinoTarget(cogbuilder.Builder[TrinoQuery]):
    """Builds a :class:`TrinoQuery` for a panel's ``with_target``."""

    def __init__(self, sql: str, *, table_format: bool = False, ref_id: str = "A") -> None:
        self._query = TrinoQuery(ref_id, _dedent(sql), _TABLE if table_format else _TIME_SERIES)

    def build(self) -> TrinoQuery:
        """The query."""
        return self._query


def _dedent(sql: str) -> str:
    lines = [line.strip() for line in sql.strip().splitlines()]
    return "\n".join(line for line in lines if line)


def _t(name: str) -> str:
    return f"{DEFAULT_CATALOG}.{DEFAULT_SCHEMA}.{name}"


def _resolution(chain: Sequence[Tier], default: Tier) -> dash.CustomVariable:
    """The view to read, by its resolution (``1m : fleet_1m``...)."""
    values = ",".join(f"{format_step(t.resolution_s)} : {view_name(t)}" for t in chain)
    current = model.VariableOption(
        selected=True, text=format_step(default.resolution_s), value=view_name(default)
    )
    return dash.CustomVariable("view").label("resolution").values(values).current(current)


def _query_variable(name: str, sql: str, *, multi: bool) -> dash.QueryVariable:
    variable = (
        dash.QueryVariable(name)
        .datasource(DATASOURCE)
        .query(_dedent(sql))
        .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )
    return variable.multi(True).include_all(True) if multi else variable


def _metric_variable(metrics: Sequence[str], selected: Sequence[str]) -> dash.CustomVariable:
    return (
        dash.CustomVariable("metric")
        .values(",".join(metrics))
        .multi(True)
        .current(model.VariableOption(selected=True, text=list(selected), value=list(selected)))
    )


def _base(uid: str, title: str, description: str) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["fleetlens"])
        .timezone("utc")
        .refresh("1m")
        .time("now-24h", "now")
    )


def _ts(title: str, sql: str, unit: str = "") -> timeseries.Panel:
    panel = timeseries.Panel().title(title).datasource(DATASOURCE).with_target(TrinoTarget(sql))
    return panel.unit(unit) if unit else panel


def _table(title: str, sql: str) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .with_target(TrinoTarget(sql, table_format=True))
    )


def _stat(title: str, sql: str, unit: str = "") -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .with_target(TrinoTarget(sql, table_format=True))
        .height(4)
        .span(6)
    )
    return panel.unit(unit) if unit else panel


def _units(settings: Settings) -> dict[str, str]:
    """Grafana units of the contract's metrics (those it knows)."""
    known = {"percent": "percent", "bytes/s": "Bps", "ms": "ms", "count": "short"}
    return {m: known.get(spec.unit, "") for m, spec in settings.contract.metrics.items()}


def fleet_overview(settings: Settings) -> dash.Dashboard:
    """The fleet at a glance: servers reporting, each metric's mean by service, the
    busiest servers; filtered by tenant and service."""
    chain = serving_tiers(settings.batch.retention)
    hourly = next(t for t in chain if t.table == ROLLUP_1H)
    minute = next(t for t in chain if t.table == ROLLUP_1M)
    metrics = sorted(settings.contract.metrics)
    scope = "tenant IN (${tenant:sqlstring}) AND service IN (${service:sqlstring})"
    servers = f"SELECT DISTINCT {{tag}} FROM {_t(view_name(chain[-1]))} ORDER BY 1"
    return (
        _base(
            "fleetlens-overview",
            "FleetLens / Fleet overview",
            "Batch rollups before the watermarks, the speed layer after (Trino views).",
        )
        .with_variable(_query_variable("tenant", servers.format(tag="tenant"), multi=True))
        .with_variable(_query_variable("service", servers.format(tag="service"), multi=True))
        .with_variable(_resolution(chain, hourly))
        .with_variable(_metric_variable(metrics, CAPACITY_METRICS))
        .with_panel(
            _stat(
                "Servers reporting (last 15 min)",
                f"""
                SELECT count(DISTINCT server_id) AS servers
                FROM {_t(view_name(minute))}
                WHERE window_start >= current_timestamp - INTERVAL '15' MINUTE AND {scope}
                """,
            )
        )
        .with_panel(
            _stat(
                "Samples in range",
                f"""
                SELECT sum(count) AS samples FROM {_t("${view}")}
                WHERE $__timeFilter(window_start) AND {scope}
                """,
                "short",
            )
        )
        .with_panel(
            _ts(
                "${metric}: mean by service",
                f"""
                SELECT window_start AS time, service, sum(sum) / sum(count) AS "${{metric}}"
                FROM {_t("${view}")}
                WHERE $__timeFilter(window_start) AND metric = '${{metric}}' AND {scope}
                GROUP BY 1, 2 ORDER BY 1
                """,
            )
            .repeat("metric")
            .repeat_direction("h")
            .max_per_row(3)
            .height(8)
        )
        .with_panel(
            _table(
                "Busiest servers by mean CPU (range)",
                f"""
                SELECT server_id, service, cluster, sum(sum) / sum(count) AS cpu_mean,
                max(max) AS cpu_max
                FROM {_t("${view}")}
                WHERE $__timeFilter(window_start) AND metric = 'cpu_pct' AND {scope}
                GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 15
                """,
            )
            .span(24)
            .data_links(
                [
                    dash.DashboardLink("Drill down").url(
                        "/d/fleetlens-server?var-server=${__data.fields.server_id}"
                        "&${__url_time_range}"
                    )
                ]
            )
        )
    )


def server_drilldown(settings: Settings) -> dash.Dashboard:
    """One server: its tags, latest values, and every metric's avg/min/max/p95."""
    chain = serving_tiers(settings.batch.retention)
    hourly = next(t for t in chain if t.table == ROLLUP_1H)
    minute = next(t for t in chain if t.table == ROLLUP_1M)
    metrics = sorted(settings.contract.metrics)
    tags = ", ".join(TAG_COLUMNS)
    return (
        _base(
            "fleetlens-server",
            "FleetLens / Server",
            "One server's metrics; p95 where a row is one stored window (see the views).",
        )
        .with_variable(
            _query_variable(
                "server",
                f"SELECT DISTINCT server_id FROM {_t(view_name(chain[-1]))} ORDER BY 1",
                multi=False,
            )
        )
        .with_variable(_resolution(chain, hourly))
        .with_variable(_metric_variable(metrics, metrics))
        .with_panel(
            _table(
                "Tags",
                f"""
                SELECT {tags}, min(window_start) AS first_seen, max(last_ts) AS last_seen
                FROM {_t(view_name(chain[-1]))}
                WHERE server_id = '${{server}}'
                GROUP BY {tags}
                """,
            )
            .height(5)
            .span(12)
        )
        .with_panel(
            _table(
                "Latest values",
                f"""
                SELECT metric, max_by(last, last_ts) AS last, max(last_ts) AS at
                FROM {_t(view_name(minute))}
                WHERE server_id = '${{server}}' AND $__timeFilter(window_start)
                GROUP BY 1 ORDER BY 1
                """,
            )
            .height(5)
            .span(12)
        )
        .with_panel(
            _ts(
                "${metric}",
                f"""
                SELECT window_start AS time, avg, min, max, p95
                FROM {_t("${view}")}
                WHERE server_id = '${{server}}' AND metric = '${{metric}}'
                AND $__timeFilter(window_start)
                ORDER BY 1
                """,
            )
            .repeat("metric")
            .repeat_direction("h")
            .max_per_row(2)
            .height(8)
        )
    )


def capacity(settings: Settings) -> dash.Dashboard:
    """Daily p95 trends of disk, CPU and memory: the busiest server and the median one, and
    the servers closest to their limit."""
    daily = next(t for t in serving_tiers(settings.batch.retention) if t.table == ROLLUP_1D)
    units = _units(settings)
    board = _base(
        "fleetlens-capacity",
        "FleetLens / Capacity",
        "Daily p95 per server from rollup_1d (days before the daily watermark).",
    ).time("now-90d", "now")
    for metric in CAPACITY_METRICS:
        board = board.with_panel(
            _ts(
                f"{metric}: daily p95, busiest and median server",
                f"""
                SELECT window_start AS time, max(p95) AS busiest_server,
                approx_percentile(p95, 0.5) AS median_server
                FROM {_t(view_name(daily))}
                WHERE metric = '{metric}' AND p95 IS NOT NULL AND $__timeFilter(window_start)
                GROUP BY 1 ORDER BY 1
                """,
                units.get(metric, ""),
            )
            .span(8)
            .height(8)
        )
    for metric in CAPACITY_METRICS:
        board = board.with_panel(
            _table(
                f"Highest latest daily p95: {metric}",
                f"""
                SELECT server_id, service, cluster, max_by(p95, window_start) AS p95,
                max(window_start) AS day
                FROM {_t(view_name(daily))}
                WHERE metric = '{metric}' AND p95 IS NOT NULL AND $__timeFilter(window_start)
                GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 20
                """,
            )
            .span(8)
            .height(10)
        )
    return board


def pipeline_health(settings: Settings) -> dash.Dashboard:
    """The pipeline: watermarks and their lag, the speed layer's freshness and late
    samples, quarantined rows, and the partitions the quality job passed or has yet to."""
    checked = ", ".join(f"'{t}'" for t in (RAW_POINTS, ROLLUP_1M, ROLLUP_1H, ROLLUP_1D))
    partitions = _t(PARTITIONS)
    return (
        _base(
            "fleetlens-pipeline",
            "FleetLens / Pipeline health",
            "Watermarks, speed-layer lateness, quarantine and quality verification.",
        )
        .with_panel(
            _stat(
                "Speed layer: newest window age",
                f"""
                SELECT date_diff('second', max(window_start), current_timestamp) AS age
                FROM {_t(SPEED_1M)}
                WHERE window_start >= current_timestamp - INTERVAL '1' DAY
                """,
                "s",
            )
        )
        .with_panel(
            _stat(
                "Late samples dropped (range)",
                f"""
                SELECT coalesce(sum(late_dropped), 0) AS late_dropped
                FROM {_t(SPEED_LATE_1M)} WHERE $__timeFilter(window_start)
                """,
                "short",
            )
        )
        .with_panel(
            _stat(
                "Quarantined rows (range)",
                f"""
                SELECT count(*) AS quarantined FROM {_t(QUARANTINE)}
                WHERE $__timeFilter(ingest_ts)
                """,
                "short",
            )
        )
        .with_panel(
            _table(
                "Batch watermarks",
                f"""
                SELECT table_name, complete_until,
                date_diff('minute', complete_until, current_timestamp) AS lag_minutes,
                updated_at, run_id
                FROM {_t(WATERMARKS)} ORDER BY table_name
                """,
            )
            .height(6)
            .span(24)
        )
        .with_panel(
            _ts(
                "Late samples dropped by the speed layer, by topic",
                f"""
                SELECT window_start AS time, topic, sum(late_dropped) AS late_dropped
                FROM {_t(SPEED_LATE_1M)} WHERE $__timeFilter(window_start)
                GROUP BY 1, 2 ORDER BY 1
                """,
                "short",
            )
            .span(12)
            .height(8)
        )
        .with_panel(
            _ts(
                "Quarantined rows per hour, by reason",
                f"""
                SELECT date_trunc('hour', ingest_ts) AS time, reason, count(*) AS quarantined
                FROM {_t(QUARANTINE)} WHERE $__timeFilter(ingest_ts)
                GROUP BY 1, 2 ORDER BY 1
                """,
                "short",
            )
            .span(12)
            .height(8)
        )
        .with_panel(
            _ts(
                "Partitions passed by the quality job, per hour",
                f"""
                SELECT date_trunc('hour', updated_at) AS time, table_name, count(*) AS passed
                FROM {partitions}
                WHERE table_name LIKE '{_VERIFIED}%' AND $__timeFilter(updated_at)
                GROUP BY 1, 2 ORDER BY 1
                """,
                "short",
            )
            .span(12)
            .height(8)
        )
        .with_panel(
            _table(
                "Partitions awaiting verification",
                f"""
                SELECT b.table_name, b.date, b.hour, b.updated_at, q.updated_at AS verified_at
                FROM {partitions} AS b
                LEFT JOIN {partitions} AS q
                ON q.table_name = concat('{_VERIFIED}', b.table_name)
                AND q.date = b.date AND q.hour = b.hour
                WHERE b.table_name IN ({checked})
                AND (q.updated_at IS NULL OR q.updated_at < b.updated_at)
                ORDER BY b.updated_at DESC LIMIT 50
                """,
            )
            .span(12)
            .height(8)
        )
        .with_panel(
            text.Panel()
            .title("Quality reports")
            .content(
                "The quality job's full reports (Great Expectations results, failed "
                "expectations with examples) are JSON files under `<lake>/_quality/`, not a "
                "table; `fleetlens spark run quality` prints their summaries."
            )
            .span(24)
            .height(3)
        )
    )


def build_dashboards(settings: Settings) -> dict[str, model.Dashboard]:
    """The dashboards, by file name (``<uid>.json``)."""
    boards = (fleet_overview, server_drilldown, capacity, pipeline_health)
    built = [make(settings).build() for make in boards]
    return {f"{board.uid}.json": board for board in built}


def dashboard_json(board: model.Dashboard) -> str:
    """A dashboard as Grafana's file provisioning reads it, stable for version control."""
    return json.dumps(board, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def write_dashboards(settings: Settings, out: Path) -> list[Path]:
    """Write every dashboard's JSON into ``out`` (created); the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, board in build_dashboards(settings).items():
        path = out / name
        path.write_text(dashboard_json(board))
        paths.append(path)
    return paths
