"""Landing payloads to points: deduplicate, explode, check against the contract."""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import Column, DataFrame, Observation
from pyspark.sql import functions as F

from fleetlens.config import MetricSpec
from fleetlens.lake.schemas import RAW_POINTS_SCHEMA, TAG_COLUMNS

__all__ = [
    "EVENT_KEY",
    "POINT_COLUMNS",
    "first_copies",
    "landing_to_points",
    "repeated_keys",
    "split_by_keys",
    "split_valid_points",
]

#: The columns of ``raw_points``, in table order.
POINT_COLUMNS = tuple(RAW_POINTS_SCHEMA.names)

#: A 64-bit hash of ``event_id``: finding repeated events shuffles these, not payloads.
EVENT_KEY = "event_key"


def landing_to_points(landing: DataFrame, *, ordered: bool = False) -> DataFrame:
    """One row per ``(payload, metric)`` with the tags as columns and the event's UTC
    ``date``/``hour``; keeps ``source_file`` when the input has it.

    With ``ordered``, each task's points come sorted by ``date, hour, server_id, ts``
    (then metric in payload order), the layout ``raw_points`` files are written in:
    sorting the payloads before exploding them sorts a sixth of the rows.
    """
    extra = ["source_file"] if "source_file" in landing.columns else []
    payloads = landing.select(
        "event_id",
        "server_id",
        F.col("ts").cast("timestamp").alias("ts"),
        F.col("ingest_ts").cast("timestamp").alias("ingest_ts"),
        *(F.col("tags").getItem(tag).alias(tag) for tag in TAG_COLUMNS),
        *extra,
        "metrics",
    ).withColumns({"date": F.date_format("ts", "yyyy-MM-dd"), "hour": F.hour("ts").cast("int")})
    if ordered:
        payloads = payloads.sortWithinPartitions("date", "hour", "server_id", "ts")
    others = [c for c in payloads.columns if c != "metrics"]
    return payloads.select(*others, F.explode_outer("metrics").alias("metric", "value"))


def _reason(metrics: Mapping[str, MetricSpec]) -> Column:
    """Why a point breaks the contract (the first check that fails), or null."""
    metric, value = F.col("metric"), F.col("value")
    checks: list[tuple[Column, Column]] = [
        (F.col("event_id").isNull(), F.lit("event_id is missing")),
        (F.col("server_id").isNull(), F.lit("server_id is missing")),
        (F.col("ts").isNull(), F.lit("ts is missing")),
        (metric.isNull(), F.lit("payload has no metrics")),
        (~metric.isin(list(metrics)), F.concat(F.lit("unknown metric "), metric)),
        (value.isNull() | F.isnan(value), F.concat(metric, F.lit(" is not a number"))),
        (value.isin(float("inf"), float("-inf")), F.concat(metric, F.lit(" is not finite"))),
    ]
    for name, spec in metrics.items():
        if spec.min is not None:
            checks.append(
                ((metric == name) & (value < spec.min), F.lit(f"{name} below {spec.min:g}"))
            )
        if spec.max is not None:
            checks.append(
                ((metric == name) & (value > spec.max), F.lit(f"{name} above {spec.max:g}"))
            )
    reason = F.lit(None).cast("string")
    for condition, message in reversed(checks):
        reason = F.when(condition, message).otherwise(reason)
    return reason


def split_valid_points(
    points: DataFrame,
    *,
    metrics: Mapping[str, MetricSpec],
    observation: Observation | None = None,
) -> tuple[DataFrame, DataFrame]:
    """``(valid, rejected)``: rejected rows carry a ``reason``. With ``observation``, the
    first action on ``valid`` also counts the rejected rows (as ``rejected``), so a caller
    can skip computing ``rejected`` when there are none."""
    checked = points.withColumn("reason", _reason(metrics))
    if observation is not None:
        checked = checked.observe(
            observation, F.count_if(F.col("reason").isNotNull()).alias("rejected")
        )
    valid = checked.where(F.col("reason").isNull()).drop("reason")
    rejected = checked.where(F.col("reason").isNotNull())
    return valid, rejected


def first_copies(landing: DataFrame) -> DataFrame:
    """One landing row per ``event_id``: the first ingested copy (ties broken by Kafka
    partition and offset, then the rest), so that every ``(event_id, metric)`` is kept once
    and a resent payload counts once, as in the speed layer. Rows without an ``event_id``
    are kept as they are (they fail the contract check)."""
    tie_breaks = [
        c for c in ("kafka_partition", "kafka_offset", "source_file") if c in landing.columns
    ]
    order = F.struct("ingest_ts", *tie_breaks, "ts", "server_id")
    others = [c for c in landing.columns if c != "event_id"]
    keyed = landing.where(F.col("event_id").isNotNull())
    first = keyed.groupBy("event_id").agg(F.min_by(F.struct(*others), order).alias("first"))
    # Deduplicating payloads, not points, shuffles a sixth of the rows.
    return first.select("event_id", "first.*").unionByName(
        landing.where(F.col("event_id").isNull())
    )


def _event_key() -> Column:
    return F.xxhash64("event_id").alias(EVENT_KEY)


def repeated_keys(landing: DataFrame) -> DataFrame:
    """The :data:`EVENT_KEY` of every ``event_id`` with more than one landing row (and of
    any hash collision between distinct ids, which :func:`first_copies` then keeps apart).

    Resent payloads are rare: deduplicating only the rows with these keys spares
    shuffling every payload to find them.
    """
    keyed = landing.where(F.col("event_id").isNotNull()).select(_event_key())
    return keyed.groupBy(EVENT_KEY).count().where(F.col("count") > 1).select(EVENT_KEY)


def split_by_keys(landing: DataFrame, keys: DataFrame) -> tuple[DataFrame, DataFrame]:
    """``(singles, repeated)``: the landing rows whose event key is not among ``keys``
    (see :func:`repeated_keys`) and those whose key is; ``keys`` is broadcast."""
    keyed = landing.withColumn(EVENT_KEY, _event_key())
    hint = F.broadcast(keys)
    singles = keyed.join(hint, EVENT_KEY, "left_anti").drop(EVENT_KEY)
    repeated = keyed.join(hint, EVENT_KEY, "left_semi").drop(EVENT_KEY)
    return singles, repeated
