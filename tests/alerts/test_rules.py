"""Rules files: the shipped starter set loads; every mistake is named by rule and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleetlens.alerts.rules import RulesError, ThresholdRule, load_rules, parse_rules
from fleetlens.config import CONF_DIR


def rule() -> dict[str, Any]:
    return {"name": "high-cpu", "type": "threshold", "metric": "cpu_pct", "op": ">", "value": 80}


def with_rule(**fields: Any) -> dict[str, Any]:
    return {"rules": [rule() | fields]}


def test_the_shipped_rules_load_with_every_rule_type() -> None:
    rules = load_rules(CONF_DIR / "alerts.yaml")
    assert {r.type for r in rules.rules} == {
        "threshold",
        "rate_of_change",
        "absence",
        "composite",
        "anomaly",
    }
    high_cpu = next(r for r in rules.rules if r.name == "high-cpu")
    assert rules.lifecycle(high_cpu) == (60.0, 120.0, 4 * 3600.0)
    assert [r.name for r in rules.routes_for(high_cpu, {"env": "prod"})] == ["page"]


def test_durations_and_templates() -> None:
    rules = parse_rules(
        with_rule(window="1h30m", **{"for": 90}, summary="{{ labels.server }} at {{ value }}")
    )
    (only,) = rules.rules
    assert isinstance(only, ThresholdRule)
    assert (only.window_s, only.for_s) == (5400.0, 90.0)
    assert only.render("summary", labels={"server": "s1"}, value=91.5) == "s1 at 91.5"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (with_rule(window="5 min"), "rule 'high-cpu' (rules[0]): window: not a duration"),
        (with_rule(type="thresold"), "rule 'high-cpu' (rules[0]): Input tag 'thresold'"),
        (with_rule(op="~"), "rule 'high-cpu' (rules[0]): op: Input should be"),
        (with_rule(summary="{{ oops"), "rule 'high-cpu' (rules[0]): summary: template error"),
        (with_rule(aggregation="median"), "rule 'high-cpu' (rules[0]): aggregation:"),
        (with_rule(colour="red"), "rule 'high-cpu' (rules[0]): colour: Extra inputs"),
        (with_rule(routes=["nowhere"]), "rule 'high-cpu': unknown route 'nowhere'"),
        ({"rules": [rule(), rule()]}, "rule names must be unique: high-cpu"),
        (
            {
                "rules": [
                    {
                        "name": "d",
                        "type": "rate_of_change",
                        "metric": "disk_pct",
                        "window": "1h",
                        "mode": "time_to_limit",
                        "op": "<",
                        "value": "1d",
                    }
                ]
            },
            "rule 'd' (rules[0]): mode time_to_limit needs a limit",
        ),
        (
            {"routes": [{"name": "page", "channels": ["pager"]}]},
            "route 'page': unknown channel 'pager'",
        ),
        (
            {"channels": {"hook": {"type": "webhook"}}},
            "channels.hook: a webhook channel needs a url",
        ),
    ],
)
def test_mistakes_are_named_by_rule_and_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(data, source="alerts.yaml")
    assert str(caught.value).startswith("alerts.yaml: ")
    assert message in str(caught.value)


def test_a_file_that_is_not_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text("rules: [\n")
    with pytest.raises(RulesError, match="not valid YAML"):
        load_rules(path)


def test_a_template_that_fails_on_an_alerts_values_says_so_instead_of_raising() -> None:
    (only,) = parse_rules(with_rule(summary="{{ labels.nope }} hot")).rules
    assert only.render("summary", labels={}, value=1.0).startswith(
        "high-cpu: the summary template failed"
    )
