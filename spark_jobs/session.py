"""The Spark session of the batch jobs, built from :class:`~fleetlens.config.SparkSettings`."""

from __future__ import annotations

from typing import Final

from pyspark.sql import SparkSession

from fleetlens.config import Settings
from fleetlens.lake.paths import Lake
from fleetlens.lake.storage import S3_SCHEMES, spark_hadoop_conf

__all__ = ["DELTA_EXTENSION", "MODE_CONF", "build_session", "has_delta_spark"]

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
#: Session configuration naming how tables are committed (``spark.delta_mode`` in the
#: settings: ``auto``, ``native`` or ``delta-rs``); ``spark_jobs.delta_io`` resolves it.
MODE_CONF: Final = "spark.fleetlens.deltaMode"
_DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def build_session(settings: Settings, *, app_name: str | None = None) -> SparkSession:
    """The session for one job (reused if this process already has one).

    Time is UTC throughout: windows and partitions are computed on UTC days and hours
    whatever the machine's zone.
    """
    spark = settings.spark
    builder = (
        SparkSession.builder.master(spark.master)
        .appName(app_name or spark.app_name)
        .config("spark.driver.memory", spark.driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(spark.shuffle_partitions))
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        # Parquet timestamps as INT64 microseconds: what delta-rs, Trino and polars expect.
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config(MODE_CONF, spark.delta_mode)
    )
    if spark.delta_mode == "native":
        builder = builder.config("spark.sql.extensions", DELTA_EXTENSION).config(
            "spark.sql.catalog.spark_catalog", _DELTA_CATALOG
        )
    lake = Lake(settings.lake)
    if lake.scheme in S3_SCHEMES:
        # Before spark.conf, so that a setting there wins. Needs hadoop-aws on the classpath.
        for key, value in spark_hadoop_conf(lake.storage_options).items():
            builder = builder.config(key, value)
    for key, value in spark.conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


def has_delta_spark(session: SparkSession) -> bool:
    """Whether delta-spark's classes are on the session's classpath."""
    jvm = session.sparkContext._jvm
    assert jvm is not None
    try:
        jvm.java.lang.Class.forName(DELTA_EXTENSION)
    except Exception:  # py4j raises its own error type for ClassNotFoundException
        return False
    return True
