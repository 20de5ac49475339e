"""Capacity forecasting: daily utilisation series → forecasts, backtest errors, and the day
each threshold is crossed. Pure: frames in, frames out (no lake, no files).

Each series (a group's daily p95 of a metric) is forecast by the candidate model with the
smallest backtest error on that series. Candidates (statsforecast): ``AutoETS`` and
``AutoTheta`` with weekly seasonality, and a random walk with drift (a straight line
through the first and last day, robust when the history is short). The backtest is
statsforecast's rolling-origin cross-validation over the history's last windows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import polars as pl

__all__ = [
    "CapacityForecast",
    "crossing_day",
    "forecast_capacity",
    "linear_trend",
]

#: The columns of the history a forecast takes: one row per series and day.
HISTORY_COLUMNS = ("group", "metric", "day", "value")


@dataclass(frozen=True)
class CapacityForecast:
    """What :func:`forecast_capacity` found.

    Attributes:
        forecast: ``group, metric, day, forecast, lo, hi`` over the horizon.
        backtest: ``group, metric, model, mae, mape, chosen`` for every candidate.
        headroom: Per series: ``current`` (the last day), ``forecast_end`` (at the
            horizon), ``growth_per_day`` (least-squares slope of the history), ``threshold``,
            ``days_to_threshold`` (from the last day; 0 when already over, null when not
            within the horizon), ``crossing`` (the date), ``crossing_earliest`` (the band's
            upper bound crosses), ``model``; most urgent first.
        horizon_days: The horizon.
        band_level: The band's prediction interval, in percent.
    """

    forecast: pl.DataFrame
    backtest: pl.DataFrame
    headroom: pl.DataFrame
    horizon_days: int
    band_level: int


def crossing_day(values: np.ndarray, threshold: float, *, start: float) -> float | None:
    """Days after the last observation (worth ``start``) at which the daily ``values``
    (day 1, 2, …) first reach ``threshold``, interpolated linearly; 0 if ``start`` is
    there already, None if they never do."""
    if start >= threshold:
        return 0.0
    previous = start
    for day, value in enumerate(values, start=1):
        if value >= threshold:
            return float(day - 1 + (threshold - previous) / (value - previous))
        previous = value
    return None


def linear_trend(days: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(slope per day, value at the last day)`` of a series."""
    if len(values) < 2:
        return 0.0, float(values[-1]) if len(values) else float("nan")
    slope, intercept = np.polyfit(days, values, 1)
    return float(slope), float(intercept + slope * days[-1])


def _models(season_length: int, n: int) -> list[object]:
    from statsforecast.models import AutoETS, AutoTheta, RandomWalkWithDrift

    # A seasonal model needs two seasons to fit; shorter histories get the trend models.
    season = season_length if n >= 2 * season_length + 2 else 1
    return [
        AutoETS(season_length=season),
        AutoTheta(season_length=season),
        RandomWalkWithDrift(),
    ]


def forecast_capacity(
    history: pl.DataFrame,
    *,
    horizon_days: int,
    thresholds: Mapping[str, float],
    season_length: int = 7,
    band_level: int = 80,
    backtest_windows: int = 2,
) -> CapacityForecast:
    """Forecast every ``(group, metric)`` series of ``history`` over ``horizon_days``.

    Args:
        history: :data:`HISTORY_COLUMNS` (``day`` a date), one row per series and day; days
            missing in a series are filled by interpolation.
        horizon_days: Days to forecast after each series' last day.
        thresholds: Limit per metric; series of other metrics are forecast without one.
        season_length: Seasonality of the candidate models (7: weekly).
        band_level: Prediction interval of the band, in percent.
        backtest_windows: Rolling-origin windows of the backtest.

    Raises:
        ValueError: A series has fewer than 8 days.
    """
    from statsforecast import StatsForecast

    series = _filled(history)
    lengths = series.group_by("unique_id").len()
    shortest = int(lengths["len"].min() or 0) if lengths.height else 0  # type: ignore[arg-type]
    if shortest < 8:
        raise ValueError(f"a forecast needs at least 8 days of history per series, got {shortest}")
    frame = series.select("unique_id", "ds", "y").to_pandas()
    models = _models(season_length, shortest)
    names = [repr(m) for m in models]
    engine = StatsForecast(models=models, freq="D", n_jobs=1)
    window = max(3, min(horizon_days, shortest // (backtest_windows + 2)))
    cv = _frame(
        engine.cross_validation(df=frame, h=window, n_windows=backtest_windows, step_size=window)
    )
    errors = pl.concat(
        cv.group_by("unique_id").agg(
            model=pl.lit(name),
            mae=(pl.col(name) - pl.col("y")).abs().mean(),
            mape=((pl.col(name) - pl.col("y")).abs() / pl.col("y").abs()).mean() * 100,
        )
        for name in names
    )
    chosen = errors.sort("mae", "model").group_by("unique_id").first().select("unique_id", "model")
    fitted = _frame(engine.forecast(df=frame, h=horizon_days, level=[band_level]))
    lo, hi = f"-lo-{band_level}", f"-hi-{band_level}"
    forecast = (
        fitted.join(chosen, on="unique_id")
        .with_columns(
            forecast=_pick(names, "model", ""),
            lo=_pick(names, "model", lo),
            hi=_pick(names, "model", hi),
        )
        .select("unique_id", pl.col("ds").cast(pl.Date).alias("day"), "forecast", "lo", "hi")
    )
    keys = series.select("unique_id", "group", "metric").unique()
    backtest = (
        errors.join(chosen.with_columns(chosen=pl.lit(True)), on=["unique_id", "model"], how="left")
        .with_columns(pl.col("chosen").fill_null(False))
        .join(keys, on="unique_id")
        .select("group", "metric", "model", "mae", "mape", "chosen")
        .sort("group", "metric", "mae")
    )
    headroom = _headroom(series, forecast, chosen, thresholds)
    return CapacityForecast(
        forecast=forecast.join(keys, on="unique_id")
        .select("group", "metric", "day", "forecast", "lo", "hi")
        .sort("group", "metric", "day"),
        backtest=backtest,
        headroom=headroom.join(keys, on="unique_id")
        .select("group", "metric", *(c for c in headroom.columns if c != "unique_id"))
        .sort(
            pl.col("days_to_threshold").fill_null(float("inf")),
            "group",
            "metric",
        ),
        horizon_days=horizon_days,
        band_level=band_level,
    )


def _frame(result: Any) -> pl.DataFrame:
    """statsforecast's answer (pandas, given pandas) as polars."""
    return pl.from_pandas(result.reset_index(drop=True))


def _pick(names: list[str], column: str, suffix: str) -> pl.Expr:
    """The value of the model named in ``column``, one column per model."""
    expr = pl.lit(None, pl.Float64)
    for name in names:
        expr = pl.when(pl.col(column) == name).then(pl.col(name + suffix)).otherwise(expr)
    return expr


def _filled(history: pl.DataFrame) -> pl.DataFrame:
    """One row per series and calendar day, gaps interpolated; ``unique_id`` added."""
    frame = history.select(*HISTORY_COLUMNS).with_columns(pl.col("day").cast(pl.Date))
    parts = []
    for (group, metric), rows in frame.group_by("group", "metric", maintain_order=True):
        days = pl.DataFrame(
            {"day": pl.date_range(rows["day"].min(), rows["day"].max(), "1d", eager=True)}  # type: ignore[arg-type]
        )
        parts.append(
            days.join(rows.select("day", "value"), on="day", how="left").with_columns(
                pl.col("value").interpolate().forward_fill().backward_fill(),
                group=pl.lit(group, pl.String),
                metric=pl.lit(metric, pl.String),
            )
        )
    if not parts:
        return pl.DataFrame(schema={"unique_id": pl.String, "ds": pl.Date, "y": pl.Float64})
    return (
        pl.concat(parts)
        .with_columns(unique_id=pl.format("{}|{}", "group", "metric"), ds="day", y="value")
        .sort("unique_id", "ds")
    )


def _headroom(
    series: pl.DataFrame,
    forecast: pl.DataFrame,
    chosen: pl.DataFrame,
    thresholds: Mapping[str, float],
) -> pl.DataFrame:
    model_of = dict(zip(chosen["unique_id"], chosen["model"], strict=True))
    rows = []
    for (uid,), past in series.group_by("unique_id", maintain_order=True):
        ahead = forecast.filter(pl.col("unique_id") == uid).sort("day")
        metric = str(past["metric"][0])
        limit = thresholds.get(metric)
        values = past["y"].to_numpy()
        slope, _ = linear_trend(np.arange(len(values), dtype=np.float64), values)
        last_day: date = past["ds"].max()  # type: ignore[assignment]
        current = float(values[-1])
        days = earliest = None
        if limit is not None:
            days = crossing_day(ahead["forecast"].to_numpy(), limit, start=current)
            earliest = crossing_day(ahead["hi"].to_numpy(), limit, start=current)
        rows.append(
            {
                "unique_id": uid,
                "current": current,
                "forecast_end": float(ahead["forecast"][-1]),
                "growth_per_day": slope,
                "threshold": limit,
                "days_to_threshold": days,
                "crossing": None if days is None else last_day + timedelta(days=int(np.ceil(days))),
                "crossing_earliest": None
                if earliest is None
                else last_day + timedelta(days=int(np.ceil(earliest))),
                "model": model_of[uid],
                "last_day": last_day,
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "unique_id": pl.String,
            "current": pl.Float64,
            "forecast_end": pl.Float64,
            "growth_per_day": pl.Float64,
            "threshold": pl.Float64,
            "days_to_threshold": pl.Float64,
            "crossing": pl.Date,
            "crossing_earliest": pl.Date,
            "model": pl.String,
            "last_day": pl.Date,
        },
    )
