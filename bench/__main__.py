"""``python -m bench [WHICH] [options]``: the benchmarks (``--help`` lists them)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench._common import machine, say


def _batches(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="FleetLens benchmarks: each starts its own broker on a free loopback port, "
        "a scratch lake and the service under test, measures a baseline in the same run, "
        "prints a table and stops everything it started.",
    )
    parser.add_argument(
        "which",
        nargs="?",
        choices=[
            "all",
            "collector",
            "archiver",
            "speed",
            "speed-delta",
            "batch",
            "alerts",
            "query",
        ],
        default="all",
        help="which benchmark to run (default: all = collector, archiver, speed; speed-delta, "
        "the cost of speed_1m's Delta upserts and of opening it after a day of commits without a "
        "broker, ~2 min, runs only on its own: python -m bench speed-delta, or python -m "
        "bench.speed_delta --help for its options; batch, one simulated hour of 10,000 servers "
        "through compact and the rollups beside a bare Spark group-by and polars, ~4 min, "
        "also only on its own: python -m bench.batch --help; alerts, notification latency at "
        "18,000 points/s with 50 rules and the rules' throughput cost, ~3 min, only on its own: "
        "python -m bench.alerts --help; query, the query engine's p50/p95 cold and warm on four "
        "cases beside a direct polars scan, ~2 min, only on its own: python -m bench.query --help)",
    )
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the scratch directories (logs, lake) for inspection",
    )
    c = parser.add_argument_group("collector")
    c.add_argument("--servers", type=int, default=10_000, help="simulated servers (10000)")
    c.add_argument(
        "--duration", type=float, default=20.0, help="seconds of load per batch size (20)"
    )
    c.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per batch size (2)")
    c.add_argument(
        "--batches",
        type=_batches,
        default=(1, 100),
        help="payloads per request, comma-separated (1,100)",
    )
    c.add_argument("--clients", type=int, default=1, help="load-generator processes (1)")
    c.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="HTTP client of the load generator (raw)",
    )
    c.add_argument(
        "--connections",
        type=int,
        default=32,
        help="concurrent keep-alive connections in total (32)",
    )
    c.add_argument(
        "--slots", type=int, default=6, help="ticks of the fleet pre-built as payloads, cycled (6)"
    )
    c.add_argument(
        "--baseline-duration", type=float, default=5.0, help="seconds of each baseline (5)"
    )
    a = parser.add_argument_group("archiver")
    a.add_argument(
        "--records",
        type=int,
        default=300_000,
        help="records pre-filled on the metrics topic (300000)",
    )
    a.add_argument(
        "--archive-servers",
        type=int,
        default=10_000,
        help="servers the pre-filled records come from (10000)",
    )
    a.add_argument(
        "--prefill-procs",
        type=int,
        default=2,
        help="producer processes that pre-fill the topic (2)",
    )
    a.add_argument(
        "--idle",
        type=float,
        default=3.0,
        help="--exit-when-idle seconds given to the archiver and the speed layer (3)",
    )
    s = parser.add_argument_group("speed (also uses --prefill-procs and --idle)")
    s.add_argument(
        "--speed-records",
        type=int,
        default=500_000,
        help="records pre-filled on the metrics topic (500000)",
    )
    s.add_argument(
        "--speed-servers",
        type=int,
        default=10_000,
        help="servers the pre-filled records come from, 6 metrics each (10000)",
    )
    s.add_argument(
        "--speed-profile",
        metavar="PATH",
        help="run the speed layer under cProfile and write the profile to PATH",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.clients < 1 or args.connections < args.clients:
        print("--clients must be ≥ 1 and --connections ≥ --clients", file=sys.stderr)
        return 2
    started = time.monotonic()
    date = subprocess.run(["date"], capture_output=True, text=True, check=False).stdout.strip()
    say(f"{date} — {machine()}")
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"{'> ' if args.markdown else ''}{date} · {machine()} · `{command.strip()}`")
    reports = []
    if args.which in ("all", "collector"):
        from bench.collector import CollectorOptions
        from bench.collector import run as run_collector

        reports.append(
            run_collector(
                CollectorOptions(
                    servers=args.servers,
                    duration_s=args.duration,
                    warmup_s=args.warmup,
                    batches=args.batches,
                    clients=args.clients,
                    connections=args.connections,
                    slots=args.slots,
                    baseline_s=args.baseline_duration,
                    keep=args.keep,
                    client=args.client,
                )
            )
        )
        reports[-1].print(markdown=args.markdown)
    if args.which in ("all", "archiver"):
        from bench.archiver import ArchiverOptions
        from bench.archiver import run as run_archiver

        reports.append(
            run_archiver(
                ArchiverOptions(
                    records=args.records,
                    servers=args.archive_servers,
                    idle_s=args.idle,
                    prefill_procs=args.prefill_procs,
                    keep=args.keep,
                )
            )
        )
        reports[-1].print(markdown=args.markdown)
    if args.which in ("all", "speed"):
        from bench.speed_layer import SpeedOptions
        from bench.speed_layer import run as run_speed

        reports.append(
            run_speed(
                SpeedOptions(
                    records=args.speed_records,
                    servers=args.speed_servers,
                    idle_s=args.idle,
                    prefill_procs=args.prefill_procs,
                    keep=args.keep,
                    profile=args.speed_profile,
                )
            )
        )
        reports[-1].print(markdown=args.markdown)
    if args.which == "speed-delta":
        from bench.speed_delta import main as run_speed_delta

        run_speed_delta(["--markdown"] if args.markdown else [])
    if args.which == "batch":
        from bench.batch import main as run_batch

        run_batch(["--markdown"] if args.markdown else [])
    if args.which == "alerts":
        from bench.alerts import main as run_alerts

        run_alerts(["--markdown"] if args.markdown else [])
    if args.which == "query":
        from bench.query import main as run_query

        run_query(["--markdown"] if args.markdown else [])
    say(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as interrupt:
        print(
            f"interrupted ({interrupt}); everything the benchmark started was stopped",
            file=sys.stderr,
        )
        sys.exit(130)
