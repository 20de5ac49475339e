"""``fleetlens``: one entry point for every job. Settings are loaded once here and passed down."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from fleetlens import __version__
from fleetlens.config import Settings, load_settings
from fleetlens.logging import configure_logging

if TYPE_CHECKING:
    from fleetlens.alerts.rules import RuleSet

app = typer.Typer(
    name="fleetlens",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="FleetLens: telemetry analytics over Kafka, Spark and Delta Lake.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the effective configuration.")
broker_app = typer.Typer(no_args_is_help=True, help="The embedded Kafka broker (Tansu).")
speed_app = typer.Typer(no_args_is_help=True, help="The speed layer: live window aggregates.")
alerts_app = typer.Typer(no_args_is_help=True, help="Alerting: rules and notifications.")
simulate_app = typer.Typer(no_args_is_help=True, help="Simulated fleets: live or history.")
spark_app = typer.Typer(no_args_is_help=True, help="The batch layer's Spark jobs.")
app.add_typer(config_app, name="config")
app.add_typer(broker_app, name="broker")
app.add_typer(simulate_app, name="simulate")
app.add_typer(speed_app, name="speed")
app.add_typer(alerts_app, name="alerts")
app.add_typer(spark_app, name="spark")
spark_cluster_app = typer.Typer(
    no_args_is_help=True, help="A Spark standalone cluster on this machine (loopback)."
)
spark_app.add_typer(spark_cluster_app, name="cluster")
# -- trino and grafana: sub-apps (commands at the end of the file) --------------------------
trino_app = typer.Typer(no_args_is_help=True, help="Trino over the lake: tables and views.")
grafana_app = typer.Typer(no_args_is_help=True, help="Grafana dashboards, generated as code.")
app.add_typer(trino_app, name="trino")
app.add_typer(grafana_app, name="grafana")
# -- end trino and grafana sub-apps ---------------------------------------------------------
report_app = typer.Typer(no_args_is_help=True, help="Reports: capacity planning.")
app.add_typer(report_app, name="report")

console = Console(stderr=True)


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _version(value: bool) -> None:
    if value:
        print(f"fleetlens {__version__}")
        raise typer.Exit


@app.callback()
def main(
    ctx: typer.Context,
    profile: Annotated[
        str | None,
        typer.Option(
            help="Configuration profile (conf/<profile>.yaml); default embedded.",
            envvar="FLEETLENS_PROFILE",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
) -> None:
    """Load the settings once for whichever command runs."""
    try:
        settings = load_settings(profile)
    except (FileNotFoundError, ValueError) as error:
        console.print(f"[red]configuration error:[/red] {error}")
        raise typer.Exit(2) from error
    configure_logging(settings)
    ctx.obj = settings


def _stop_on_signals(stop: threading.Event | asyncio.Event) -> None:
    """SIGTERM and SIGINT ask the running loop to finish cleanly."""

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# -- config ---------------------------------------------------------------------------------


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Print the effective configuration, secrets masked."""
    data = _settings(ctx).redacted()
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False), end="")


# -- broker ---------------------------------------------------------------------------------


@broker_app.command("start")
def broker_start(ctx: typer.Context) -> None:
    """Start the embedded broker (if not running) and create the topics; returns once ready."""
    from fleetlens.kafka.broker import EmbeddedBroker

    status = EmbeddedBroker(_settings(ctx)).start()
    print(json.dumps(vars(status)))


@broker_app.command("stop")
def broker_stop(ctx: typer.Context) -> None:
    """Stop the embedded broker (its data is in memory and is lost)."""
    from fleetlens.kafka.broker import EmbeddedBroker

    stopped = EmbeddedBroker(_settings(ctx)).stop()
    print(json.dumps({"stopped": stopped}))


@app.command("topics")
def topics(
    ctx: typer.Context,
    action: Annotated[str, typer.Argument(help="ensure: create the missing topics.")] = "ensure",
) -> None:
    """Create the topics of ``kafka.topics`` that do not exist (partitions, replication
    factor as configured) on the configured brokers; print every topic's partitions."""
    from fleetlens.kafka.clients import ensure_topics

    if action != "ensure":
        raise typer.BadParameter("the only action is 'ensure'", param_hint="ACTION")
    print(json.dumps(ensure_topics(_settings(ctx).kafka)))


@broker_app.command("status")
def broker_status(ctx: typer.Context) -> None:
    """Whether the broker is reachable, and the topics' partition counts. Exit 1 if down."""
    from fleetlens.kafka.broker import EmbeddedBroker

    status = EmbeddedBroker(_settings(ctx)).status()
    print(json.dumps(vars(status)))
    if not status.reachable:
        raise typer.Exit(1)


# -- services -------------------------------------------------------------------------------


@app.command()
def collector(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Override collector.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override collector.port.")] = None,
) -> None:
    """Serve the HTTP collector only: POST /api/v1/metrics → Kafka (``serve`` adds the rest
    of the API)."""
    from fleetlens.ingest.collector import create_app

    settings = _settings(ctx)
    _run_http(create_app(settings), settings, host=host, port=port)


def _run_http(asgi: Any, settings: Settings, *, host: str | None, port: int | None) -> None:
    import uvicorn

    uvicorn.run(
        asgi,
        host=host or settings.collector.host,
        port=port or settings.collector.port,
        log_level="warning",
        access_log=False,
    )


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Override collector.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override collector.port.")] = None,
) -> None:
    """Serve the FleetLens API: the collector's ingest and the alert endpoints
    (/api/v1/alerts, /api/v1/silences), with the tenants' tokens; OpenAPI at /docs."""
    from fleetlens.serving.app import create_app

    settings = _settings(ctx)
    _run_http(create_app(settings), settings, host=host, port=port)


@app.command()
def archive(
    ctx: typer.Context,
    exit_when_idle: Annotated[
        float | None,
        typer.Option(help="Stop, after flushing, once no record came for this many seconds."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port.")
    ] = None,
) -> None:
    """Archive fleet.metrics.v1 into the landing zone (Parquet by event hour), exactly once."""
    from prometheus_client import REGISTRY, start_http_server

    from fleetlens.ingest.archiver import Archiver

    if metrics_port:
        start_http_server(metrics_port)
    stop = threading.Event()
    _stop_on_signals(stop)
    stats = Archiver(_settings(ctx), registry=REGISTRY).run(
        stop=stop, exit_when_idle_s=exit_when_idle
    )
    print(json.dumps(vars(stats)))


@speed_app.command("run")
def speed_run(
    ctx: typer.Context,
    exit_when_idle: Annotated[
        float | None,
        typer.Option(help="Stop, after a final commit, once no record came for this many seconds."),
    ] = None,
    instance: Annotated[int | None, typer.Option(help="Override speed.instance.")] = None,
    instances: Annotated[int | None, typer.Option(help="Override speed.instances.")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port.")
    ] = None,
) -> None:
    """Consume fleet.metrics.v1 into live 1-minute windows (speed_1m, fleet.agg1m.v1)."""
    from speed_layer.memory import configure_process_memory

    configure_process_memory()  # before the layer's libraries load

    from prometheus_client import REGISTRY, start_http_server

    from speed_layer.app import SpeedLayer

    settings = _settings(ctx)
    changes = {
        k: v for k, v in {"instance": instance, "instances": instances}.items() if v is not None
    }
    if changes:
        settings = settings.model_copy(update={"speed": settings.speed.model_copy(update=changes)})
    port = metrics_port or settings.speed.metrics_port
    if port:
        start_http_server(port)
    stop = threading.Event()
    _stop_on_signals(stop)
    layer = SpeedLayer(settings, registry=REGISTRY)
    signal.signal(signal.SIGHUP, lambda *_: layer.reload_alerts.set())  # re-read alert rules
    stats = layer.run(stop=stop, exit_when_idle_s=exit_when_idle)
    print(json.dumps(vars(stats)))


# -- alerts -------------------------------------------------------------------------------


def _rules(path: Path) -> RuleSet:
    """The rules of ``path``, or exit 1 with the error (it names the rule and field)."""
    from fleetlens.alerts.rules import RulesError, load_rules

    try:
        return load_rules(path)
    except RulesError as error:
        console.print(str(error), markup=False, style="red")
        raise typer.Exit(1) from None


@alerts_app.command("check")
def alerts_check(
    ctx: typer.Context,
    rules: Annotated[
        Path | None, typer.Option(help="Rules file (default: alerts.rules_path).")
    ] = None,
) -> None:
    """Validate a rules file; exits 1 naming the rule and field at fault."""
    path = rules or _settings(ctx).alerts.rules_file
    ruleset = _rules(path)
    print(json.dumps({"path": str(path), "rules": [r.name for r in ruleset.rules]}))


@alerts_app.command("backtest")
def alerts_backtest(
    ctx: typer.Context,
    start: Annotated[str, typer.Option(help="First hour, ISO 8601 UTC (2026-11-20T00:00:00Z).")],
    end: Annotated[str, typer.Option(help="End hour (exclusive), ISO 8601 UTC.")],
    rules: Annotated[
        Path | None, typer.Option(help="Rules file (default: alerts.rules_path).")
    ] = None,
) -> None:
    """Replay rules over rollup_1m: per rule, how often it would have fired, for how long
    and where (JSON)."""
    from fleetlens.alerts.backtest import backtest
    from fleetlens.lake.paths import Lake

    settings = _settings(ctx)
    ruleset = _rules(rules or settings.alerts.rules_file)
    reports = backtest(ruleset, Lake(settings.lake), start=_hour(start), end=_hour(end))
    print(json.dumps({name: vars(report) for name, report in reports.items()}))


@alerts_app.command("notify")
def alerts_notify(
    ctx: typer.Context,
    exit_when_idle: Annotated[
        float | None, typer.Option(help="Stop once no record came for this many seconds.")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port.")
    ] = None,
) -> None:
    """Deliver the notifications on fleet.alerts.v1 (webhook, email, log, Apprise)."""
    from prometheus_client import REGISTRY, start_http_server

    from fleetlens.alerts.notifier import Notifier

    settings = _settings(ctx)
    if metrics_port:
        start_http_server(metrics_port)
    stop = threading.Event()
    _stop_on_signals(stop)
    stats = Notifier(settings, registry=REGISTRY).run(stop=stop, exit_when_idle_s=exit_when_idle)
    print(json.dumps(vars(stats)))


# -- spark --------------------------------------------------------------------------------


def _hour(text: str) -> datetime:
    """An hour-aligned UTC instant from ISO 8601 (``2026-11-20T13:00:00Z``)."""
    from fleetlens.orchestration import parse_hour

    try:
        return parse_hour(text)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error


@spark_app.command("run")
def spark_run(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(help="Job name (see `fleetlens spark jobs`).")],
    start: Annotated[str, typer.Option(help="Interval start, hour-aligned ISO 8601 UTC.")],
    end: Annotated[str, typer.Option(help="Interval end (exclusive), hour-aligned.")],
    force: Annotated[
        bool, typer.Option(help="Recompute every partition of the interval, changed or not.")
    ] = False,
) -> None:
    """Run one batch job over [start, end); prints one JSON line with what it did."""
    from spark_jobs.runner import run_cli_job

    begin, finish = _hour(start), _hour(end)
    if finish <= begin:
        raise typer.BadParameter("--end must be after --start", param_hint="--end")
    result = run_cli_job(_settings(ctx), job, begin, finish, force=force)
    print(json.dumps(result, default=str))


@spark_app.command("jobs")
def spark_jobs_list() -> None:
    """List the batch jobs."""
    from spark_jobs.runner import job_names

    for name in job_names():
        print(name)


@spark_cluster_app.command("start")
def spark_cluster_start(ctx: typer.Context) -> None:
    """Start a master and ``spark.cluster.workers`` workers from the installed pyspark;
    returns once every worker is ALIVE and prints the master URL (for
    FLEETLENS_SPARK__MASTER)."""
    from spark_jobs.cluster import SparkCluster

    print(SparkCluster(_settings(ctx)).start().master_url)


@spark_cluster_app.command("stop")
def spark_cluster_stop(ctx: typer.Context) -> None:
    """Stop the cluster's daemons and executors (SIGTERM, then SIGKILL after a grace)."""
    from spark_jobs.cluster import SparkCluster

    print(json.dumps({"stopped": SparkCluster(_settings(ctx)).stop()}))


@spark_cluster_app.command("status")
def spark_cluster_status(ctx: typer.Context) -> None:
    """The daemons' pids, the workers ALIVE and the applications, as JSON. Exit 1 if the
    cluster is not (wholly) running."""
    from spark_jobs.cluster import SparkCluster

    status = SparkCluster(_settings(ctx)).status()
    print(json.dumps(vars(status)))
    if not status.running:
        raise typer.Exit(1)


# -- simulate -------------------------------------------------------------------------------


def _parse_duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def _fleet(settings: Settings, servers: int, seed: int) -> Any:
    from fleetlens.simulator.fleet import Fleet, FleetSpec

    anchor = int(time.time()) // 86_400 * 86_400
    return Fleet(
        FleetSpec.from_settings(settings.simulator, servers=servers, seed=seed, anchor_s=anchor)
    )


@simulate_app.command("live")
def simulate_live(
    ctx: typer.Context,
    servers: Annotated[int, typer.Option(help="Simulated servers.")] = 200,
    interval: Annotated[str, typer.Option(help="Sampling interval, e.g. 10s.")] = "10s",
    duration: Annotated[
        float | None, typer.Option(help="Seconds to run (default: until Ctrl-C).")
    ] = None,
    rate: Annotated[float | None, typer.Option(help="Most payloads/s to send.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same telemetry.")] = 42,
    late: Annotated[float, typer.Option(help="Fraction of payloads sent late.")] = 0.0,
    late_mean: Annotated[float, typer.Option(help="Mean delay of late payloads, seconds.")] = 45.0,
    duplicates: Annotated[float, typer.Option(help="Fraction of payloads sent twice.")] = 0.0,
    out_of_order: Annotated[float, typer.Option(help="Fraction delayed up to 2 intervals.")] = 0.0,
    malformed: Annotated[float, typer.Option(help="Fraction of invalid payloads.")] = 0.0,
    raw_malformed: Annotated[int, typer.Option(help="Raw invalid records to Kafka per tick.")] = 0,
) -> None:
    """Post live telemetry of a simulated fleet through the collector."""
    from fleetlens.simulator.live import FaultSpec, run_live

    settings = _settings(ctx)
    faults = FaultSpec(
        late=late,
        late_mean_s=late_mean,
        duplicates=duplicates,
        out_of_order=out_of_order,
        malformed=malformed,
        raw_malformed=raw_malformed,
    )
    stats = asyncio.run(
        _simulate_live(
            settings, servers, _parse_duration(interval), duration, rate, seed, faults, run_live
        )
    )
    print(json.dumps(vars(stats), default=str))


async def _simulate_live(
    settings: Settings,
    servers: int,
    interval_s: float,
    duration: float | None,
    rate: float | None,
    seed: int,
    faults: Any,
    run_live: Any,
) -> Any:
    from fleetlens.kafka.clients import make_producer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    producer = make_producer(settings.kafka) if faults.raw_malformed else None
    topic = settings.kafka.topics.metrics.name
    try:
        return await run_live(
            _fleet(settings, servers, seed),
            collector_url=settings.simulator.collector_url,
            tokens={t: s.get_secret_value() for t, s in settings.collector.tokens.items()},
            interval_s=int(interval_s),
            duration_s=duration,
            rate=rate,
            faults=faults,
            batch_size=settings.simulator.batch_size,
            concurrency=settings.simulator.concurrency,
            raw_sink=(lambda raw: producer.send(topic, value=raw)) if producer else None,
            stop=stop,
        )
    finally:
        if producer is not None:
            producer.flush()
            producer.close()


@simulate_app.command("history")
def simulate_history(
    ctx: typer.Context,
    days: Annotated[float, typer.Option(help="Days of history, ending at the current hour.")] = 1,
    servers: Annotated[int, typer.Option(help="Simulated servers.")] = 300,
    out: Annotated[Path | None, typer.Option(help="Landing folder (default: the lake's).")] = None,
    interval: Annotated[str, typer.Option(help="Sampling interval.")] = "10s",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    duplicates: Annotated[float, typer.Option(help="Fraction of payloads written twice.")] = 0.0,
) -> None:
    """Write the last DAYS of simulated telemetry straight into a landing zone."""
    from tqdm import tqdm

    from fleetlens.lake.paths import Lake
    from fleetlens.simulator.history import write_history

    settings = _settings(ctx)
    end = int(time.time()) // 3600 * 3600
    start = end - int(days * 86_400)
    started = time.perf_counter()
    with tqdm(total=(end - start) // 3600, unit="h", desc="history", disable=None) as bar:
        stats = write_history(
            _fleet(settings, servers, seed),
            Lake(settings.lake),
            start_s=start,
            end_s=end,
            interval_s=int(_parse_duration(interval)),
            landing_dir=str(out.resolve()) if out else None,
            duplicate_fraction=duplicates,
            progress=bar.update,
        )
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            vars(stats)
            | {
                "start": datetime.fromtimestamp(start, UTC).isoformat(),
                "end": datetime.fromtimestamp(end, UTC).isoformat(),
                "seconds": round(elapsed, 2),
                "points_per_s": round(stats.points / elapsed),
            }
        )
    )


# -- demo -----------------------------------------------------------------------------------


@app.command()
def demo(
    ctx: typer.Context,
    duration: Annotated[
        float | None, typer.Option(help="Seconds to run (default: until Ctrl-C).")
    ] = None,
    servers: Annotated[int, typer.Option(help="Simulated servers.")] = 300,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only a JSON summary line.")
    ] = False,
    clean: Annotated[bool, typer.Option(help="Inject no faults.")] = False,
) -> None:
    """Run broker, collector, archiver and a simulated fleet; drain and summarise at the end."""
    from fleetlens.demo import run_demo

    summary = run_demo(
        _settings(ctx), duration_s=duration, servers=servers, quiet=as_json, inject_faults=not clean
    )
    print(json.dumps(summary))


# -- trino and grafana ----------------------------------------------------------------------

_CatalogOption = Annotated[str, typer.Option(help="Trino catalog of the Delta Lake connector.")]
_SchemaOption = Annotated[str, typer.Option(help="Schema for the lake's tables and views.")]


@trino_app.command("sql")
def trino_sql(
    ctx: typer.Context, catalog: _CatalogOption = "delta", schema: _SchemaOption = "fleetlens"
) -> None:
    """Print the statements that register the lake's tables and create the serving views."""
    from fleetlens.serving.trino import statements

    for sql in statements(_settings(ctx), catalog=catalog, schema=schema):
        print(f"{sql};")


@trino_app.command("apply")
def trino_apply(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(help="Trino's URL, e.g. http://trino:8080.")],
    catalog: _CatalogOption = "delta",
    schema: _SchemaOption = "fleetlens",
    user: Annotated[str, typer.Option(help="Trino user.")] = "fleetlens",
) -> None:
    """Create the schema, register the lake's tables that exist and are not registered yet,
    and (re)create the serving views; prints one JSON line."""
    from urllib.parse import urlsplit

    from trino.dbapi import connect
    from trino.exceptions import HttpError, TrinoConnectionError, TrinoQueryError

    from fleetlens.lake import delta
    from fleetlens.lake.paths import Lake
    from fleetlens.serving.trino import LAKE_TABLES, statements

    settings = _settings(ctx)
    where = urlsplit(url)
    if where.scheme not in ("http", "https") or not where.hostname:
        raise typer.BadParameter("expected http(s)://host[:port]", param_hint="--url")
    lake = Lake(settings.lake)
    present = [name for name in LAKE_TABLES if delta.table_exists(lake, name)]
    connection = connect(  # type: ignore[no-untyped-call]
        host=where.hostname,
        port=where.port or (443 if where.scheme == "https" else 8080),
        http_scheme=where.scheme,
        user=user,
        catalog=catalog,
        max_attempts=1,  # an admin command: fail now rather than retry for minutes
        request_timeout=30,
    )
    cursor = connection.cursor()

    def run(sql: str, params: list[Any] | None = None) -> list[Any]:
        cursor.execute(sql, params)
        return list(cursor.fetchall())

    try:
        setup = statements(settings, catalog=catalog, schema=schema, tables=())
        run(setup[0])  # the schema, so that its tables can be listed
        known = {
            row[0]
            for row in run(
                f"SELECT table_name FROM {catalog}.information_schema.tables "  # noqa: S608
                "WHERE table_schema = ?",
                [schema],
            )
        }
        pending = [name for name in present if name not in known]
        for sql in statements(settings, catalog=catalog, schema=schema, tables=pending)[1:]:
            run(sql)
    except (TrinoConnectionError, HttpError) as error:
        console.print(f"cannot reach Trino at {url}: {error}", markup=False, style="red")
        raise typer.Exit(1) from None
    except TrinoQueryError as error:
        console.print(f"Trino refused a statement: {error}", markup=False, style="red")
        raise typer.Exit(1) from None
    finally:
        connection.close()
    missing = [name for name in LAKE_TABLES if name not in present]
    already = sorted(known & set(LAKE_TABLES))
    print(json.dumps({"registered": pending, "already": already, "missing": missing}))


@grafana_app.command("dashboards")
def grafana_dashboards(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder for the dashboards' JSON files.")],
) -> None:
    """Write the FleetLens dashboards (JSON for Grafana's file provisioning)."""
    from fleetlens.serving.grafana import write_dashboards

    paths = write_dashboards(_settings(ctx), out)
    print(json.dumps({"written": [str(p) for p in paths]}))


# -- end trino and grafana ------------------------------------------------------------------


# -- reports and the workbench's lake -------------------------------------------------------


def _instant(text: str) -> datetime:
    """A UTC instant from ISO 8601 (``2026-11-20``, ``2026-11-20T00:00:00Z``)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise typer.BadParameter(f"{text!r} is not an ISO 8601 date or time") from error
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@report_app.command("capacity")
def report_capacity(
    ctx: typer.Context,
    start: Annotated[str, typer.Option(help="First day (ISO 8601, UTC).")],
    end: Annotated[str, typer.Option(help="End (exclusive; ISO 8601, UTC), e.g. today.")],
    group_by: Annotated[
        str, typer.Option("--group-by", help="service, cluster or region.")
    ] = "service",
    horizon: Annotated[str, typer.Option(help="Forecast horizon, e.g. 90d.")] = "90d",
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder (default: <report.out_dir>/capacity/<end date>)."),
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's servers.")] = None,
) -> None:
    """Write the capacity-planning report (HTML and CSV) for the days of [START, END)."""
    from fleetlens.reports.capacity import GROUPINGS, write_report

    settings = _settings(ctx)
    if group_by not in GROUPINGS:
        raise typer.BadParameter(f"one of {', '.join(GROUPINGS)}", param_hint="--group-by")
    horizon_s = _parse_duration(horizon)
    if horizon_s < 86_400 or horizon_s % 86_400:
        raise typer.BadParameter("whole days, e.g. 90d", param_hint="--horizon")
    begin, finish = _instant(start), _instant(end)
    folder = out or settings.report.out_dir / "capacity" / f"{finish:%Y-%m-%d}"
    try:
        report = write_report(
            settings,
            start=begin,
            end=finish,
            group_by=group_by,  # type: ignore[arg-type]
            horizon_days=int(horizon_s // 86_400),
            out=folder,
            tenant=tenant,
        )
    except ValueError as error:
        console.print(f"[red]report capacity: {error}[/red]")
        raise typer.Exit(2) from error
    crossing = report.forecast.headroom.filter(
        report.forecast.headroom["days_to_threshold"].is_not_null()
    )
    print(
        json.dumps(
            {
                "html": str(report.html),
                "tables": {name: str(path) for name, path in report.tables.items()},
                "series": report.forecast.headroom.height,
                "crossing_within_horizon": crossing.height,
            }
        )
    )


@simulate_app.command("lake")
def simulate_lake(
    ctx: typer.Context,
    days: Annotated[int, typer.Option(help="Days of daily rollups, ending now.")] = 60,
    servers: Annotated[int, typer.Option(help="Simulated servers.")] = 48,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    if_empty: Annotated[
        bool,
        typer.Option(
            "--if-empty",
            help="Do nothing if the lake has batch history; behind live data only (the demo's),"
            " write the history without the live tables.",
        ),
    ] = False,
) -> None:
    """Write a simulated lake for the workbench (notebooks, reports) straight into the
    lake's tables: months of daily and hourly rollups, a day of minutes, a live tail."""
    from fleetlens.lake import delta
    from fleetlens.lake.paths import Lake
    from fleetlens.lake.schemas import RAW_POINTS, ROLLUP_1D, SPEED_1M
    from fleetlens.simulator.workbench import WorkbenchShape, write_workbench_lake

    settings = _settings(ctx)
    lake = Lake(settings.lake)
    # Simulated rows must not mix with real ones: with batch history there, nothing is
    # written; behind live data only (the demo's speed_1m), the history but no live tables.
    history = [t for t in (ROLLUP_1D, RAW_POINTS) if delta.table_exists(lake, t)]
    if if_empty and history:
        print(json.dumps({"skipped": f"{settings.lake.root} holds {', '.join(history)}"}))
        return
    live = not delta.table_exists(lake, SPEED_1M)
    summary = write_workbench_lake(
        lake,
        _fleet(settings, servers, seed),
        end=datetime.now(UTC),
        shape=WorkbenchShape(days=days),
        live=live or not if_empty,
    )
    print(json.dumps(summary))


notebooks_app = typer.Typer(no_args_is_help=True, help="The analyst notebooks, run headless.")
app.add_typer(notebooks_app, name="notebooks")


@notebooks_app.command("run")
def notebooks_run(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None, typer.Argument(help="Notebooks to run (default: all, in order).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where executed copies and HTML go.")] = Path(
        "build/notebooks"
    ),
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="NAME=VALUE (YAML), for the notebooks declaring NAME."),
    ] = None,
) -> None:
    """Execute the notebooks on the current profile's lake (papermill) and write an HTML copy
    of each."""
    import yaml

    from fleetlens.workbench import NOTEBOOKS, run_notebooks

    settings = _settings(ctx)
    unknown = sorted(set(names or ()) - set(NOTEBOOKS))
    if unknown:
        raise typer.BadParameter(f"unknown {unknown}; one of {', '.join(NOTEBOOKS)}")
    parameters = {}
    for item in param or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--param")
        parameters[key] = yaml.safe_load(value)
    console.print(f"notebooks on {settings.lake.root} -> {out}")
    runs = run_notebooks(
        out,
        names=names or NOTEBOOKS,
        parameters=parameters,
        progress=lambda name: console.print(f"running {name}"),
    )
    for run in runs:
        console.print(f"{run.name}: {run.figures} figures, {run.seconds:.1f} s -> {run.html}")
