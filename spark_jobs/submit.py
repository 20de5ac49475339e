"""The ``fleetlens`` command line under ``spark-submit``::

    SUBMIT=$(python -c 'import spark_jobs.submit as m; print(m.__file__)')
    spark-submit --master spark://host:7077 "$SUBMIT" \\
        spark run rollup_1h --start 2026-11-20T13:00:00Z --end 2026-11-20T14:00:00Z

The arguments are those of ``fleetlens``. spark-submit's own options (``--master``,
``--conf``, ``--packages``, memory) win over ``spark.*`` in the settings: the session is
created from them before the job asks for one, and the job then only sets its runtime SQL
options (time zone, shuffle partitions, timestamp type) on it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """Create the session from spark-submit's configuration, then run the CLI."""
    from pyspark.sql import SparkSession

    SparkSession.builder.getOrCreate()
    from fleetlens.cli.main import app

    app(list(sys.argv[1:] if argv is None else argv), prog_name="fleetlens")


if __name__ == "__main__":
    main()
