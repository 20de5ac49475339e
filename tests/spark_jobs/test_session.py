from __future__ import annotations

import pytest
from datasketches import kll_doubles_sketch
from pyspark.sql import SparkSession

from spark_jobs.delta_io import resolve_mode
from spark_jobs.session import MODE_CONF, has_delta_spark

pytestmark = pytest.mark.spark


def test_session_runs_in_utc_and_makes_readable_kll_sketches(spark: SparkSession) -> None:
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    frame = spark.createDataFrame([(float(v),) for v in range(1, 101)], "v double")
    raw = frame.selectExpr("kll_sketch_agg_double(v, 200) AS s").first()
    assert raw is not None
    sketch = kll_doubles_sketch.deserialize(bytes(raw["s"]))
    assert sketch.n == 100 and sketch.get_min_value() == 1.0 and sketch.get_max_value() == 100.0


def test_delta_mode_resolves_auto_and_refuses_native_without_the_jars(
    spark: SparkSession,
) -> None:
    present = has_delta_spark(spark)
    # build_session passes the settings' spark.delta_mode (auto by default) to the session.
    assert spark.conf.get(MODE_CONF) == "auto"
    assert resolve_mode(spark) == ("native" if present else "delta-rs")
    assert resolve_mode(spark, mode="delta-rs") == "delta-rs"
    if not present:
        spark.conf.set(MODE_CONF, "native")
        try:
            with pytest.raises(RuntimeError, match="delta-spark is not on the classpath"):
                resolve_mode(spark)
        finally:
            spark.conf.set(MODE_CONF, "auto")
