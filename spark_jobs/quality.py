"""Data quality of the batch tables: Great Expectations 1.x suites over Spark DataFrames.

Each check validates the DataFrame it is given (no reads, no writes) and returns a
:class:`QualityReport`: ``success``, a readable :meth:`~QualityReport.summary` naming the failed
expectations, their columns, unexpected counts and examples, and the GE validation result
(JSON) to keep with :func:`write_report`. A job turns failed reports into a failure with
:func:`raise_for_failures`.

* :func:`validate_raw_points`: columns, non-null keys, known metrics, value ranges per metric
  (``contract.metrics``), one row per ``(event_id, metric)``.
* :func:`validate_rollup` (``rollup_1m``/``1h``/``1d``): columns, non-null keys, one row per
  ``(server_id, metric, window_start)``, ``count >= 1``, ``min <= max``, ranges per metric.
* :func:`reconcile`: per hour, the rollup's summed ``count`` equals the number of points.
* :func:`check_freshness`: the newest timestamp is within a horizon of the interval's end.

Great Expectations is imported on first use (it takes seconds), so importing this module is
cheap for the jobs that do not check anything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fleetlens.config import MetricSpec, Settings
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import RAW_POINTS_SCHEMA, ROLLUP_SCHEMA, WINDOW_KEY

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.expectations.expectation import Expectation

__all__ = [
    "Failure",
    "Interval",
    "QualityError",
    "QualityReport",
    "check_freshness",
    "raise_for_failures",
    "reconcile",
    "report_path",
    "validate_raw_points",
    "validate_rollup",
    "write_report",
]

#: ``[start, end)``, timezone-aware.
Interval = tuple[datetime, datetime]

RAW_KEYS = ("ts", "server_id", "metric", "value", "event_id")
RAW_UNIQUE = ("event_id", "metric")
ROLLUP_NOT_NULL = (*WINDOW_KEY, "count", "min", "max")

#: How many unexpected values a report keeps per expectation.
_EXAMPLES = 5


class QualityError(RuntimeError):
    """At least one quality suite failed; the message is the reports' summaries."""


@dataclass(frozen=True)
class Failure:
    """One failed expectation, in words a person on call can act on."""

    expectation: str
    columns: str
    condition: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    unexpected_count: int | None = None
    element_count: int | None = None
    examples: list[Any] = field(default_factory=list)
    observed: Any = None
    error: str | None = None

    def describe(self) -> str:
        """One line: what was expected of which column, and what was found."""
        text = f"{self.expectation} on {self.columns}"
        if self.condition:
            text += f" where {self.condition}"
        if self.params:
            text += " (" + ", ".join(f"{k}={v}" for k, v in self.params.items()) + ")"
        if self.error:
            return f"{text}: raised {self.error}"
        if self.unexpected_count is not None:
            of = f" of {self.element_count} rows" if self.element_count is not None else ""
            text += f": {self.unexpected_count} unexpected{of}"
            if self.examples:
                text += f", e.g. {self.examples}"
        elif self.observed is not None:
            text += f": observed {self.observed}"
        return text


@dataclass(frozen=True)
class QualityReport:
    """The outcome of one suite over one table and interval.

    Attributes:
        name: What was checked (``raw_points``, ``rollup_1h``, ``rollup_1h.reconciliation``…);
            also the folder of the kept JSON under ``<lake>/_quality/``.
        interval: ``[start, end)`` the data belongs to.
        success: Whether every expectation held.
        failures: The expectations that did not.
        evaluated: How many expectations ran.
        result: The Great Expectations validation result, as JSON-ready data.
    """

    name: str
    interval: Interval
    success: bool
    failures: tuple[Failure, ...]
    evaluated: int
    result: dict[str, Any]

    def summary(self) -> str:
        """A few lines: the verdict, then one line per failed expectation."""
        start, end = (_label(moment) for moment in self.interval)
        verdict = "passed" if self.success else f"FAILED {len(self.failures)}"
        lines = [f"quality {self.name} [{start}, {end}): {verdict} of {self.evaluated}"]
        lines += [f"  - {failure.describe()}" for failure in self.failures]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The report with the full GE validation result, for :func:`write_report`."""
        return {
            "name": self.name,
            "start": self.interval[0].isoformat(),
            "end": self.interval[1].isoformat(),
            "success": self.success,
            "summary": self.summary(),
            "validation_result": self.result,
        }


# -- checks -------------------------------------------------------------------------------


def validate_raw_points(df: DataFrame, settings: Settings, *, interval: Interval) -> QualityReport:
    """Validate ``raw_points`` rows (of one interval) against the contract.

    Args:
        df: The rows to check, with the columns of ``RAW_POINTS_SCHEMA``.
        settings: Settings; ``contract.metrics`` gives the metric names and ranges.
        interval: The interval the rows belong to (for the report).
    """
    gxe = _expectations()

    metrics = settings.contract.metrics
    expectations: list[Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=list(RAW_POINTS_SCHEMA.names), exact_match=False
        ),
        *(gxe.ExpectColumnValuesToNotBeNull(column=column) for column in RAW_KEYS),
        gxe.ExpectColumnValuesToBeInSet(column="metric", value_set=sorted(metrics)),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(RAW_UNIQUE)),
        *_ranges(metrics, lower="value", upper="value"),
    ]
    return _validate("raw_points", df, expectations, interval)


def validate_rollup(
    df: DataFrame, settings: Settings, *, table: str, interval: Interval
) -> QualityReport:
    """Validate rollup rows (``rollup_1m``, ``rollup_1h`` or ``rollup_1d``).

    ``min <= max`` with ``min`` above each metric's lower bound and ``max`` below its upper
    bound keeps both within the metric's range.

    Args:
        df: The rows to check, with the columns of ``ROLLUP_SCHEMA``.
        settings: Settings; ``contract.metrics`` gives the ranges.
        table: The rollup's name (for the report).
        interval: The interval the rows belong to.
    """
    gxe = _expectations()

    expectations: list[Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(ROLLUP_SCHEMA.names), exact_match=False),
        *(gxe.ExpectColumnValuesToNotBeNull(column=column) for column in ROLLUP_NOT_NULL),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(WINDOW_KEY)),
        gxe.ExpectColumnValuesToBeBetween(column="count", min_value=1),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="max", column_B="min", or_equal=True),
        *_ranges(settings.contract.metrics, lower="min", upper="max"),
    ]
    return _validate(table, df, expectations, interval)


def reconcile(
    raw: DataFrame, rollup: DataFrame, *, interval: Interval, table: str = "rollup_1h"
) -> QualityReport:
    """Check, per hour of ``interval``, that the rollup's ``count`` adds up to the points.

    Works for any rollup whose windows lie within an hour (``rollup_1m``, ``rollup_1h``).
    Rows outside ``interval`` are left out; an hour present on one side only counts 0 on the
    other.

    Args:
        raw: ``raw_points`` rows (``ts`` is enough).
        rollup: Rollup rows (``window_start`` and ``count``).
        interval: ``[start, end)`` to reconcile.
        table: The rollup's name (the report is ``<table>.reconciliation``).
    """
    gxe = _expectations()

    start, end = interval
    points = (
        raw.where((F.col("ts") >= F.lit(start)) & (F.col("ts") < F.lit(end)))
        .groupBy(F.date_trunc("hour", "ts").alias("hour_start"))
        .agg(F.count(F.lit(1)).alias("raw_points"))
    )
    counted = (
        rollup.where((F.col("window_start") >= F.lit(start)) & (F.col("window_start") < F.lit(end)))
        .groupBy(F.date_trunc("hour", "window_start").alias("hour_start"))
        .agg(F.sum("count").alias("rollup_count"))
    )
    joined = points.join(counted, "hour_start", "full").select(
        F.date_format("hour_start", "yyyy-MM-dd'T'HH:mm'Z'").alias("hour"),
        F.coalesce("raw_points", F.lit(0)).alias("raw_points"),
        F.coalesce("rollup_count", F.lit(0)).alias("rollup_count"),
    )
    frame = joined.withColumn("difference", F.col("rollup_count") - F.col("raw_points"))
    expectation = gxe.ExpectColumnValuesToBeBetween(column="difference", min_value=0, max_value=0)
    # Examples name the hours that differ, not just the differences.
    return _validate(f"{table}.reconciliation", frame, [expectation], interval, index=("hour",))


def check_freshness(
    df: DataFrame, *, table: str, column: str, interval: Interval, horizon: timedelta
) -> QualityReport:
    """Check that the newest ``column`` value is at most ``horizon`` before the interval's end.

    An empty DataFrame fails (nothing arrived at all).

    Args:
        df: The table's rows (e.g. the last hours of ``raw_points``).
        table: The table's name (the report is ``<table>.freshness``).
        column: The event-time column, ``ts`` or ``window_start``.
        interval: The interval the data should cover.
        horizon: The largest acceptable delay of the newest row.
    """
    gxe = _expectations()

    end_s = interval[1].timestamp()
    frame = df.agg(F.max(column).alias("newest")).select(
        F.date_format("newest", "yyyy-MM-dd'T'HH:mm:ss'Z'").alias(f"newest_{column}"),
        (F.lit(end_s) - F.unix_micros("newest") / 1e6).alias("staleness_s"),
    )
    expectations: list[Expectation] = [
        gxe.ExpectColumnValuesToNotBeNull(column="staleness_s"),
        gxe.ExpectColumnValuesToBeBetween(column="staleness_s", max_value=horizon.total_seconds()),
    ]
    return _validate(
        f"{table}.freshness", frame, expectations, interval, index=(f"newest_{column}",)
    )


# -- reports ------------------------------------------------------------------------------


def report_path(lake: Lake, name: str, interval: Interval) -> str:
    """Where :func:`write_report` keeps a report: ``<lake>/_quality/<name>/<start>_<end>.json``."""
    start, end = (moment.astimezone(UTC).strftime("%Y%m%dT%H%MZ") for moment in interval)
    return lake.path("_quality", name, f"{start}_{end}.json")


def write_report(lake: Lake, report: QualityReport) -> str:
    """Keep the report with its GE validation result (replacing an earlier run's); the path."""
    path = report_path(lake, report.name, report.interval)
    data = json.dumps(report.to_json(), indent=1, default=str).encode()
    lake.write_bytes_atomically(path, data)
    return path


def raise_for_failures(reports: Iterable[QualityReport]) -> None:
    """Raise :class:`QualityError` with the summaries of the failed reports, if any."""
    failed = [report.summary() for report in reports if not report.success]
    if failed:
        raise QualityError("\n".join(failed))


# -- Great Expectations ---------------------------------------------------------------------


def _ranges(metrics: Mapping[str, MetricSpec], *, lower: str, upper: str) -> list[Expectation]:
    """Per metric with bounds: ``lower`` column >= its min, ``upper`` column <= its max."""
    gxe = _expectations()
    from great_expectations.expectations.row_conditions import Column

    found: list[Expectation] = []
    for name, spec in sorted(metrics.items()):
        bounds: dict[str, Any] = {"min_value": spec.min, "max_value": spec.max}
        checks: dict[str, dict[str, Any]]
        if lower == upper:
            checks = {lower: bounds} if spec.min is not None or spec.max is not None else {}
        else:
            checks = {
                column: {key: value}
                for column, key, value in (
                    (lower, "min_value", spec.min),
                    (upper, "max_value", spec.max),
                )
                if value is not None
            }
        found += [
            gxe.ExpectColumnValuesToBeBetween(
                column=column, row_condition=Column("metric") == name, **kwargs
            )
            for column, kwargs in checks.items()
        ]
    return found


def _expectations() -> Any:
    """``great_expectations.expectations`` (its classes are re-exported without ``__all__``)."""
    from great_expectations import expectations

    return expectations


@cache
def _context() -> Any:
    """One in-memory GE context per process: no files, no analytics, no progress bars."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    config = DataContextConfig(
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        store_backend_defaults=InMemoryStoreBackendDefaults(),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    # The caller decides about caching (see _validate): GE's own persist() would pin every
    # validated frame for the life of the session.
    context.data_sources.add_spark(name="spark", persist=False)
    return context


def _batch_definition(name: str) -> Any:
    source = _context().data_sources.get("spark")
    try:
        asset = source.get_asset(name)
    except LookupError:
        asset = source.add_dataframe_asset(name=name)
    try:
        return asset.get_batch_definition("whole")
    except KeyError:
        return asset.add_batch_definition_whole_dataframe("whole")


def _validate(
    name: str,
    df: DataFrame,
    expectations: Sequence[Expectation],
    interval: Interval,
    *,
    index: Sequence[str] = (),
) -> QualityReport:
    """Run the suite over ``df``; ``index`` columns identify unexpected rows in examples."""
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=name, expectations=list(expectations))
    batch = _batch_definition(name).get_batch(batch_parameters={"dataframe": df})
    # Every expectation scans the frame: compute it once.
    cached = not df.is_cached
    if cached:
        df.persist()
    try:
        result_format: dict[str, Any] = {"result_format": "SUMMARY"}
        if index:
            result_format["unexpected_index_column_names"] = list(index)
        result = batch.validate(suite, result_format=result_format)
    finally:
        if cached:
            df.unpersist()
    failures = tuple(_failure(outcome) for outcome in result.results if not outcome.success)
    return QualityReport(
        name=name,
        interval=interval,
        success=bool(result.success),
        failures=failures,
        evaluated=len(result.results),
        result=_json_ready(result),
    )


def _failure(outcome: Any) -> Failure:
    config = outcome.expectation_config
    kwargs = dict(config.kwargs)
    found = outcome.result or {}
    info = outcome.exception_info or {}
    if "column_list" in kwargs:
        columns = ", ".join(kwargs["column_list"])
    elif "column_A" in kwargs:
        columns = f"{kwargs['column_A']} vs {kwargs['column_B']}"
    else:
        columns = str(kwargs.get("column", "table"))
    hidden = {"batch_id", "column", "column_list", "column_A", "column_B", "row_condition"}
    params = {
        key: _short(value)
        for key, value in kwargs.items()
        if key not in hidden and key != "result_format" and value is not None
    }
    examples = found.get("partial_unexpected_index_list") or found.get(
        "partial_unexpected_list", []
    )
    return Failure(
        expectation=config.type,
        columns=columns,
        condition=_condition(kwargs.get("row_condition")),
        params=params,
        unexpected_count=found.get("unexpected_count"),
        element_count=found.get("element_count"),
        examples=[_plain(example) for example in list(examples)[:_EXAMPLES]],
        observed=found.get("observed_value"),
        error=info.get("exception_message") if info.get("raised_exception") else None,
    )


def _condition(condition: Any) -> str | None:
    if not condition:
        return None
    if isinstance(condition, dict) and "column" in condition:
        return f"{condition['column']['name']} {condition['operator']} {condition['parameter']!r}"
    return str(condition)


def _short(value: Any) -> Any:
    if isinstance(value, list | tuple) and len(value) > 8:
        return [*value[:8], "…"]
    return _plain(value)


def _plain(value: Any) -> Any:
    """Examples as people read them: 100 rather than 100.0, instants in ISO 8601 UTC."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, datetime):
        # Spark hands out naive datetimes in the driver's local zone; astimezone() knows that.
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(item) for item in value)
    return value


def _json_ready(result: ExpectationSuiteValidationResult) -> dict[str, Any]:
    data: dict[str, Any] = result.to_json_dict()  # type: ignore[no-untyped-call]
    return data


def _label(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")
