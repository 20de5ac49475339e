"""``fleetlens report capacity``: the capacity-planning report, from the lake to a
self-contained HTML file and CSV tables.

Reads the daily quantile of each threshold metric per group through the query engine (the
sketches of the group's servers merged per day), forecasts it (:mod:`.forecast`), ranks the
servers most at risk by their own trend, and writes ``DIR/capacity.html`` (figures inline,
nothing fetched when it is opened) with ``history.csv``, ``forecast.csv``, ``headroom.csv``,
``backtest.csv`` and ``servers_at_risk.csv`` beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from jinja2 import Environment, PackageLoader, select_autoescape

from fleetlens.config import Settings
from fleetlens.reports.figures import forecast_grid, to_svg
from fleetlens.reports.forecast import CapacityForecast, forecast_capacity, linear_trend
from fleetlens.serving.query import QueryEngine
from fleetlens.serving.tiers import day_floor

__all__ = ["GROUPINGS", "CapacityReport", "daily_history", "servers_at_risk", "write_report"]

GROUPINGS = ("service", "cluster", "region")
Grouping = Literal["service", "cluster", "region"]
#: Days of each server's own history its trend is fitted on.
_SERVER_TREND_DAYS = 28


@dataclass(frozen=True)
class CapacityReport:
    """What :func:`write_report` wrote."""

    html: Path
    tables: dict[str, Path]
    forecast: CapacityForecast
    at_risk: pl.DataFrame


def daily_history(
    engine: QueryEngine,
    metrics: list[str],
    *,
    start: datetime,
    end: datetime,
    group_by: str,
    statistic: str,
    tenant: str | None = None,
) -> pl.DataFrame:
    """``group, metric, day, value``: per group and whole UTC day of ``[start, end)``, the
    day's ``statistic`` (``p95``…) over the group's samples."""
    frames = []
    for metric in metrics:
        result = engine.query(
            metric, start, end, step="1d", group_by=group_by, aggs=(statistic,), tenant=tenant
        )
        frames.append(
            result.select(
                pl.col(group_by).alias("group"),
                pl.lit(metric).alias("metric"),
                pl.col("window_start").dt.date().alias("day"),
                pl.col(statistic).alias("value"),
            )
        )
    return pl.concat(frames).drop_nulls("value").sort("group", "metric", "day")


def servers_at_risk(
    engine: QueryEngine,
    thresholds: dict[str, float],
    *,
    start: datetime,
    end: datetime,
    group_by: str,
    statistic: str,
    horizon_days: int,
    top: int,
    tenant: str | None = None,
) -> pl.DataFrame:
    """The ``top`` servers closest to a threshold by their own linear trend over the last
    :data:`_SERVER_TREND_DAYS` days: ``server_id, group, metric, current, growth_per_day,
    threshold, days_to_threshold`` (null beyond the horizon), most urgent first."""
    since = max(start, end - timedelta(days=_SERVER_TREND_DAYS))
    rows = []
    for metric, limit in thresholds.items():
        daily = engine.query(
            metric, since, end, step="1d", group_by=("server_id", group_by), aggs=(statistic,),
            tenant=tenant,
        )  # fmt: skip
        for (server, group), series in daily.drop_nulls(statistic).group_by(
            "server_id", group_by, maintain_order=True
        ):
            values = series.sort("window_start")[statistic].to_numpy()
            if len(values) < 3:
                continue
            slope, level = linear_trend(np.arange(len(values), dtype=np.float64), values)
            if level >= limit:
                days: float | None = 0.0
            elif slope > 0:
                days = (limit - level) / slope
            else:
                days = None
            rows.append(
                {
                    "server_id": server,
                    "group": group,
                    "metric": metric,
                    "current": level,
                    "growth_per_day": slope,
                    "threshold": limit,
                    "headroom": limit - level,
                    "days_to_threshold": days
                    if days is not None and days <= horizon_days
                    else None,
                }
            )
    schema = {
        "server_id": pl.String,
        "group": pl.String,
        "metric": pl.String,
        "current": pl.Float64,
        "growth_per_day": pl.Float64,
        "threshold": pl.Float64,
        "headroom": pl.Float64,
        "days_to_threshold": pl.Float64,
    }
    frame = pl.DataFrame(rows, schema=schema)
    return frame.sort(
        pl.col("days_to_threshold").fill_null(float("inf")), "headroom", "server_id"
    ).head(top)


def write_report(
    settings: Settings,
    *,
    start: datetime,
    end: datetime,
    group_by: Grouping,
    horizon_days: int,
    out: Path,
    engine: QueryEngine | None = None,
    tenant: str | None = None,
) -> CapacityReport:
    """Build the capacity report over the whole days of ``[start, end)`` into ``out``.

    Raises:
        ValueError: ``group_by`` is not one of :data:`GROUPINGS`, the range is shorter than
            8 days, or the lake holds no daily data for it.
    """
    if group_by not in GROUPINGS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPINGS)}, not {group_by!r}")
    start, end = day_floor(start), day_floor(end)
    if end - start < timedelta(days=8):
        raise ValueError("the report needs at least 8 whole days between start and end")
    config = settings.report
    engine = engine or QueryEngine(settings)
    thresholds = dict(config.thresholds)
    history = daily_history(
        engine, list(thresholds), start=start, end=end, group_by=group_by,
        statistic=config.quantile, tenant=tenant,
    )  # fmt: skip
    if history.is_empty():
        raise ValueError(f"no daily data in the lake for [{start:%Y-%m-%d}, {end:%Y-%m-%d})")
    result = forecast_capacity(
        history,
        horizon_days=horizon_days,
        thresholds=thresholds,
        season_length=config.season_length,
        band_level=config.band_level,
        backtest_windows=config.backtest_windows,
    )
    at_risk = servers_at_risk(
        engine, thresholds, start=start, end=end, group_by=group_by,
        statistic=config.quantile, horizon_days=horizon_days, top=config.servers_at_risk,
        tenant=tenant,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        "history": history,
        "forecast": result.forecast,
        "headroom": result.headroom,
        "backtest": result.backtest,
        "servers_at_risk": at_risk,
    }
    paths = {}
    for name, frame in tables.items():
        paths[name] = out / f"{name}.csv"
        frame.write_csv(paths[name])
    figures = {
        metric: to_svg(
            forecast_grid(metric, history, result.forecast, result.headroom,
                          statistic=config.quantile, band_level=config.band_level)
        )
        for metric in thresholds
        if history.filter(pl.col("metric") == metric).height
    }  # fmt: skip
    html = out / "capacity.html"
    html.write_text(
        _render(
            result=result,
            at_risk=at_risk,
            figures=figures,
            start=start,
            end=end,
            group_by=group_by,
            statistic=config.quantile,
            thresholds=thresholds,
            generated=datetime.now(UTC),
        ),
        encoding="utf-8",
    )
    return CapacityReport(html=html, tables=paths, forecast=result, at_risk=at_risk)


def _render(**context: object) -> str:
    environment = Environment(
        loader=PackageLoader("fleetlens.reports", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["num"] = lambda v, d=1: "-" if v is None else f"{v:,.{d}f}"
    return environment.get_template("capacity.html.j2").render(**context)
