"""Alert rules: the typed model of ``conf/alerts.yaml``, validated on load.

A rules file has four sections: ``defaults`` (lifecycle settings every rule inherits),
``channels`` (where notifications go), ``routes`` (which channels a firing alert reaches,
picked by severity and labels, with escalation) and ``rules``. Errors name the rule and the
field at fault (:class:`RulesError`), so a bad reload is refused with a message an SRE can act
on, and the rules in force stay in force.

Durations are written like Prometheus's: ``30s``, ``5m``, ``2h``, ``1d`` (or plain seconds).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fleetlens.alerts.silences import MaintenanceWindow

__all__ = [
    "AGGREGATIONS",
    "LABELS",
    "TAGS",
    "AbsenceRule",
    "AnomalyRule",
    "Channel",
    "CompositeRule",
    "Condition",
    "Defaults",
    "RateOfChangeRule",
    "Route",
    "Rule",
    "RuleSet",
    "RulesError",
    "ThresholdRule",
    "load_rules",
    "parse_rules",
]

#: The tags an alert carries from its server's samples.
TAGS = ("tenant", "region", "env", "service", "cluster")
#: The labels a rule can filter on and an alert carries.
LABELS = (*TAGS, "server")
#: Aggregations of a metric over a sliding window.
AGGREGATIONS = ("avg", "min", "max", "sum", "count", "last", "p50", "p95", "p99")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def _seconds(value: Any) -> Any:
    """``"1h30m"``, ``"90s"`` or a number of seconds, as seconds."""
    if isinstance(value, bool) or not isinstance(value, str):
        return value
    text = value.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {value!r} (write e.g. 30s, 5m, 2h, 1d)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


#: Seconds, written as a duration (``5m``) or a number.
Duration = Annotated[float, BeforeValidator(_seconds), Field(ge=0)]
Comparison = Literal[">", ">=", "<", "<=", "==", "!="]
Severity = Literal["critical", "warning", "info"]

_templates = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class LabelFilter(_Model):
    """Labels an alert must carry: each label equal to the value, or to one of the values."""

    tenant: str | tuple[str, ...] | None = None
    region: str | tuple[str, ...] | None = None
    env: str | tuple[str, ...] | None = None
    service: str | tuple[str, ...] | None = None
    cluster: str | tuple[str, ...] | None = None
    server: str | tuple[str, ...] | None = None

    def matches(self, labels: Mapping[str, str | None]) -> bool:
        """True if ``labels`` satisfy every label this filter names."""
        for name in LABELS:
            wanted = getattr(self, name)
            if wanted is None:
                continue
            value = labels.get(name)
            if isinstance(wanted, str) and value != wanted:
                return False
            if isinstance(wanted, tuple) and value not in wanted:
                return False
        return True


class Defaults(_Model):
    """Lifecycle settings a rule inherits unless it sets its own."""

    for_s: Duration = Field(default=0.0, alias="for")
    keep_firing_for_s: Duration = Field(default=0.0, alias="keep_firing_for")
    #: Re-notify a firing alert this often (0: never).
    repeat_interval_s: Duration = Field(default=4 * 3600.0, alias="repeat_interval")


class Channel(_Model):
    """Where notifications go. ``webhook``: an HTTP POST of JSON; ``email``: SMTP (server and
    credentials in the settings); ``log``: a structured log line; ``apprise``: any service an
    Apprise URL names (Slack, PagerDuty, Teams, Telegram, SMS gateways...)."""

    type: Literal["webhook", "email", "log", "apprise"]
    url: str | None = None
    to: tuple[str, ...] = ()
    timeout_s: Duration = 5.0

    @model_validator(mode="after")
    def _needs(self) -> Channel:
        if self.type in ("webhook", "apprise") and not self.url:
            raise ValueError(f"a {self.type} channel needs a url")
        if self.type == "email" and not self.to:
            raise ValueError("an email channel needs recipients (to)")
        return self


class Route(_Model):
    """Which channels an alert reaches. A rule without routes of its own takes the first route
    whose severities and labels it matches (and the next ones too while ``continue`` is set).
    Still firing and unacknowledged ``escalate_after`` the notification, the alert is also
    sent to the route ``escalate_to``."""

    name: str
    severities: tuple[Severity, ...] = ()
    labels: LabelFilter = LabelFilter()
    channels: tuple[str, ...] = Field(min_length=1)
    escalate_after_s: Duration | None = Field(default=None, alias="escalate_after")
    escalate_to: str | None = None
    continue_: bool = Field(default=False, alias="continue")

    def matches(self, severity: str, labels: Mapping[str, str | None]) -> bool:
        """True if an alert of ``severity`` with ``labels`` takes this route."""
        return (not self.severities or severity in self.severities) and self.labels.matches(labels)


class Condition(_Model):
    """An aggregation of one metric over a sliding window compared with a value."""

    metric: str
    aggregation: Literal["avg", "min", "max", "sum", "count", "last", "p50", "p95", "p99"] = "avg"
    window_s: Duration = Field(default=60.0, alias="window", gt=0)
    op: Comparison
    value: float


class _RuleBase(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    severity: Severity = "warning"
    labels: LabelFilter = LabelFilter()
    for_s: Duration | None = Field(default=None, alias="for")
    keep_firing_for_s: Duration | None = Field(default=None, alias="keep_firing_for")
    repeat_interval_s: Duration | None = Field(default=None, alias="repeat_interval")
    summary: str = "{{ rule }} on {{ labels.server }}: {{ value }}"
    description: str = ""
    routes: tuple[str, ...] = ()

    @field_validator("summary", "description")
    @classmethod
    def _template(cls, text: str) -> str:
        try:
            _templates.parse(text)
        except TemplateSyntaxError as error:
            raise ValueError(f"template error: {error.message} (line {error.lineno})") from None
        return text

    def render(self, field: Literal["summary", "description"], **context: Any) -> str:
        """The summary or description for an alert (``labels``, ``value``, ``rule``...). A
        template that fails on these values (an undefined name) says so in the text instead:
        an alert is never lost to its wording."""
        try:
            return _templates.from_string(getattr(self, field)).render(rule=self.name, **context)
        except TemplateError as error:
            return f"{self.name}: the {field} template failed ({error})"

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics whose samples this rule evaluates on."""
        return ()


class ThresholdRule(_RuleBase, Condition):
    """``aggregation(metric) over window  op  value``, e.g. avg cpu_pct over 5m > 80."""

    type: Literal["threshold"]

    @property
    def metrics(self) -> tuple[str, ...]:
        return (self.metric,)


class RateOfChangeRule(_RuleBase):
    """How a metric moves over a window. ``change``: last minus first value; ``rate``: the
    least-squares slope per second; ``time_to_limit``: seconds until the slope reaches
    ``limit`` (infinite when moving away from it), e.g. disk full within 24 h:
    ``mode: time_to_limit, limit: 100, op: "<", value: 1d``."""

    type: Literal["rate_of_change"]
    metric: str
    window_s: Duration = Field(alias="window", gt=0)
    mode: Literal["change", "rate", "time_to_limit"] = "change"
    limit: float | None = None
    op: Comparison
    value: Annotated[float, BeforeValidator(_seconds)]

    @model_validator(mode="after")
    def _limit(self) -> RateOfChangeRule:
        if self.mode == "time_to_limit" and self.limit is None:
            raise ValueError("mode time_to_limit needs a limit")
        return self

    @property
    def metrics(self) -> tuple[str, ...]:
        return (self.metric,)


class AbsenceRule(_RuleBase):
    """A server seen in the last ``known_for`` sent nothing for ``absent_for`` (wall clock).
    When a whole partition is silent the fault is upstream: one pipeline alert is raised
    instead of one per server."""

    type: Literal["absence"]
    absent_for_s: Duration = Field(alias="absent_for", gt=0)
    known_for_s: Duration = Field(default=6 * 3600.0, alias="known_for", gt=0)


class CompositeRule(_RuleBase):
    """Conditions on one server joined by ``and`` or ``or`` (cpu > 80 and mem > 90)."""

    type: Literal["composite"]
    operator: Literal["and", "or"] = "and"
    conditions: tuple[Condition, ...] = Field(min_length=2)

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.metric for c in self.conditions))


class AnomalyRule(_RuleBase):
    """The metric's aggregate over the window is more than ``k`` standard deviations from its
    baseline for this server, metric and hour of week (``baseline_hourly``, written by the
    batch layer). Without a baseline for a key the rule stays silent for it."""

    type: Literal["anomaly"]
    metric: str
    aggregation: Literal["avg", "min", "max", "sum", "count", "last", "p50", "p95", "p99"] = "avg"
    window_s: Duration = Field(default=300.0, alias="window", gt=0)
    k: float = Field(default=3.0, gt=0)
    direction: Literal["above", "below", "both"] = "both"
    #: A floor under the baseline's spread, so that a flat history does not page on noise.
    min_stddev: float = Field(default=0.0, ge=0)
    #: Hours of history a baseline needs before the rule trusts it.
    min_samples: int = Field(default=3, ge=1)

    @property
    def metrics(self) -> tuple[str, ...]:
        return (self.metric,)


Rule = Annotated[
    ThresholdRule | RateOfChangeRule | AbsenceRule | CompositeRule | AnomalyRule,
    Field(discriminator="type"),
]


class RuleSet(_Model):
    """A validated rules file."""

    defaults: Defaults = Defaults()
    channels: dict[str, Channel] = {}
    routes: tuple[Route, ...] = ()
    maintenance: tuple[MaintenanceWindow, ...] = ()
    rules: tuple[Rule, ...] = ()

    @model_validator(mode="after")
    def _references(self) -> RuleSet:
        names = [r.name for r in self.rules]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"rule names must be unique: {', '.join(duplicated)}")
        routes = {r.name for r in self.routes}
        for route in self.routes:
            for channel in route.channels:
                if channel not in self.channels:
                    raise ValueError(f"route {route.name!r}: unknown channel {channel!r}")
            if route.escalate_to is not None and route.escalate_to not in routes:
                raise ValueError(f"route {route.name!r}: unknown escalate_to {route.escalate_to!r}")
        for rule in self.rules:
            for route_name in rule.routes:
                if route_name not in routes:
                    raise ValueError(f"rule {rule.name!r}: unknown route {route_name!r}")
        return self

    def lifecycle(self, rule: Rule) -> tuple[float, float, float]:
        """``(for, keep_firing_for, repeat_interval)`` of ``rule``, defaults filled in."""
        d = self.defaults
        return (
            d.for_s if rule.for_s is None else rule.for_s,
            d.keep_firing_for_s if rule.keep_firing_for_s is None else rule.keep_firing_for_s,
            d.repeat_interval_s if rule.repeat_interval_s is None else rule.repeat_interval_s,
        )

    @cached_property
    def routes_by_name(self) -> dict[str, Route]:
        """The routes, by name."""
        return {r.name: r for r in self.routes}

    @property
    def anomaly_metrics(self) -> list[str]:
        """The metrics anomaly rules evaluate (the baselines to read)."""
        return [r.metric for r in self.rules if isinstance(r, AnomalyRule)]

    def routes_for(self, rule: Rule, labels: Mapping[str, str | None]) -> tuple[Route, ...]:
        """The routes an alert of ``rule`` with ``labels`` takes first."""
        if rule.routes:
            return tuple(self.routes_by_name[n] for n in rule.routes)
        chosen: list[Route] = []
        for route in self.routes:
            if route.matches(rule.severity, labels):
                chosen.append(route)
                if not route.continue_:
                    break
        return tuple(chosen)


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the rule and field at fault."""


def parse_rules(data: Any, *, source: str = "<rules>") -> RuleSet:
    """Validate rules already read from YAML (a mapping).

    Raises:
        RulesError: naming each rule and field at fault.
    """
    try:
        return RuleSet.model_validate(data if data is not None else {})
    except ValidationError as error:
        raise RulesError(_describe(error, data, source)) from None


def load_rules(path: Path) -> RuleSet:
    """Read and validate a rules file (``conf/alerts.yaml``).

    Raises:
        RulesError: the file is not valid YAML or not valid rules.
        FileNotFoundError: there is no such file.
    """
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RulesError(f"{path}: not valid YAML: {error}") from None
    return parse_rules(data, source=str(path))


def _describe(error: ValidationError, data: Any, source: str) -> str:
    """One line per problem: ``rule 'high-cpu' (rules[2]): window: not a duration...``."""
    lines = []
    for problem in error.errors():
        loc = list(problem["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            index = loc[1]
            rules = data.get("rules") if isinstance(data, dict) else None
            name = None
            if isinstance(rules, list) and index < len(rules) and isinstance(rules[index], dict):
                name = rules[index].get("name")
            where = f"rule {name!r} (rules[{index}])" if name else f"rules[{index}]"
            # The discriminator's tag ("threshold") is not a field the user wrote.
            rest = [str(p) for p in loc[2:] if p not in _RULE_TYPES]
        else:
            rest = [str(p) for p in loc]
        field = ".".join(rest)
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{where}{': ' if where and field else ''}{field}: {message}".lstrip(": "))
    return f"{source}: " + "; ".join(lines)


_RULE_TYPES = ("threshold", "rate_of_change", "absence", "composite", "anomaly")
