"""Backtesting: replay alert rules over history, to tune them before they page anyone.

The history is the batch layer's ``rollup_1m``: each (server, minute) becomes one sample per
metric, the minute's mean, at the minute's end, fed to the same
:class:`~fleetlens.alerts.engine.AlertEngine` the speed layer runs, with the replayed time as
its clock (so absences are found in the gaps of the rollups). A rule's aggregation thus
applies to minute means; a window shorter than a minute sees one of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from fleetlens.alerts.baselines import DeltaBaselines
from fleetlens.alerts.engine import AlertEngine, AlertEvent
from fleetlens.alerts.rules import RuleSet
from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import TAG_COLUMNS

__all__ = ["ROLLUP_1M", "RuleReport", "backtest", "replay", "rollup_hours"]

ROLLUP_1M = "rollup_1m"
_MINUTE_MS = 60_000


@dataclass
class RuleReport:
    """What a rule would have done over the replayed interval."""

    fired: int = 0
    #: Seconds spent firing, summed over its alerts (those still firing at the end count
    #: up to the end).
    firing_s: float = 0.0
    #: Server (or ``pipeline``) -> times it fired there.
    servers: dict[str, int] = field(default_factory=dict)


def replay(
    rules: RuleSet,
    hours: Iterable[pa.Table],
    *,
    end_ms: int,
    engine: AlertEngine | None = None,
) -> dict[str, RuleReport]:
    """Feed ``rollup_1m`` rows (each table sorted or not, tables in time order) through the
    rules; returns a report per rule."""
    engine = engine or AlertEngine(rules)
    reports = {rule.name: RuleReport() for rule in rules.rules}
    since: dict[str, int] = {}
    clock = None
    for minute_end, samples in _minutes(hours):
        if clock is not None:
            # Every minute boundary in between, so gaps in the rollups show as absences.
            for tick in range(clock + _MINUTE_MS, minute_end, _MINUTE_MS):
                _fold(engine.tick(tick), reports, since)
        for server, tags, metrics in samples:
            events = engine.observe(server, tags, minute_end, metrics, partition=0, now=minute_end)
            _fold(events, reports, since)
        _fold(engine.tick(minute_end), reports, since)
        clock = minute_end
    for alert, started in since.items():
        rule = alert.split("\x00")[0]
        reports[rule].firing_s += max(end_ms - started, 0) / 1000
    return reports


def _fold(events: list[AlertEvent], reports: dict[str, RuleReport], since: dict[str, int]) -> None:
    for event in events:
        report = reports[event.rule]
        key = f"{event.rule}\x00{event.alert_id}"
        if event.change == "firing" and key not in since:
            report.fired += 1
            where = event.labels.get("server") or event.labels.get("scope") or "?"
            report.servers[where] = report.servers.get(where, 0) + 1
            since[key] = event.at
        elif event.change == "resolved" and key in since:
            report.firing_s += (event.at - since.pop(key)) / 1000


def _minutes(
    hours: Iterable[pa.Table],
) -> Iterator[tuple[int, list[tuple[str, dict[str, str], dict[str, float]]]]]:
    """(minute end, [(server, tags, {metric: mean})]) in time order."""
    for table in hours:
        if not table.num_rows:
            continue
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        wide = (
            frame.with_columns(
                end=pl.col("window_start").dt.epoch("ms") + _MINUTE_MS,
                mean=pl.col("sum") / pl.col("count"),
            )
            .pivot(on="metric", index=["end", "server_id", *TAG_COLUMNS], values="mean")
            .sort("end", "server_id")
        )
        metrics = [c for c in wide.columns if c not in ("end", "server_id", *TAG_COLUMNS)]
        for (end,), group in wide.group_by(["end"], maintain_order=True):
            samples = []
            for row in group.iter_rows(named=True):
                tags = {t: row[t] for t in TAG_COLUMNS if row[t] is not None}
                values = {m: row[m] for m in metrics if row[m] is not None}
                samples.append((row["server_id"], tags, values))
            yield int(end), samples


def rollup_hours(lake: Lake, start: datetime, end: datetime) -> Iterator[pa.Table]:
    """``rollup_1m``'s rows of ``[start, end)``, an hour partition at a time."""
    hour = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    while hour < end:
        rows = delta.read_table(
            lake,
            ROLLUP_1M,
            filters=[("date", "=", hour.strftime("%Y-%m-%d")), ("hour", "=", hour.hour)],
        )
        kind = rows.schema.field("window_start").type
        column = rows["window_start"]
        inside = pc.and_(
            pc.greater_equal(column, pa.scalar(start, kind)), pc.less(column, pa.scalar(end, kind))
        )
        yield rows.filter(inside)
        hour += timedelta(hours=1)


def backtest(
    rules: RuleSet, lake: Lake, *, start: datetime, end: datetime
) -> dict[str, RuleReport]:
    """Replay ``rules`` over ``rollup_1m`` of ``[start, end)``, with the lake's baselines."""
    engine = AlertEngine(rules, baselines=DeltaBaselines(lake, rules.anomaly_metrics))
    end_ms = int(end.timestamp() * 1000)
    return replay(rules, rollup_hours(lake, start, end), end_ms=end_ms, engine=engine)
