"""The alert engine: rules evaluated on each sample as it arrives, absences on the wall clock,
and the lifecycle and routing of every alert.

Pure: samples, times and baselines come in, :class:`AlertEvent` records go out; the speed
layer feeds it and sends what it returns (``fleet.alerts.v1``, the ``alerts`` table, the
notifiers), and the backtest feeds it history. Times are epoch ms: a sample's event time
drives ``for`` and ``keep_firing_for``; ``now`` (the wall clock, or the replayed time) drives
absences, repeats and escalations.
"""

from __future__ import annotations

import functools
import hashlib
import math
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from fleetlens.alerts.lifecycle import Alert, Change
from fleetlens.alerts.plan import (
    COMPOSITE,
    SLOT,
    TIME_TO_LIMIT,
    Plan,
    compile_plan,
    measure,
)
from fleetlens.alerts.rules import (
    TAGS,
    AbsenceRule,
    AnomalyRule,
    CompositeRule,
    RateOfChangeRule,
    Route,
    Rule,
    RuleSet,
    ThresholdRule,
)
from fleetlens.alerts.series import ServerSeries
from fleetlens.alerts.silences import Silence, suppressing

__all__ = ["AlertEngine", "AlertEvent", "Baseline", "BaselineLookup", "alert_id", "hour_of_week"]

#: The alert key of an absence rule's pipeline alert (one per rule, not one per server).
PIPELINE = "pipeline"


class AlertEvent(msgspec.Struct, frozen=True):
    """A transition or a notification of one alert: a record of ``fleet.alerts.v1`` and a row
    of the ``alerts`` table. ``channels`` are where it is to be delivered (empty: recorded
    only); ``suppressed_by`` the silences and maintenance windows that held it back.
    ``idempotency_key`` is the same whenever the same notification is produced again (a
    replay after a restart), so receivers and the notifier deliver it once."""

    alert_id: str
    rule: str
    severity: str
    change: str
    state: str
    labels: dict[str, str | None]
    value: float | None
    at: int
    started_at: int | None
    firing_at: int | None
    summary: str
    description: str
    channels: tuple[str, ...]
    suppressed_by: tuple[str, ...]
    idempotency_key: str


@dataclass(frozen=True)
class Baseline:
    """Mean and spread of a metric's hourly average for one server and hour of week."""

    mean: float
    stddev: float
    samples: int


class BaselineLookup(Protocol):
    """Where anomaly rules read baselines (``baseline_hourly``)."""

    def get(self, server_id: str, metric: str, hour_of_week: int) -> Baseline | None:
        """The baseline of ``(server_id, metric, hour_of_week)``, if there is one."""
        ...


def hour_of_week(ts_ms: int) -> int:
    """0 (Monday 00:00-01:00 UTC) to 167 (Sunday 23:00-24:00 UTC)."""
    moment = datetime.fromtimestamp(ts_ms / 1000, UTC)
    return moment.weekday() * 24 + moment.hour


@functools.lru_cache(maxsize=65_536)
def alert_id(rule: str, key: str) -> str:
    """The stable id of a rule's alert for a server (or the pipeline)."""
    return hashlib.blake2b(f"{rule}\x00{key}".encode(), digest_size=8).hexdigest()


class AlertEngine:
    """Every rule's alerts, evaluated as samples arrive.

    Args:
        rules: The rules in force (:meth:`reload` swaps them keeping alert state).
        baselines: Where anomaly rules find baselines (none: they stay silent).
    """

    def __init__(self, rules: RuleSet, *, baselines: BaselineLookup | None = None) -> None:
        self._baselines = baselines
        self._silences: tuple[Silence, ...] = ()
        #: server -> its recent samples.
        self._series: dict[str, ServerSeries] = {}
        self._alerts: dict[tuple[str, str], Alert] = {}
        self._labels: dict[str, dict[str, str | None]] = {}
        #: Each server's tags as last seen (a change re-reads its labels).
        self._tags: dict[str, dict[str, str]] = {}
        #: Wall-clock time each server and partition was last heard of.
        self._server_seen: OrderedDict[str, int] = OrderedDict()
        #: server -> rule name -> whether the rule's label filter takes the server.
        self._matched: dict[str, dict[str, bool]] = {}
        self._partition_of: dict[str, int] = {}
        self._partition_seen: dict[int, int] = {}
        #: (rule, server) -> why the rule cannot evaluate there (e.g. no baseline yet).
        self.silent_reasons: dict[tuple[str, str], str] = {}
        self._index(rules)

    # -- rules ---------------------------------------------------------------------------

    def _index(self, rules: RuleSet) -> None:
        self.rules = rules
        self._matched = {}
        #: server -> the plan of its samples; (metric names, rules applying) -> plan.
        self._plans: dict[str, Plan] = {}
        self._shared_plans: dict[tuple[tuple[str, ...], tuple[int, ...]], Plan] = {}
        self._by_name: dict[str, Rule] = {r.name: r for r in rules.rules}
        horizon: dict[str, float] = {}
        for rule in rules.rules:
            for metric, window_s in _windows(rule):
                horizon[metric] = max(horizon.get(metric, 0.0), window_s)
        self._horizon_ms = {m: int(s * 1000) for m, s in horizon.items()}
        for series in self._series.values():
            horizons = [self._horizon_ms.get(m, 0) for m in series.columns]
            series.horizon_ms = max(horizons, default=series.horizon_ms)
        self._absence = [r for r in rules.rules if isinstance(r, AbsenceRule)]

    def reload(self, rules: RuleSet, *, now: int) -> list[AlertEvent]:
        """Put ``rules`` in force. Alerts of rules that remain (by name) keep their state;
        those of removed rules end (``resolved`` if they were firing)."""
        events = []
        remaining = {r.name for r in rules.rules}
        for (name, key), alert in list(self._alerts.items()):
            if name in remaining:
                continue
            rule = self._by_name[name]
            if alert.state == "firing":
                events.append(self._event(rule, key, alert, "resolved", now, now))
            del self._alerts[(name, key)]
        self._index(rules)
        return events

    def set_silences(self, silences: Iterable[Silence]) -> None:
        """The silences in force (from the API's store)."""
        self._silences = tuple(silences)

    # -- evaluation ----------------------------------------------------------------------

    def observe(
        self,
        server_id: str,
        tags: Mapping[str, str],
        ts: int,
        metrics: Mapping[str, float],
        *,
        partition: int,
        now: int,
    ) -> list[AlertEvent]:
        """Fold one sample (an event of ``fleet.metrics.v1``) and evaluate the rules on the
        metrics it carries."""
        if self._tags.get(server_id) != tags:
            self._tags[server_id] = dict(tags)
            labels = self._labels[server_id] = {t: tags.get(t) for t in TAGS}
            labels["server"] = server_id
            self._matched.pop(server_id, None)  # the filters see new labels
            self._plans.pop(server_id, None)
        seen = self._server_seen
        seen[server_id] = now
        seen.move_to_end(server_id)  # oldest first: absences stop at the first recent server
        self._partition_of[server_id] = partition
        if now > self._partition_seen.get(partition, now - 1):
            self._partition_seen[partition] = now
        series = self._series.get(server_id)
        if series is None:
            series = self._series[server_id] = ServerSeries(0)
        series.add(ts, metrics, self._horizon_ms)
        plan = self._plans.get(server_id)
        if plan is None or plan.names != tuple(metrics):
            plan = self._plan(server_id, tuple(metrics))
        if not plan.checks:
            return []
        slots: list[float | None] = [None] * plan.size
        for window_ms, by_metric in plan.slices:
            lo, hi = series.bounds(window_ms)
            for metric, measures in by_metric:
                if metric not in series.index:
                    continue  # never seen: no value, not even a count of 0
                times, values = series.column(metric, lo, hi)
                for what, at in measures:
                    slots[at] = measure(what, times, values)
        events: list[AlertEvent] = []
        alerts = self._alerts
        value: float | None
        for rule, kind, operand, compare, threshold in plan.checks:
            if kind == SLOT:
                value = slots[operand]
                active = value is not None and compare(value, threshold)
            elif kind == COMPOSITE:
                value = slots[operand[0][0]]
                active = compare(
                    (v := slots[at]) is not None and op(v, limit) for at, op, limit in operand
                )
            elif kind == TIME_TO_LIMIT:
                slope, last = slots[operand[0]], slots[operand[1]]
                value = None
                if slope is not None and last is not None:
                    value = _time_to_limit(last, slope, operand[2])
                active = value is not None and compare(value, threshold)
            else:
                outcome = self._anomaly(rule, server_id, ts, slots[operand])
                if outcome is None:
                    continue
                active, value = outcome
            if active or (rule.name, server_id) in alerts:
                self._fold(rule, server_id, active, value, ts, now, events)
        return events

    def _plan(self, server_id: str, names: tuple[str, ...]) -> Plan:
        """The plan of ``server_id``'s samples carrying ``names``, shared by every server
        the same rules apply to."""
        applying = tuple(
            i for i, rule in enumerate(self.rules.rules) if self._applies(rule, server_id)
        )
        plan = self._shared_plans.get((names, applying))
        if plan is None:
            rules = [self.rules.rules[i] for i in applying]
            plan = self._shared_plans[(names, applying)] = compile_plan(names, rules)
        self._plans[server_id] = plan
        return plan

    def _anomaly(
        self, rule: Rule, server_id: str, ts: int, value: float | None
    ) -> tuple[bool, float] | None:
        """(beyond ``k`` spreads, score) of the window's ``value``; ``None`` when there is
        no usable baseline (the reason is kept in :attr:`silent_reasons`)."""
        assert isinstance(rule, AnomalyRule)
        key = (rule.name, server_id)
        baseline = None
        if self._baselines is not None:
            baseline = self._baselines.get(server_id, rule.metric, hour_of_week(ts))
        if baseline is None or baseline.samples < rule.min_samples:
            self.silent_reasons[key] = (
                "no baseline for this server, metric and hour of week"
                if baseline is None
                else f"baseline of {baseline.samples} hours, fewer than {rule.min_samples}"
            )
            return None
        spread = max(baseline.stddev, rule.min_stddev)
        if spread <= 0:
            self.silent_reasons[key] = "the baseline has no spread (set min_stddev)"
            return None
        self.silent_reasons.pop(key, None)
        if value is None:
            return False, 0.0
        score = (value - baseline.mean) / spread
        active = {
            "above": score > rule.k,
            "below": score < -rule.k,
            "both": abs(score) > rule.k,
        }[rule.direction]
        return active, score

    def tick(self, now: int) -> list[AlertEvent]:
        """Periodic work on the clock: absences (with the pipeline guard), notifications
        held back by a silence that has ended, repeats and escalations."""
        events: list[AlertEvent] = []
        if self._absence:
            # Servers no absence rule still knows of: dropped from the front (oldest first).
            forget_ms = max(int(r.known_for_s * 1000) for r in self._absence)
            seen = self._server_seen
            while seen:
                server_id, at = next(iter(seen.items()))
                if now - at < forget_ms or any(k[1] == server_id for k in self._alerts):
                    break
                del seen[server_id]
        for absence in self._absence:
            self._absences(absence, now, events)
        for (name, key), alert in list(self._alerts.items()):
            rule = self._by_name[name]
            if alert.state != "firing":
                continue
            if not alert.notified:
                self._notify_firing(rule, key, alert, now, events, first=False)
                continue
            first = self._first_route(rule, key)
            route = self._route_at(first, alert.escalation)
            escalate_after = None
            if route is not None and route.escalate_to and route.escalate_after_s is not None:
                escalate_after = int(route.escalate_after_s * 1000)
            _, _, repeat_s = self.rules.lifecycle(rule)
            due = alert.due(
                now, repeat_interval_ms=int(repeat_s * 1000), escalate_after_ms=escalate_after
            )
            if due == "escalate" and route is not None and route.escalate_to:
                target = self.rules.routes_by_name[route.escalate_to]
                event = self._event(rule, key, alert, "escalate", now, now, target.channels)
                events.append(event)
                if not event.suppressed_by:
                    alert.mark_notified(target.channels, now)
                    alert.mark_escalated(now)
            elif due == "repeat":
                event = self._event(rule, key, alert, "repeat", now, now, alert.notified_channels)
                events.append(event)
                if not event.suppressed_by:
                    alert.mark_notified((), now)
                    alert.repeats += 1
        return events

    def _absences(self, rule: AbsenceRule, now: int, events: list[AlertEvent]) -> None:
        absent_ms = int(rule.absent_for_s * 1000)
        known_ms = int(rule.known_for_s * 1000)
        stalled = sorted(p for p, seen in self._partition_seen.items() if now - seen >= absent_ms)
        pipeline = self._alerts.get((rule.name, PIPELINE))
        if stalled or pipeline is not None:
            self._labels.setdefault(
                f"{PIPELINE}:{rule.name}",
                dict.fromkeys((*TAGS, "server")) | {"scope": PIPELINE, "partitions": None},
            )
            if stalled:
                self._labels[f"{PIPELINE}:{rule.name}"]["partitions"] = ",".join(map(str, stalled))
            value = float(len(stalled))
            self._fold(rule, PIPELINE, bool(stalled), value, now, now, events)
        stalled_set = set(stalled)
        # Oldest first: stop at the first server heard of within absent_for.
        for server_id, seen in self._server_seen.items():
            if now - seen < absent_ms:
                break
            if now - seen >= known_ms or self._partition_of.get(server_id) in stalled_set:
                continue  # forgotten, or its whole partition is silent: the pipeline alert
            if self._applies(rule, server_id):
                self._fold(rule, server_id, True, (now - seen) / 1000, now, now, events)
        # Alerts of servers heard of again.
        for _, key in [k for k in self._alerts if k[0] == rule.name and k[1] != PIPELINE]:
            back = self._server_seen.get(key)
            if back is not None and now - back < absent_ms:
                self._fold(rule, key, False, (now - back) / 1000, now, now, events)

    def _applies(self, rule: Rule, server_id: str) -> bool:
        """Whether ``rule``'s label filter takes ``server_id`` (cached per server)."""
        matched = self._matched.setdefault(server_id, {})
        applies = matched.get(rule.name)
        if applies is None:
            applies = matched[rule.name] = rule.labels.matches(self._labels[server_id])
        return applies

    # -- lifecycle and routing -----------------------------------------------------------

    def _fold(
        self,
        rule: Rule,
        key: str,
        active: bool,
        value: float | None,
        at: int,
        now: int,
        events: list[AlertEvent],
    ) -> None:
        alert = self._alerts.get((rule.name, key))
        if alert is None:
            if not active:
                return
            alert = self._alerts[(rule.name, key)] = Alert()
        for_s, keep_s, _ = self.rules.lifecycle(rule)
        change = alert.evaluate(
            active, value, at, for_ms=int(for_s * 1000), keep_firing_for_ms=int(keep_s * 1000)
        )
        if change == "firing":
            self._notify_firing(rule, key, alert, now, events, first=True)
        elif change == "resolved":
            channels = alert.notified_channels if alert.notified else ()
            events.append(self._event(rule, key, alert, "resolved", at, now, channels))
            del self._alerts[(rule.name, key)]
        elif change == "cancelled":
            events.append(self._event(rule, key, alert, "cancelled", at, now))
            del self._alerts[(rule.name, key)]
        elif change == "pending":
            events.append(self._event(rule, key, alert, "pending", at, now))

    def _notify_firing(
        self,
        rule: Rule,
        key: str,
        alert: Alert,
        now: int,
        events: list[AlertEvent],
        *,
        first: bool,
    ) -> None:
        """The firing notification, or, while a silence holds it back, the record of that
        (once, when the alert fires; it goes out when the silence ends)."""
        channels = tuple(
            dict.fromkeys(c for route in self._first_routes(rule, key) for c in route.channels)
        )
        at = alert.firing_at if alert.firing_at is not None else now
        event = self._event(rule, key, alert, "firing", at, now, channels)
        if not event.suppressed_by:
            alert.mark_notified(channels, now)
            events.append(event)
        elif first:
            events.append(event)

    def _first_routes(self, rule: Rule, key: str) -> tuple[Route, ...]:
        return self.rules.routes_for(rule, self._labels.get(self._label_key(rule, key), {}))

    def _first_route(self, rule: Rule, key: str) -> Route | None:
        routes = self._first_routes(rule, key)
        return routes[0] if routes else None

    def _route_at(self, route: Route | None, steps: int) -> Route | None:
        by_name = self.rules.routes_by_name
        for _ in range(steps):
            if route is None or route.escalate_to is None:
                return route
            route = by_name.get(route.escalate_to)
        return route

    def _label_key(self, rule: Rule, key: str) -> str:
        return f"{PIPELINE}:{rule.name}" if key == PIPELINE else key

    def _event(
        self,
        rule: Rule,
        key: str,
        alert: Alert,
        change: Change,
        at: int,
        now: int,
        channels: tuple[str, ...] = (),
    ) -> AlertEvent:
        labels = dict(self._labels.get(self._label_key(rule, key), {}))
        suppressed: tuple[str, ...] = ()
        if channels:
            suppressed = suppressing(
                labels, now, silences=self._silences, maintenance=self.rules.maintenance
            )
        state = {"resolved": "resolved", "cancelled": "inactive", "reset": "inactive"}.get(
            change, alert.state
        )
        context: dict[str, Any] = {"labels": labels, "value": alert.value, "state": state}
        episode = alert.firing_at if alert.firing_at is not None else alert.started_at
        # Numbered, not timed: a replay after a restart produces the same keys.
        serial = {"repeat": f":{alert.repeats + 1}", "escalate": f":{alert.escalation + 1}"}.get(
            change, ""
        )
        return AlertEvent(
            alert_id=alert_id(rule.name, key),
            rule=rule.name,
            severity=rule.severity,
            change=change,
            state=state,
            labels=labels,
            value=alert.value,
            at=at,
            started_at=alert.started_at,
            firing_at=alert.firing_at,
            summary=rule.render("summary", **context),
            description=rule.render("description", **context),
            channels=() if suppressed else channels,
            suppressed_by=suppressed,
            idempotency_key=f"{alert_id(rule.name, key)}:{episode}:{change}{serial}",
        )

    # -- API -----------------------------------------------------------------------------

    def acknowledge(
        self, alert_id_: str, *, by: str, at: int, firing_at: int | None = None
    ) -> bool:
        """Acknowledge a firing alert (stops its escalation); with ``firing_at``, only the
        episode that fired then. False if there is no such alert; acknowledging again keeps
        the first acknowledgement."""
        for (name, key), alert in self._alerts.items():
            if alert_id(name, key) != alert_id_ or alert.state != "firing":
                continue
            if firing_at is not None and alert.firing_at != firing_at:
                return False
            if alert.acked_at is None:
                alert.acknowledge(by, at)
            return True
        return False

    def alerts(self) -> list[dict[str, Any]]:
        """The pending and firing alerts, for the API."""
        out = []
        for (name, key), alert in self._alerts.items():
            rule = self._by_name[name]
            out.append(
                {
                    "id": alert_id(name, key),
                    "rule": name,
                    "severity": rule.severity,
                    "state": alert.state,
                    "labels": dict(self._labels.get(self._label_key(rule, key), {})),
                    "value": alert.value,
                    "started_at": alert.started_at,
                    "firing_at": alert.firing_at,
                    "acked_by": alert.acked_by,
                    "acked_at": alert.acked_at,
                    "notified_channels": list(alert.notified_channels),
                }
            )
        return out

    # -- checkpoints ---------------------------------------------------------------------

    def partition_states(self, partitions: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Each partition's share of the state, as plain data: the alerts and samples of the
        servers last heard of on it (so it is consistent with that partition's checkpointed
        offset). The pipeline alerts go with every partition. A snapshot: nothing in it
        changes with the engine afterwards.

        The samples are columns (a few byte strings a partition, not one entry a series): a
        commit snapshots every series of the fleet on the stream's thread."""
        out: dict[int, dict[str, Any]] = {
            p: {"alerts": [], "servers": [], "partition_seen": []} for p in partitions
        }
        columns: dict[int, _SeriesColumns] = {p: _SeriesColumns() for p in out}
        for server_id, partition in self._partition_of.items():
            part = out.get(partition)
            if part is not None:
                seen = self._server_seen.get(server_id)
                part["servers"].append([server_id, self._labels[server_id], seen])
                columns[partition].add(self._series.get(server_id))
        for (name, key), alert in self._alerts.items():
            if key == PIPELINE:
                for part in out.values():
                    labels = self._labels.get(self._label_key(self._by_name[name], key))
                    labels = None if labels is None else dict(labels)  # it changes in place
                    part["alerts"].append([name, key, alert.to_state(), labels])
            else:
                part = out.get(self._partition_of.get(key, -1))
                if part is not None:
                    part["alerts"].append([name, key, alert.to_state(), None])
        for partition, part in out.items():
            part["series"] = columns[partition].to_state()
            if partition in self._partition_seen:
                part["partition_seen"] = [[partition, self._partition_seen[partition]]]
        return out

    def end_dropped(self, states: Iterable[Mapping[str, Any]], *, now: int) -> list[AlertEvent]:
        """``reset`` records (for no channel) of the pending and firing alerts in
        :meth:`partition_states` that will not be restored: their episodes end at ``now``.
        Nothing else of the states is taken (an alert whose condition still holds starts a
        new episode)."""
        events = []
        for state in states:
            labels_of = {server_id: labels for server_id, labels, _ in state["servers"]}
            for name, key, saved, labels in state["alerts"]:
                rule = self._by_name.get(name)
                if rule is None or (rule.name, key) in self._alerts:
                    continue
                alert = Alert.from_state(saved)
                found = labels if labels is not None else labels_of.get(key)
                label_key = self._label_key(rule, key)
                self._labels.setdefault(label_key, dict(found or {}))
                events.append(self._event(rule, key, alert, "reset", now, now))
        return events

    def restore(self, states: Iterable[tuple[int, Mapping[str, Any]]]) -> None:
        """Resume from :meth:`partition_states` of the partitions this engine now reads
        (alerts and samples of rules no longer in force are dropped)."""
        for partition, state in states:
            for server_id, labels, seen in state["servers"]:
                self._labels[server_id] = dict(labels)
                self._partition_of[server_id] = partition
                if seen is not None:
                    self._server_seen[server_id] = seen
            for name, key, alert, labels in state["alerts"]:
                rule = self._by_name.get(name)
                if rule is None:
                    continue
                self._alerts[(name, key)] = Alert.from_state(alert)
                if labels is not None:
                    self._labels[self._label_key(rule, key)] = dict(labels)
            servers = [server_id for server_id, _, _ in state["servers"]]
            for server_id, series in _SeriesColumns.read(servers, state["series"]):
                horizons = [self._horizon_ms.get(m, 0) for m in series.columns]
                series.horizon_ms = max(horizons, default=0)
                self._series[server_id] = series
            for p, seen in state["partition_seen"]:
                self._partition_seen[int(p)] = int(seen)
        self._server_seen = OrderedDict(sorted(self._server_seen.items(), key=lambda kv: kv[1]))


class _SeriesColumns:
    """The series of one partition's servers as columns: for each server (in the order of
    the state's ``servers``) its columns (an index into a list of column lists; -1: no
    series) and row count; all the rows' times and values back to back."""

    def __init__(self) -> None:
        self.layouts: dict[tuple[str, ...], int] = {}
        self.layout_of = array("i")
        self.rows = array("i")
        self.ts: list[array[int]] = []
        self.values: list[array[float]] = []

    def add(self, series: ServerSeries | None) -> None:
        """The next server's series."""
        if series is None:
            self.layout_of.append(-1)
            self.rows.append(0)
            return
        layouts = self.layouts
        self.layout_of.append(layouts.setdefault(series.layout, len(layouts)))
        self.rows.append(len(series.ts))
        self.ts.append(series.ts)
        self.values.append(series.values)

    def to_state(self) -> list[Any]:
        return [
            [list(k) for k in self.layouts],
            self.layout_of.tobytes(),
            self.rows.tobytes(),
            b"".join(self.ts),
            b"".join(self.values),
        ]

    @staticmethod
    def read(servers: list[str], state: list[Any]) -> Iterator[tuple[str, ServerSeries]]:
        """The ``(server, series)`` of :meth:`to_state` (horizons to be set)."""
        layouts, layout_of, rows, ts, values = state
        times, samples = array("q", ts), array("d", values)
        at = cell = 0
        for server_id, layout, count in zip(
            servers, array("i", layout_of), array("i", rows), strict=True
        ):
            if layout < 0:
                continue
            columns = layouts[layout]
            cells = count * len(columns)
            yield (
                server_id,
                ServerSeries.restored(
                    0, columns, times[at : at + count], samples[cell : cell + cells]
                ),
            )
            at += count
            cell += cells


def _windows(rule: Rule) -> list[tuple[str, float]]:
    """(metric, window seconds) pairs whose samples ``rule`` needs."""
    if isinstance(rule, CompositeRule):
        return [(c.metric, c.window_s) for c in rule.conditions]
    if isinstance(rule, ThresholdRule | RateOfChangeRule | AnomalyRule):
        return [(rule.metric, rule.window_s)]
    return []


def _time_to_limit(last: float, slope: float, limit: float) -> float:
    """Seconds until the line through ``last`` at ``slope`` per second crosses ``limit``
    (0 on it, infinite when moving away from it or flat)."""
    gap = limit - last
    if gap == 0:
        return 0.0
    if slope == 0 or (gap > 0) != (slope > 0):
        return math.inf
    return gap / slope
