"""Alerting: notification latency under live load, and what the rules cost the speed layer.

``python -m bench alerts`` (or ``python -m bench.alerts --help``):

* **Latency.** A load process sends ``--rate`` records/s (6 metrics each: 18,000 points/s at
  the default 3,000) of a simulated fleet to the metrics topic, stamped with the time they are
  sent. The speed layer (``fleetlens speed run``) evaluates ``--rules`` rules, 50 by default:
  49 that this fleet never trips (thresholds, rates of change, composites, absences with
  label filters) and ``bench-trigger`` (``last(latency_ms) > 5000``, ``for: 0``). Every
  ``--every`` seconds the benchmark sends one trigger sample for a server of its own, and the
  notifier (``fleetlens alerts notify``) delivers the firing to a real HTTP receiver in this
  process: latency is the receiver's clock minus the clock just before the trigger's send.
* **Cost.** The same layer, as a catch-up over a pre-filled topic, with alerting off and with
  the rules: records per busy second of each.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from bench._common import Report, Scratch, fmt_int, percentile, say
from bench._topic import prefill, run_to_exit
from fleetlens.kafka.clients import all_partitions, log_end_offsets, make_consumer, make_producer

__all__ = ["AlertBenchOptions", "main", "run"]

GOAL_P99_S = 1.0
_TAGS = ("acme", "globex", "initech")


@dataclass(frozen=True)
class AlertBenchOptions:
    """Knobs of the alert benchmark."""

    rate: int = 3_000
    servers: int = 30_000
    rules: int = 50
    duration_s: float = 60.0
    every_s: float = 0.5
    cost_records: int = 200_000
    keep: bool = False


def rules_file(path: Path, *, rules: int, hook_url: str) -> None:
    """``rules - 1`` rules the simulated fleet never trips, plus ``bench-trigger``."""
    kinds = []
    metrics = ("cpu_pct", "mem_pct", "disk_pct", "net_in_bps", "net_out_bps", "conns")
    for i in range(rules - 1):
        metric = metrics[i % len(metrics)]
        tenant = _TAGS[i % len(_TAGS)]
        kind = i % 5
        if kind == 0:
            rule = {
                "type": "threshold",
                "metric": metric,
                "aggregation": "avg",
                "window": "5m",
                "op": ">",
                "value": 1e12,
            }
        elif kind == 1:
            rule = {
                "type": "threshold",
                "metric": metric,
                "aggregation": "p99",
                "window": "1m",
                "op": ">",
                "value": 1e12,
                "labels": {"tenant": tenant},
            }
        elif kind == 2:
            rule = {
                "type": "rate_of_change",
                "metric": metric,
                "window": "10m",
                "mode": "change",
                "op": ">",
                "value": 1e12,
            }
        elif kind == 3:
            rule = {
                "type": "composite",
                "operator": "and",
                "conditions": [
                    {"metric": metric, "window": "2m", "op": ">", "value": 1e12},
                    {"metric": "mem_pct", "window": "2m", "op": ">", "value": 99.99},
                ],
            }
        else:
            rule = {"type": "absence", "absent_for": "10m", "labels": {"tenant": tenant}}
        kinds.append({"name": f"quiet-{i:02d}", "severity": "warning"} | rule)
    kinds.append(
        {
            "name": "bench-trigger",
            "type": "threshold",
            "severity": "critical",
            "metric": "latency_ms",
            "aggregation": "last",
            "window": "1m",
            "op": ">",
            "value": 5000,
            "for": "0s",
            "keep_firing_for": "0s",
        }
    )
    path.write_text(
        json.dumps(
            {
                "channels": {"hook": {"type": "webhook", "url": hook_url, "timeout_s": 5}},
                "routes": [{"name": "all", "channels": ["hook"]}],
                "rules": kinds,
            }
        )
    )


class _Receiver(BaseHTTPRequestHandler):
    """The webhook's receiver: when each firing of ``bench-trigger`` arrived."""

    arrivals: dict[str, float] = {}

    def do_POST(self) -> None:
        arrived = time.time()
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["rule"] == "bench-trigger" and body["change"] == "firing":
            _Receiver.arrivals.setdefault(body["labels"]["server"], arrived)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _load(env: dict[str, str], rate: int, servers: int, stop_at: float) -> None:
    """The load process: ``rate`` records/s of ``servers`` servers, stamped now."""
    import os

    os.environ.update(env)
    from fleetlens.config import load_settings

    settings = load_settings()
    producer = make_producer(settings.kafka)
    topic = settings.kafka.topics.metrics.name
    encode = msgspec.json.encode
    rng = np.random.default_rng(7)
    names = [f"srv-{i:05d}" for i in range(servers)]
    tags = [{"tenant": _TAGS[i % 3], "env": "prod", "service": "api"} for i in range(servers)]
    chunk, sent, started = max(rate // 10, 1), 0, time.monotonic()
    while time.time() < stop_at:
        now_ms = int(time.time() * 1000)
        values = rng.uniform(10, 60, (chunk, 6)).tolist()
        for row in values:
            i = sent % servers
            payload = {
                "schema_version": 1,
                "event_id": uuid.uuid4().hex,
                "server_id": names[i],
                "ts": now_ms,
                "metrics": dict(
                    zip(
                        ("cpu_pct", "mem_pct", "disk_pct", "net_in_bps", "net_out_bps", "conns"),
                        row,
                        strict=True,
                    )
                ),
                "tags": tags[i],
            }
            producer.send(topic, key=names[i].encode(), value=encode(payload))
            sent += 1
        # Pace to the rate: the next chunk is due at sent / rate seconds from the start.
        delay = started + sent / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    producer.flush()
    producer.close()


def _latency(scratch: Scratch, options: AlertBenchOptions, rules: Path) -> dict[str, Any]:
    env = {"FLEETLENS_ALERTS__RULES_PATH": str(rules), "FLEETLENS_SPEED__GROUP_ID": "live"}
    speed = scratch.spawn("speed-live", ["speed", "run"], env=env)
    notifier = scratch.spawn("notifier", ["alerts", "notify"], env=env)
    time.sleep(5)  # both up and reading
    warmup_s, stop_at = 5.0, time.time() + 5.0 + options.duration_s + 2
    load = multiprocessing.get_context("spawn").Process(
        target=_load, args=(scratch.env, options.rate, options.servers, stop_at), daemon=True
    )
    load.start()
    time.sleep(warmup_s)
    producer = make_producer(scratch.settings.kafka)
    topic = scratch.settings.kafka.topics.metrics.name
    sent_at: dict[str, float] = {}
    n = 0
    deadline = time.time() + options.duration_s
    while time.time() < deadline:
        server = f"trigger-{n:04d}"
        payload = {
            "schema_version": 1,
            "event_id": uuid.uuid4().hex,
            "server_id": server,
            "ts": int(time.time() * 1000),
            "metrics": {"latency_ms": 9_999.0},
            "tags": {"tenant": "acme", "env": "prod", "service": "api"},
        }
        sent_at[server] = time.time()
        producer.send(topic, key=server.encode(), value=msgspec.json.encode(payload))
        producer.flush()
        n += 1
        time.sleep(options.every_s)
    producer.close()
    load.join(options.duration_s + 30)
    time.sleep(5)  # the last deliveries
    speed.stop()
    notifier.stop()
    latencies = sorted(
        _Receiver.arrivals[s] - t for s, t in sent_at.items() if s in _Receiver.arrivals
    )
    # The two halves: to the firing record's send by the speed layer (its Kafka timestamp),
    # and from there to the webhook (fleet.alerts.v1, the notifier, the HTTP POST).
    recorded = _firing_sent_at(scratch)
    to_topic = sorted(recorded[s] - t for s, t in sent_at.items() if s in recorded)
    to_hook = sorted(
        _Receiver.arrivals[s] - recorded[s]
        for s in sent_at
        if s in recorded and s in _Receiver.arrivals
    )
    return {
        "sent": len(sent_at),
        "received": len(latencies),
        "latencies": latencies,
        "to_topic": to_topic,
        "to_hook": to_hook,
    }


def _firing_sent_at(scratch: Scratch) -> dict[str, float]:
    """When the speed layer sent each trigger's firing record (its record timestamp)."""
    kafka = scratch.settings.kafka
    consumer = make_consumer(kafka, group_id=None)
    try:
        partitions = all_partitions(consumer, kafka.topics.alerts.name)
        ends = log_end_offsets(consumer, partitions)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        out: dict[str, float] = {}
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    body = json.loads(record.value)
                    if body["rule"] == "bench-trigger" and body["change"] == "firing":
                        out.setdefault(body["labels"]["server"], record.timestamp / 1000)
        return out
    finally:
        consumer.close()


def _cost(scratch: Scratch, options: AlertBenchOptions, rules: Path) -> dict[str, float]:
    prefill(scratch, records=options.cost_records, servers=10_000, procs=2)
    out = {}
    for label, env in (
        ("off", {"FLEETLENS_ALERTS__ENABLED": "false"}),
        ("rules", {"FLEETLENS_ALERTS__RULES_PATH": str(rules)}),
    ):
        result = run_to_exit(
            scratch,
            f"speed-{label}",
            ["speed", "run", "--exit-when-idle", "3"],
            idle_s=3,
            env=env | {"FLEETLENS_SPEED__GROUP_ID": f"cost-{label}"},
        )
        stats = result["stats"]
        out[label] = stats["records"] / max(stats["busy_s"], 1e-9)
    return out


def run(options: AlertBenchOptions) -> Report:
    """Run the alert benchmark and return its table."""
    report = Report(
        f"Alerting: {options.rules} rules, {options.rate:,} records/s "
        f"({options.rate * 6:,} points/s) of {options.servers:,} servers",
        ["measure", "value", "goal"],
    )
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    _Receiver.arrivals = {}
    try:
        with Scratch("alerts", keep=options.keep) as scratch:
            rules = scratch.root / "alerts.yaml"
            hook = f"http://127.0.0.1:{http.server_address[1]}/hook"
            rules_file(rules, rules=options.rules, hook_url=hook)
            say(
                f"latency: {options.duration_s:.0f} s of live load, a trigger every "
                f"{options.every_s:g} s"
            )
            live = _latency(scratch, options, rules)
        # A topic of its own: the pre-fill checks the topic holds exactly what it sent.
        with Scratch("alerts-cost", keep=options.keep) as scratch:
            rules = scratch.root / "alerts.yaml"
            rules_file(rules, rules=options.rules, hook_url=hook)
            say(f"cost: catch-up over {options.cost_records:,} records, alerting off and on")
            cost = _cost(scratch, options, rules)
    finally:
        http.shutdown()
    lat = live["latencies"]
    p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
    report.add(
        "triggers sent / firing notifications received",
        f"{live['sent']} / {live['received']}",
        "all",
    )
    report.add("latency p50 (sample sent → webhook received), ms", f"{p50 * 1000:,.0f}", "")
    report.add("latency p99, ms", f"{p99 * 1000:,.0f}", f"< {GOAL_P99_S * 1000:,.0f}")
    report.add("latency max, ms", f"{(lat[-1] if lat else float('nan')) * 1000:,.0f}", "")
    for key, label in (
        ("to_topic", "sample sent → firing record sent by the speed layer"),
        ("to_hook", "firing record sent → webhook received"),
    ):
        part = live[key]
        report.add(
            f"  {label}, p50 / p99, ms",
            f"{percentile(part, 0.5) * 1000:,.0f} / {percentile(part, 0.99) * 1000:,.0f}",
            "",
        )
    report.add("speed layer catch-up, alerting off, records/s", fmt_int(cost["off"]), "")
    report.add(
        f"speed layer catch-up, {options.rules} rules, records/s", fmt_int(cost["rules"]), ""
    )
    report.add(
        "throughput cost of the rules", f"{(1 - cost['rules'] / cost['off']) * 100:.0f} %", ""
    )
    met = live["received"] == live["sent"] and p99 < GOAL_P99_S
    report.notes.append(
        f"goal: p99 < {GOAL_P99_S:g} s {'met' if met else 'NOT met'}"
        + ("" if live["received"] == live["sent"] else " (some notifications did not arrive)")
    )
    report.notes.append(
        "latency: the trigger's send (this process) to its firing's arrival at the webhook "
        "receiver (this process), through the broker, the speed layer, fleet.alerts.v1 and "
        "the notifier; one clock"
    )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.alerts", description=__doc__)
    parser.add_argument("--rate", type=int, default=3_000, help="records/s of load (3000)")
    parser.add_argument("--servers", type=int, default=30_000, help="servers of the load")
    parser.add_argument("--rules", type=int, default=50, help="rules loaded (50)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of triggers (60)")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between triggers")
    parser.add_argument("--cost-records", type=int, default=200_000, help="catch-up records")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    run(
        AlertBenchOptions(
            rate=args.rate,
            servers=args.servers,
            rules=args.rules,
            duration_s=args.duration,
            every_s=args.every,
            cost_records=args.cost_records,
            keep=args.keep,
        )
    ).print(markdown=args.markdown)


if __name__ == "__main__":
    main()
