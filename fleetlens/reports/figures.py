"""Figures of the workbench (matplotlib): capacity forecasts, heatmaps, and their SVG text
for reports that must open without a network. No backend is forced: notebooks keep their
inline one, and matplotlib falls back to Agg where there is no display."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import polars as pl

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["forecast_grid", "heatmap", "to_svg"]

_HISTORY = "#1f77b4"
_FORECAST = "#ff7f0e"
_THRESHOLD = "#d62728"


def to_svg(figure: Figure) -> str:
    """The figure as inline SVG markup (and closed)."""
    buffer = io.StringIO()
    # Text stays text (searchable, small), in the page's fonts, not outlines.
    with plt.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def forecast_grid(
    metric: str,
    history: pl.DataFrame,
    forecast: pl.DataFrame,
    headroom: pl.DataFrame,
    *,
    statistic: str = "p95",
    band_level: int = 80,
    columns: int = 3,
) -> Figure:
    """One panel per group: the daily ``statistic`` of ``metric`` (history), the forecast
    with its band, the threshold, and the day it is crossed.

    Args:
        metric: The metric drawn.
        history: ``group, metric, day, value``.
        forecast: ``group, metric, day, forecast, lo, hi``.
        headroom: ``group, metric, threshold, crossing`` (see ``CapacityForecast``).
    """
    groups = sorted(history.filter(pl.col("metric") == metric)["group"].unique().to_list())
    rows = max(1, -(-len(groups) // columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, 2.8 * rows), sharex=True, squeeze=False
    )
    for ax in axes.ravel()[len(groups) :]:
        ax.set_visible(False)
    for ax, group in zip(axes.ravel(), groups, strict=False):
        past = history.filter(pl.col("metric") == metric, pl.col("group") == group).sort("day")
        ahead = forecast.filter(pl.col("metric") == metric, pl.col("group") == group).sort("day")
        room = headroom.filter(pl.col("metric") == metric, pl.col("group") == group)
        ax.plot(past["day"].to_list(), past["value"].to_numpy(), color=_HISTORY, lw=1.4,
                label=f"daily {statistic}")  # fmt: skip
        ax.plot(ahead["day"].to_list(), ahead["forecast"].to_numpy(), color=_FORECAST, lw=1.4,
                ls="--", label="forecast")  # fmt: skip
        ax.fill_between(ahead["day"].to_list(), ahead["lo"].to_numpy(), ahead["hi"].to_numpy(),
                        color=_FORECAST, alpha=0.2, lw=0, label=f"{band_level} % band")  # fmt: skip
        if room.height and room["threshold"][0] is not None:
            ax.axhline(room["threshold"][0], color=_THRESHOLD, lw=1, label="threshold")
            crossing = room["crossing"][0]
            if crossing is not None:
                ax.axvline(crossing, color=_THRESHOLD, lw=1, ls=":")
                ax.annotate(f"{crossing:%d %b}", (crossing, room["threshold"][0]),
                            textcoords="offset points", xytext=(3, 4), fontsize=8,
                            color=_THRESHOLD)  # fmt: skip
        ax.set_title(group, fontsize=10)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        for label in ax.get_xticklabels():
            label.set_rotation(30)
    axes.ravel()[0].legend(fontsize=7, loc="upper left")
    figure.suptitle(f"{metric}: daily {statistic}, forecast and threshold", fontsize=11)
    figure.tight_layout()
    return figure


def heatmap(
    frame: pl.DataFrame,
    *,
    row: str,
    column: str,
    value: str,
    title: str,
    labels: Sequence[str] = (),
) -> Figure:
    """A heatmap of ``value`` by ``row`` x ``column`` (e.g. service x hour of day)."""
    pivot = frame.pivot(on=column, index=row, values=value, sort_columns=True).sort(row)
    cells = pivot.drop(row).to_numpy().astype(np.float64)
    figure, ax = plt.subplots(figsize=(max(6, 0.35 * cells.shape[1] + 2), 0.45 * len(pivot) + 1.5))
    image = ax.imshow(cells, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(pivot)), pivot[row].to_list())
    ax.set_xticks(range(cells.shape[1]), list(labels) or pivot.columns[1:])
    ax.set_xlabel(column)
    ax.set_title(title)
    figure.colorbar(image, ax=ax, shrink=0.8)
    figure.tight_layout()
    return figure
