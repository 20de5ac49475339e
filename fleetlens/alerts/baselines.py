"""Anomaly baselines from the lake's ``baseline_hourly`` (written by the batch layer).

Only what the rules can ask for is held: the metrics of the anomaly rules, for the hours of
the week samples are arriving in (two at a time: the current one and the last one asked for),
each read once from Delta and again when the table has a new version.
"""

from __future__ import annotations

from collections.abc import Iterable

from fleetlens.alerts.engine import Baseline
from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.logging import get_logger

__all__ = ["BASELINE_TABLE", "DeltaBaselines"]

BASELINE_TABLE = "baseline_hourly"
log = get_logger("alerts.baselines")


class DeltaBaselines:
    """A :class:`~fleetlens.alerts.engine.BaselineLookup` over ``baseline_hourly``.

    Args:
        lake: The lake.
        metrics: The metrics anomaly rules evaluate (others are never read).
        check_every_s: How often the table's version is checked for new baselines.
    """

    def __init__(self, lake: Lake, metrics: Iterable[str], *, check_every_s: float = 300) -> None:
        self._lake = lake
        self._metrics = sorted(set(metrics))
        self._hours: dict[int, dict[tuple[str, str], Baseline]] = {}
        self._version: int | None = None
        self._check_every_ms = int(check_every_s * 1000)
        self._checked_at = 0

    def set_metrics(self, metrics: Iterable[str]) -> None:
        """Read these metrics from now on (the anomaly rules changed)."""
        wanted = sorted(set(metrics))
        if wanted != self._metrics:
            self._metrics = wanted
            self._hours.clear()

    def get(self, server_id: str, metric: str, hour_of_week: int) -> Baseline | None:
        """The baseline of ``(server_id, metric, hour_of_week)``, if the batch layer has one."""
        hour = self._hours.get(hour_of_week)
        if hour is None:
            hour = self._load(hour_of_week)
        return hour.get((server_id, metric))

    def refresh(self, now_ms: int) -> None:
        """Every ``check_every_s``: forget what was read if the table has a new version."""
        if now_ms - self._checked_at < self._check_every_ms:
            return
        self._checked_at = now_ms
        if not self._metrics or not delta.table_exists(self._lake, BASELINE_TABLE):
            return
        version = delta.open_table(self._lake, BASELINE_TABLE).version()
        if version != self._version:
            self._hours.clear()
            self._version = version

    def _load(self, hour_of_week: int) -> dict[tuple[str, str], Baseline]:
        loaded: dict[tuple[str, str], Baseline] = {}
        if self._metrics and delta.table_exists(self._lake, BASELINE_TABLE):
            rows = delta.read_table(
                self._lake,
                BASELINE_TABLE,
                columns=["server_id", "metric", "mean", "stddev", "samples"],
                filters=[("hour_of_week", "=", hour_of_week), ("metric", "in", self._metrics)],
            ).to_pydict()
            for server, metric, mean, stddev, samples in zip(
                rows["server_id"],
                rows["metric"],
                rows["mean"],
                rows["stddev"],
                rows["samples"],
                strict=True,
            ):
                loaded[(server, metric)] = Baseline(mean, stddev or 0.0, samples)
        # Two hours at a time: the one samples are in, and the one before at the boundary.
        while len(self._hours) >= 2:
            self._hours.pop(next(iter(self._hours)))
        self._hours[hour_of_week] = loaded
        log.info("alerts.baselines_loaded", hour_of_week=hour_of_week, keys=len(loaded))
        return loaded
