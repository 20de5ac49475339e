"""The alert engine with explicit timelines: each rule type, and the lifecycle (pending,
firing, flapping held by keep_firing_for, resolved, repeat, escalation, acknowledgement,
silences and maintenance windows, checkpoints and reloads). No Kafka, no clock."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from fleetlens.alerts.engine import AlertEngine, AlertEvent, Baseline, alert_id, hour_of_week
from fleetlens.alerts.rules import parse_rules
from fleetlens.alerts.series import ServerSeries, aggregate, slope_per_s
from fleetlens.alerts.silences import Matcher, Silence

S = 1_000
MIN = 60 * S
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC, a Thursday
TAGS = {"tenant": "acme", "env": "prod", "service": "api"}

CHANNELS = {
    "hook": {"type": "webhook", "url": "http://127.0.0.1:1/hook"},
    "mail": {"type": "email", "to": ["sre@example.com"]},
    "boss": {"type": "email", "to": ["boss@example.com"]},
    "log": {"type": "log"},
}
ROUTES = [
    {
        "name": "page",
        "severities": ["critical"],
        "channels": ["hook", "mail"],
        "escalate_after": "15m",
        "escalate_to": "boss",
    },
    {"name": "boss", "channels": ["boss"]},
    {"name": "rest", "channels": ["log"]},
]


def engine(*rules: dict[str, Any], baselines: Any = None, **defaults: Any) -> AlertEngine:
    ruleset = parse_rules(
        {
            "defaults": {"for": "0s", "keep_firing_for": "0s", "repeat_interval": "1h"} | defaults,
            "channels": CHANNELS,
            "routes": ROUTES,
            "rules": list(rules),
        }
    )
    return AlertEngine(ruleset, baselines=baselines)


def cpu_rule(**fields: Any) -> dict[str, Any]:
    return {
        "name": "high-cpu",
        "type": "threshold",
        "severity": "critical",
        "metric": "cpu_pct",
        "aggregation": "avg",
        "window": "30s",
        "op": ">",
        "value": 80,
    } | fields


def feed(
    eng: AlertEngine,
    values: list[float],
    *,
    start: int = T0,
    step: int = 10 * S,
    metric: str = "cpu_pct",
    server: str = "s1",
    partition: int = 0,
    extra: dict[str, float] | None = None,
) -> list[AlertEvent]:
    """One sample every ``step`` from ``start``, arriving at its event time."""
    out: list[AlertEvent] = []
    for i, value in enumerate(values):
        ts = start + i * step
        metrics = {metric: value} | (extra or {})
        out += eng.observe(server, TAGS, ts, metrics, partition=partition, now=ts)
    return out


def changes(events: list[AlertEvent]) -> list[tuple[str, int, tuple[str, ...]]]:
    return [(e.change, (e.at - T0) // S, e.channels) for e in events]


# -- series ----------------------------------------------------------------------------


def test_series_windows_keep_time_order_and_forget_past_the_horizon() -> None:
    wanted = {"cpu": 60 * S}
    series = ServerSeries(horizon_ms=60 * S)
    for ts, value in [(0, 1.0), (10, 2.0), (30, 4.0), (20, 3.0), (100, 5.0)]:
        series.add(ts * S, {"cpu": value}, wanted)
    assert list(series.ts) == [100 * S]  # 60 s behind the newest sample, nothing is left
    series = ServerSeries(horizon_ms=60 * S)
    for ts, value in [(0, 1.0), (10, 2.0), (30, 4.0), (20, 3.0)]:
        series.add(ts * S, {"cpu": value, "ignored": 0.0}, wanted)
    times, values = series.window("cpu", 20 * S)
    assert (list(times), list(values)) == ([20 * S, 30 * S], [3.0, 4.0])
    series.add(70 * S, {"cpu": 9.0}, wanted)  # 0 and 10 fall out of the 60 s horizon
    assert list(series.window("cpu", 60 * S)[1]) == [3.0, 4.0, 9.0]
    assert series.columns == ["cpu"]


def test_a_series_keeps_each_metric_of_varying_samples_apart() -> None:
    wanted = {"cpu": 600 * S, "mem": 60 * S, "disk": 60 * S}
    series = ServerSeries(horizon_ms=0)
    series.add(0, {"cpu": 1.0, "mem": 10.0}, wanted)
    series.add(10 * S, {"mem": 20.0, "cpu": 2.0}, wanted)  # another order
    series.add(20 * S, {"cpu": 3.0}, wanted)  # no mem
    series.add(30 * S, {"disk": 7.0, "cpu": 4.0}, wanted)  # a new metric
    series.add(5 * S, {"cpu": 1.5, "mem": 15.0}, wanted)  # late
    assert series.horizon_ms == 600 * S  # the longest horizon of its metrics
    assert list(series.window("cpu", 60 * S)[1]) == [1.0, 1.5, 2.0, 3.0, 4.0]
    assert [list(c) for c in series.window("mem", 60 * S)] == [
        [0, 5 * S, 10 * S],
        [10.0, 15.0, 20.0],
    ]
    assert [list(c) for c in series.window("disk", 60 * S)] == [[30 * S], [7.0]]
    assert series.window("net", 60 * S) == ((), ())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("avg", 3.0),
        ("sum", 15.0),
        ("min", 1.0),
        ("max", 5.0),
        ("count", 5.0),
        ("last", 2.0),
        ("p50", 3.0),
        ("p95", 5.0),
        ("p99", 5.0),
    ],
)
def test_aggregations(name: str, expected: float) -> None:
    assert aggregate(name, [3.0, 1.0, 5.0, 4.0, 2.0]) == expected


def test_slope_is_least_squares_per_second() -> None:
    assert slope_per_s([0, 10_000, 20_000], [1.0, 2.0, 3.0]) == pytest.approx(0.1)
    assert slope_per_s([0], [1.0]) is None


# -- threshold and lifecycle -----------------------------------------------------------


def test_threshold_fires_on_the_sample_that_makes_it_true_with_for_zero() -> None:
    eng = engine(cpu_rule())
    events = feed(eng, [50, 50, 95, 99, 99])
    # avg over 30 s: 50, 50, 65, 81.3 -> fires at the 4th sample (t = 30 s).
    assert changes(events) == [("firing", 30, ("hook", "mail"))]
    (alert,) = eng.alerts()
    assert alert["state"] == "firing" and alert["labels"]["server"] == "s1"
    assert events[0].summary == "high-cpu on s1: " + str(events[0].value)


def test_for_keeps_an_alert_pending_then_fires_once_and_resolves_once() -> None:
    eng = engine(cpu_rule(window="10s", **{"for": "30s"}))
    events = feed(eng, [95, 95, 95, 95, 95, 95, 10, 10])
    assert changes(events) == [
        ("pending", 0, ()),
        ("firing", 30, ("hook", "mail")),
        ("resolved", 60, ("hook", "mail")),
    ]
    assert len({e.idempotency_key for e in events}) == 3
    assert eng.alerts() == []


def test_pending_that_clears_is_cancelled_without_notification() -> None:
    eng = engine(cpu_rule(window="10s", **{"for": "30s"}))
    assert changes(feed(eng, [95, 95, 10])) == [("pending", 0, ()), ("cancelled", 20, ())]


def test_keep_firing_for_holds_through_a_flap() -> None:
    eng = engine(cpu_rule(window="10s", keep_firing_for="30s"))
    # Fires, dips for 20 s (held), fires on, then clears for 30 s: resolved.
    events = feed(eng, [95, 95, 10, 10, 95, 95, 10, 10, 10, 10])
    assert changes(events) == [("firing", 0, ("hook", "mail")), ("resolved", 90, ("hook", "mail"))]


def test_repeat_while_firing_and_escalation_until_acknowledged() -> None:
    eng = engine(cpu_rule(window="10s"), repeat_interval="1h")
    feed(eng, [95])
    assert eng.tick(T0 + 14 * MIN) == []
    escalated = eng.tick(T0 + 15 * MIN)
    assert changes(escalated) == [("escalate", 15 * 60, ("boss",))]
    # The boss route has no escalation of its own: nothing more, until the repeat is due.
    assert eng.tick(T0 + 40 * MIN) == []
    repeat = eng.tick(T0 + 75 * MIN)
    assert changes(repeat) == [("repeat", 75 * 60, ("hook", "mail", "boss"))]
    # Numbered, so that a replay after a restart makes the same keys.
    assert escalated[0].idempotency_key.endswith(":escalate:1")
    assert repeat[0].idempotency_key.endswith(":repeat:1")


def test_acknowledging_stops_escalation() -> None:
    eng = engine(cpu_rule(window="10s"))
    feed(eng, [95])
    (alert,) = eng.alerts()
    assert eng.acknowledge(alert["id"], by="ana", at=T0 + MIN)
    assert not eng.acknowledge("no-such-alert", by="ana", at=T0 + MIN)
    assert eng.tick(T0 + 30 * MIN) == []
    assert eng.alerts()[0]["acked_by"] == "ana"


# -- silences and maintenance ----------------------------------------------------------


def silence(**fields: Any) -> Silence:
    return Silence(
        id="sil-1",
        tenant="acme",
        matchers=(Matcher(name="service", value="api|web", is_regex=True),),
        starts_at=T0,
        ends_at=T0 + 10 * MIN,
        comment="deploy",
        created_by="ana",
    ).model_copy(update=fields)


def test_a_silence_suppresses_notifications_not_evaluation() -> None:
    eng = engine(cpu_rule(window="10s"))
    eng.set_silences([silence()])
    events = feed(eng, [95, 95])
    (fired,) = events
    assert (fired.change, fired.channels, fired.suppressed_by) == ("firing", (), ("sil-1",))
    assert eng.alerts()[0]["state"] == "firing"  # evaluated all the same
    assert eng.tick(T0 + 5 * MIN) == []  # still silenced: nothing new
    late = eng.tick(T0 + 10 * MIN)  # the silence is over: the notification goes out now
    assert changes(late) == [("firing", 0, ("hook", "mail"))]
    assert late[0].idempotency_key == fired.idempotency_key


def test_a_silence_of_another_tenant_or_labels_does_not_apply() -> None:
    eng = engine(cpu_rule(window="10s"))
    eng.set_silences(
        [
            silence(tenant="globex"),
            silence(id="sil-2", matchers=(Matcher(name="service", value="api", is_equal=False),)),
        ]
    )
    (fired,) = feed(eng, [95])
    assert fired.channels == ("hook", "mail") and fired.suppressed_by == ()


def test_a_weekly_maintenance_window_suppresses_its_hours() -> None:
    rules = parse_rules(
        {
            "channels": CHANNELS,
            "routes": ROUTES,
            "maintenance": [
                {
                    "name": "patching",
                    "matchers": [{"name": "env", "value": "prod"}],
                    "days": ["wed"],
                    "from": "23:00",
                    "to": "01:00",
                },
            ],
            "rules": [cpu_rule(window="10s", **{"for": "0s"})],
        }
    )
    eng = AlertEngine(rules)
    # Thursday 00:00-01:00 UTC is the tail of Wednesday's window.
    (held,) = feed(eng, [95])
    assert held.suppressed_by == ("maintenance:patching",)
    (sent,) = eng.tick(T0 + 60 * MIN)
    assert sent.channels == ("hook", "mail")


# -- the other rule types --------------------------------------------------------------


def test_rate_of_change_change_and_time_to_limit() -> None:
    rising = {
        "name": "disk-rising",
        "type": "rate_of_change",
        "metric": "disk_pct",
        "window": "1m",
        "mode": "change",
        "op": ">",
        "value": 20,
    }
    full = {
        "name": "disk-full",
        "type": "rate_of_change",
        "metric": "disk_pct",
        "window": "1m",
        "mode": "time_to_limit",
        "limit": 100,
        "op": "<",
        "value": "5m",
    }
    eng = engine(rising, full)
    # +5 points every 10 s: 0.5 points/s, so from 60 % the disk is full in 80 s.
    events = feed(eng, [40, 45, 50, 55, 60], metric="disk_pct")
    fired = {(e.rule, e.change): e for e in events}
    assert ("disk-rising", "firing") not in fired  # +20 points in the minute: not more than 20
    assert fired[("disk-full", "firing")].at == T0 + 10 * S
    assert fired[("disk-full", "firing")].value == pytest.approx(110.0)  # (100 - 45) / 0.5
    more = feed(eng, [66], metric="disk_pct", start=T0 + 50 * S)
    assert [(e.rule, e.change, e.value) for e in more] == [("disk-rising", "firing", 26.0)]


def test_composite_and_or() -> None:
    both = {
        "name": "hot-and-full",
        "type": "composite",
        "operator": "and",
        "conditions": [
            {"metric": "cpu_pct", "window": "10s", "op": ">", "value": 80},
            {"metric": "mem_pct", "window": "10s", "op": ">", "value": 90},
        ],
    }
    either = both | {"name": "hot-or-full", "operator": "or"}
    eng = engine(both, either)
    first = feed(eng, [95], extra={"mem_pct": 50})
    assert [(e.rule, e.change) for e in first] == [("hot-or-full", "firing")]
    second = feed(eng, [95], extra={"mem_pct": 95}, start=T0 + 10 * S)
    assert [(e.rule, e.change) for e in second] == [("hot-and-full", "firing")]


class Baselines:
    def __init__(self, known: dict[tuple[str, str, int], Baseline]) -> None:
        self.known = known

    def get(self, server_id: str, metric: str, hour_of_week: int) -> Baseline | None:
        return self.known.get((server_id, metric, hour_of_week))


def test_anomaly_against_the_hour_of_week_baseline_and_silent_without_one() -> None:
    rule = {
        "name": "cpu-anomaly",
        "type": "anomaly",
        "metric": "cpu_pct",
        "window": "30s",
        "k": 3,
        "min_stddev": 1,
    }
    how = hour_of_week(T0)
    assert how == 3 * 24  # Thursday 00:00
    eng = engine(rule, baselines=Baselines({("s1", "cpu_pct", how): Baseline(20.0, 5.0, 10)}))
    assert feed(eng, [22, 25, 30], server="s1") == []
    (fired,) = feed(eng, [60], server="s1", start=T0 + 30 * S)
    assert fired.change == "firing" and fired.value == pytest.approx((115 / 3 - 20) / 5)
    assert feed(eng, [99, 99], server="s2") == []
    assert eng.silent_reasons == {
        ("cpu-anomaly", "s2"): "no baseline for this server, metric and hour of week"
    }


def test_absence_pages_a_silent_server_and_a_silent_partition_once() -> None:
    rule = {
        "name": "server-silent",
        "type": "absence",
        "severity": "critical",
        "absent_for": "2m",
        "known_for": "1h",
    }
    eng = engine(rule, cpu_rule())
    for server, partition in [("a", 0), ("b", 0), ("c", 1), ("d", 1)]:
        feed(eng, [10], server=server, partition=partition)
    # a goes silent while the rest of partition 0 talks on.
    for minute in range(1, 4):
        at = T0 + minute * MIN
        for server, partition in [("b", 0), ("c", 1), ("d", 1)]:
            feed(eng, [10], server=server, partition=partition, start=at)
    (silent,) = eng.tick(T0 + 3 * MIN)
    assert (silent.rule, silent.labels["server"], silent.channels) == (
        "server-silent",
        "a",
        ("hook", "mail"),
    )
    # Then partition 1 stalls as a whole: one pipeline alert, not one per server.
    for minute in range(4, 7):
        feed(eng, [10], server="b", partition=0, start=T0 + minute * MIN)
    events = eng.tick(T0 + 6 * MIN)
    assert [(e.change, e.labels.get("scope"), e.labels.get("partitions")) for e in events] == [
        ("firing", "pipeline", "1")
    ]
    # a speaks again: its absence resolves.
    back = feed(eng, [10], server="a", partition=0, start=T0 + 7 * MIN)
    assert back == []
    resolved = eng.tick(T0 + 7 * MIN)
    assert [(e.change, e.labels.get("server")) for e in resolved] == [("resolved", "a")]


# -- state -----------------------------------------------------------------------------


def test_a_restored_engine_does_not_page_again_and_resolves_once() -> None:
    eng = engine(cpu_rule(window="10s"))
    assert changes(feed(eng, [95, 95])) == [("firing", 0, ("hook", "mail"))]
    states = msgspec.msgpack.decode(msgspec.msgpack.encode(eng.partition_states([0, 1])))
    assert states[1]["alerts"] == [] and len(states[0]["alerts"]) == 1
    restored = engine(cpu_rule(window="10s"))
    restored.restore((int(p), state) for p, state in states.items())
    assert feed(restored, [95, 95], start=T0 + 20 * S) == []
    assert changes(feed(restored, [10], start=T0 + 40 * S)) == [("resolved", 40, ("hook", "mail"))]


def test_each_partition_checkpoints_exactly_the_samples_of_its_servers() -> None:
    rules = (cpu_rule(window="1m"), cpu_rule(name="mem", metric="mem_pct", window="30s"))
    eng = engine(*rules)
    feed(eng, [10, 20, 30, 40], server="a", partition=0, extra={"mem_pct": 50})
    feed(eng, [60, 70], server="b", partition=1, extra={"mem_pct": 1})
    feed(eng, [5], server="c", partition=1, metric="mem_pct")  # no cpu series
    feed(eng, [1, 2, 3], server="d", partition=2)  # a partition not checkpointed here

    def samples(e: AlertEngine) -> dict[tuple[str, str], list[tuple[int, float]]]:
        out = {}
        for server, series in e._series.items():
            for metric in series.columns:
                times, values = series.window(metric, 3600 * S)
                out[(server, metric)] = list(zip(times, values, strict=True))
        return out

    states = msgspec.msgpack.decode(msgspec.msgpack.encode(eng.partition_states([0, 1])))
    restored = engine(*rules)
    restored.restore((int(p), state) for p, state in states.items())
    expected = {k: v for k, v in samples(eng).items() if k[0] != "d"}
    assert samples(restored) == expected
    assert len(expected[("a", "cpu_pct")]) == len(expected[("a", "mem_pct")]) == 4
    # The restored series evaluate as the originals would: 1-minute cpu averages of
    # (10 + 20 + 30 + 40 + 200) / 5 = 60, then with one more 200, 500 / 6 > 80.
    assert feed(restored, [200], server="a", start=T0 + 40 * S) == []
    fired = feed(restored, [200], server="a", start=T0 + 50 * S)
    assert [(e.change, e.value) for e in fired] == [("firing", pytest.approx(500 / 6))]


def test_reload_keeps_alerts_of_rules_that_remain_and_ends_the_others() -> None:
    eng = engine(cpu_rule(window="10s"), cpu_rule(name="other", window="10s"))
    feed(eng, [95])
    assert len(eng.alerts()) == 2
    keep = parse_rules({"channels": CHANNELS, "routes": ROUTES, "rules": [cpu_rule(window="10s")]})
    ended = eng.reload(keep, now=T0 + MIN)
    assert [(e.rule, e.change) for e in ended] == [("other", "resolved")]
    assert [a["rule"] for a in eng.alerts()] == ["high-cpu"]
    assert feed(eng, [95], start=T0 + 10 * S) == []  # still firing: no new page
    assert eng.alerts()[0]["id"] == alert_id("high-cpu", "s1")


def test_alerts_of_a_dropped_checkpoint_end_recorded_not_notified() -> None:
    eng = engine(cpu_rule(window="10s"))
    assert changes(feed(eng, [95, 95])) == [("firing", 0, ("hook", "mail"))]
    states = msgspec.msgpack.decode(msgspec.msgpack.encode(eng.partition_states([0])))
    fresh = engine(cpu_rule(window="10s"))  # its log is another cluster's: nothing restored
    (ended,) = fresh.end_dropped(states.values(), now=T0 + MIN)
    assert (ended.change, ended.state, ended.channels) == ("reset", "inactive", ())
    assert ended.labels["server"] == "s1" and ended.labels["tenant"] == "acme"
    assert ended.firing_at == T0 and fresh.alerts() == []
    # The condition still holds: a new episode, paged again.
    assert changes(feed(fresh, [95], start=T0 + 2 * MIN)) == [("firing", 120, ("hook", "mail"))]
