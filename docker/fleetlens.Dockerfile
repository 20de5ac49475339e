# The one FleetLens image: API/collector, archiver, speed layer, notifier, Airflow (api-server,
# scheduler, dag-processor), JupyterLab, and the Spark master and workers, all from the same
# locked environment. Build from the repository root:
#   docker build -f docker/fleetlens.Dockerfile -t fleetlens:latest .
FROM python:3.11-slim-bookworm

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    FLEETLENS_HOME=/opt/fleetlens
WORKDIR /opt/fleetlens

# What scripts/setup.sh would install with apt, plus curl for the jar downloads below.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends make curl procps \
 && rm -rf /var/lib/apt/lists/*

# The project is installed exactly as `make setup` does it on a developer machine:
# scripts/setup.sh (--runtime: without the test-only browser and docker-compose) creates .venv
# from requirements.lock, installs the project and builds the dashboard.
COPY . /opt/fleetlens
RUN bash scripts/setup.sh --runtime

# delta-spark's and S3A's jars, baked in at build time (production has no Maven at run time):
# with them on pyspark's classpath, `spark.delta_mode: auto` commits natively through
# delta-spark, and s3:// lake paths go through Hadoop's S3A connector.
ARG AWS_SDK_VERSION=2.29.52
RUN set -eu; \
    jars="$(.venv/bin/python -c 'import pyspark, os; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"; \
    delta="$(.venv/bin/python -c 'from importlib.metadata import version; print(version("delta-spark"))')"; \
    hadoop="$(ls "$jars" | sed -n 's/^hadoop-client-api-\(.*\)\.jar$/\1/p')"; \
    scala="$(ls "$jars" | sed -n 's/^scala-library-\(2\.[0-9]*\)\..*\.jar$/\1/p')"; \
    maven=https://repo1.maven.org/maven2; \
    for jar in \
        "io/delta/delta-spark_${scala}/${delta}/delta-spark_${scala}-${delta}.jar" \
        "io/delta/delta-storage/${delta}/delta-storage-${delta}.jar" \
        "org/apache/hadoop/hadoop-aws/${hadoop}/hadoop-aws-${hadoop}.jar" \
        "software/amazon/awssdk/bundle/${AWS_SDK_VERSION}/bundle-${AWS_SDK_VERSION}.jar"; do \
      curl -fsSL -o "$jars/$(basename "$jar")" "$maven/$jar"; \
    done

ENV PATH=/opt/fleetlens/.venv/bin:$PATH \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/fleetlens/dags \
    AIRFLOW_VAR_FLEETLENS_EXECUTABLE=/opt/fleetlens/.venv/bin/fleetlens
RUN useradd --create-home --uid 50000 fleetlens && mkdir -p /opt/airflow \
 && chown -R fleetlens /opt/airflow /opt/fleetlens
USER fleetlens
ENTRYPOINT []
CMD ["fleetlens", "--help"]
