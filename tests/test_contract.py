"""Unit tests of the event contract v1 (fleetlens.contract): table-driven cases and fuzzing."""

from __future__ import annotations

import copy
import json
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetlens.config import ContractSettings, MetricSpec, load_settings
from fleetlens.contract import (
    ContractViolation,
    Event,
    Validator,
    decode_canonical,
    encode_event,
)

NOW_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z
NOW = datetime(2026, 11, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

PERCENT = ("cpu_pct", "mem_pct", "disk_pct")
NON_NEGATIVE = ("net_in_bps", "net_out_bps", "conns", "latency_ms", "load1")
TAG_KEYS = ("tenant", "region", "env", "service", "cluster", "az", "role")
TOP_LEVEL = ("schema_version", "event_id", "server_id", "ts", "metrics", "tags")


def contract_settings(**overrides: Any) -> ContractSettings:
    """The shipped contract rules, spelled out, with ``overrides``."""
    metrics = {name: MetricSpec(min=0, max=100, unit="percent") for name in PERCENT}
    metrics |= {name: MetricSpec(min=0) for name in NON_NEGATIVE}
    values: dict[str, Any] = {
        "max_payload_bytes": 16_384,
        "max_metrics": 64,
        "max_tags": 16,
        "max_tag_value_length": 128,
        "tag_keys": TAG_KEYS,
        "max_future_skew_s": 300,
        "max_age_s": 7 * 86_400,
        "metrics": metrics,
    }
    return ContractSettings(**(values | overrides))


VALIDATOR = Validator(contract_settings())


def valid_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "schema_version": 1,
        "event_id": "01JBX0000000000000000000AB",
        "server_id": "srv-00042",
        "ts": NOW_MS - 5_000,
        "metrics": {"cpu_pct": 42.5, "mem_pct": 61.0, "net_in_bps": 1.5e6, "conns": 120},
        "tags": {"tenant": "acme", "region": "eu-west-1", "env": "prod"},
    }
    payload.update(changes)
    return payload


def without(key: str) -> dict[str, Any]:
    payload = valid_payload()
    del payload[key]
    return payload


def with_metric(name: str, value: Any) -> dict[str, Any]:
    payload = valid_payload()
    payload["metrics"][name] = value
    return payload


def with_tag(key: str, value: Any) -> dict[str, Any]:
    payload = valid_payload()
    payload["tags"][key] = value
    return payload


def check_both(payload: Any, *, tenant: str | None = None) -> Event:
    """Validate through ``convert`` and ``decode`` (when there is no tenant override)."""
    event = VALIDATOR.convert(payload, now_ms=NOW_MS, tenant=tenant)
    if tenant is None:
        assert VALIDATOR.decode(json.dumps(payload).encode(), now_ms=NOW_MS) == event
    return event


def violation_of(payload: Any, *, raw: bytes | None = None) -> tuple[str, str]:
    """The field named by ``convert`` and by ``decode``, checking they agree."""
    with pytest.raises(ContractViolation) as converted:
        VALIDATOR.convert(payload, now_ms=NOW_MS)
    data = raw if raw is not None else msgspec.json.encode(payload)
    with pytest.raises(ContractViolation) as decoded:
        VALIDATOR.decode(data, now_ms=NOW_MS)
    assert converted.value.field == decoded.value.field
    return converted.value.field, decoded.value.reason


# -- valid payloads ---------------------------------------------------------------------------


VALID_CASES = {
    "typical": valid_payload(),
    "one metric, only the tenant tag": valid_payload(
        metrics={"load1": 0.5}, tags={"tenant": "globex"}
    ),
    "every metric and tag key": valid_payload(
        metrics={name: 1.0 for name in PERCENT + NON_NEGATIVE},
        tags={key: f"value-{key}" for key in TAG_KEYS},
    ),
    "percentages at their bounds": valid_payload(
        metrics={"cpu_pct": 0, "mem_pct": 100, "disk_pct": 100.0}
    ),
    "huge rate": valid_payload(metrics={"net_out_bps": 1e300}),
    "integer metric value": valid_payload(metrics={"conns": 7}),
    "RFC 3339 with Z": valid_payload(ts="2026-10-31T23:59:55Z"),
    "RFC 3339 with an offset": valid_payload(ts="2026-11-01T01:59:55.250+02:00"),
    "ts at the future skew bound": valid_payload(ts=NOW_MS + 300_000),
    "ts at the age bound": valid_payload(ts=NOW_MS - 7 * 86_400_000),
    "id and server id with every allowed character": valid_payload(
        event_id="a-Z_0.9:x", server_id="rack-1.host_2:eth0"
    ),
    "longest id, server id and tag value": valid_payload(
        event_id="e" * 64, server_id="s" * 128, tags={"tenant": "t" * 128}
    ),
}


@pytest.mark.parametrize("payload", VALID_CASES.values(), ids=VALID_CASES.keys())
def test_valid_payloads(payload: dict[str, Any]):
    event = check_both(payload)

    assert event.event_id == payload["event_id"]
    assert event.server_id == payload["server_id"]
    assert event.metrics == {k: float(v) for k, v in payload["metrics"].items()}
    assert all(isinstance(v, float) for v in event.metrics.values())
    assert event.tags == payload["tags"]
    assert event.schema_version == 1
    assert isinstance(event.ts, int)


def test_rfc3339_and_epoch_ms_are_the_same_instant():
    epoch_ms = 1_793_487_605_123  # 2026-10-31T23:00:05.123Z
    spellings = [
        epoch_ms,
        "2026-10-31T23:00:05.123Z",
        "2026-10-31T23:00:05.123+00:00",
        "2026-11-01T01:00:05.123+02:00",
        "2026-10-31T17:30:05.123-05:30",
    ]

    events = [check_both(valid_payload(ts=ts)) for ts in spellings]

    assert {event.ts for event in events} == {epoch_ms}
    assert len({encode_event(event) for event in events}) == 1


@given(st.integers(min_value=NOW_MS - 7 * 86_400_000, max_value=NOW_MS + 300_000))
@settings(max_examples=200, deadline=None)
def test_rfc3339_round_trips_to_the_exact_millisecond(epoch_ms: int):
    moment = EPOCH + timedelta(milliseconds=epoch_ms)
    text = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    assert check_both(valid_payload(ts=text)).ts == epoch_ms
    assert check_both(valid_payload(ts=epoch_ms)).ts == epoch_ms


def test_sub_millisecond_fraction_is_truncated():
    assert check_both(valid_payload(ts="2026-10-31T23:00:05.123999Z")).ts == 1_793_487_605_123


def test_naive_datetime_is_rejected():
    field, reason = violation_of(valid_payload(ts="2026-10-31T23:59:55"))

    assert field == "ts"
    assert "offset" in reason


def test_bool_metric_value_is_rejected():
    for value in (True, False):
        field, _ = violation_of(with_metric("cpu_pct", value))
        assert field == "metrics.cpu_pct"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_rejected_by_convert(value: float):
    with pytest.raises(ContractViolation) as info:
        VALIDATOR.convert(with_metric("net_in_bps", value), now_ms=NOW_MS)

    assert info.value.field == "metrics.net_in_bps"


@pytest.mark.parametrize("literal", [b"1e999", b"-1e999", b"1E400"])
def test_overflowing_json_number_is_rejected_by_decode(literal: bytes):
    raw = msgspec.json.encode(with_metric("latency_ms", 12345.5)).replace(b"12345.5", literal)
    assert literal in raw

    with pytest.raises(ContractViolation) as info:
        VALIDATOR.decode(raw, now_ms=NOW_MS)

    assert info.value.field == "metrics.latency_ms"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_number_literals_are_rejected_by_decode(literal: bytes):
    raw = msgspec.json.encode(with_metric("latency_ms", 12345.5)).replace(b"12345.5", literal)

    with pytest.raises(ContractViolation) as info:
        VALIDATOR.decode(raw, now_ms=NOW_MS)

    assert info.value.field == ""
    assert "JSON" in info.value.reason


def test_huge_integer_metric_is_rejected_by_convert():
    with pytest.raises(ContractViolation) as info:
        VALIDATOR.convert(with_metric("conns", 10**400), now_ms=NOW_MS)

    assert info.value.field == "metrics.conns"


# -- invalid payloads, each naming its field --------------------------------------------------


INVALID_CASES: list[tuple[str, Any, str]] = [
    ("not an object", [valid_payload()], ""),
    ("a string", "hello", ""),
    ("null", None, ""),
    ("unknown top-level field", valid_payload(extra=1), "extra"),
    ("schema_version missing", without("schema_version"), "schema_version"),
    ("schema_version 2", valid_payload(schema_version=2), "schema_version"),
    ("schema_version as text", valid_payload(schema_version="1"), "schema_version"),
    ("schema_version as float", valid_payload(schema_version=1.0), "schema_version"),
    ("event_id missing", without("event_id"), "event_id"),
    ("event_id empty", valid_payload(event_id=""), "event_id"),
    ("event_id too long", valid_payload(event_id="e" * 65), "event_id"),
    ("event_id with a space", valid_payload(event_id="a b"), "event_id"),
    ("event_id a number", valid_payload(event_id=12), "event_id"),
    ("event_id with a trailing newline", valid_payload(event_id="abc\n"), "event_id"),
    ("server_id missing", without("server_id"), "server_id"),
    ("server_id with a slash", valid_payload(server_id="a/b"), "server_id"),
    ("server_id too long", valid_payload(server_id="s" * 129), "server_id"),
    ("server_id null", valid_payload(server_id=None), "server_id"),
    ("server_id with a trailing newline", valid_payload(server_id="srv-1\n"), "server_id"),
    ("ts missing", without("ts"), "ts"),
    ("ts as text", valid_payload(ts="yesterday"), "ts"),
    ("ts date only", valid_payload(ts="2026-11-01"), "ts"),
    ("ts as float", valid_payload(ts=float(NOW_MS)), "ts"),
    ("ts as bool", valid_payload(ts=True), "ts"),
    ("ts naive", valid_payload(ts="2026-11-01T00:00:00"), "ts"),
    ("ts in the future", valid_payload(ts=NOW_MS + 300_001), "ts"),
    ("ts too old", valid_payload(ts=NOW_MS - 7 * 86_400_000 - 1), "ts"),
    ("ts RFC 3339 in the future", valid_payload(ts="2026-11-01T00:05:00.001Z"), "ts"),
    ("ts in seconds, not ms", valid_payload(ts=NOW_MS // 1000), "ts"),
    ("metrics missing", without("metrics"), "metrics"),
    ("metrics empty", valid_payload(metrics={}), "metrics"),
    ("metrics a list", valid_payload(metrics=[1.0]), "metrics"),
    ("metric as text", with_metric("mem_pct", "high"), "metrics.mem_pct"),
    ("metric null", with_metric("disk_pct", None), "metrics.disk_pct"),
    ("metric an object", with_metric("conns", {"v": 1}), "metrics.conns"),
    ("metric bool", with_metric("cpu_pct", True), "metrics.cpu_pct"),
    ("percentage over 100", with_metric("cpu_pct", 180.0), "metrics.cpu_pct"),
    ("percentage just over 100", with_metric("disk_pct", 100.000001), "metrics.disk_pct"),
    ("percentage negative", with_metric("mem_pct", -0.5), "metrics.mem_pct"),
    ("negative rate", with_metric("net_out_bps", -1), "metrics.net_out_bps"),
    ("negative count", with_metric("conns", -3), "metrics.conns"),
    ("unknown metric", with_metric("gpu_pct", 1.0), "metrics.gpu_pct"),
    ("tags a list", valid_payload(tags=["tenant"]), "tags"),
    ("tags null", valid_payload(tags=None), "tags"),
    ("tags missing: no tenant", without("tags"), "tags.tenant"),
    ("tenant missing", valid_payload(tags={"region": "eu-west-1"}), "tags.tenant"),
    ("tag key not allowed", with_tag("owner", "bob"), "tags.owner"),
    ("tag value empty", with_tag("region", ""), "tags.region"),
    ("tag value too long", with_tag("env", "x" * 129), "tags.env"),
    ("tag value a number", with_tag("az", 3), "tags.az"),
    ("tag value null", with_tag("role", None), "tags.role"),
]


@pytest.mark.parametrize(
    ("payload", "field"),
    [(payload, field) for _, payload, field in INVALID_CASES],
    ids=[name for name, _, _ in INVALID_CASES],
)
def test_invalid_payloads_name_the_field(payload: Any, field: str):
    named, reason = violation_of(payload)

    assert named == field
    assert reason


def test_violation_message_carries_field_and_reason():
    with pytest.raises(ContractViolation) as info:
        VALIDATOR.convert(with_metric("cpu_pct", 180.0), now_ms=NOW_MS)

    assert str(info.value).startswith("metrics.cpu_pct: ")
    assert "180" in info.value.reason
    assert isinstance(info.value, ValueError)


def test_too_many_metrics_and_tags():
    validator = Validator(contract_settings(max_metrics=2, max_tags=2))

    with pytest.raises(ContractViolation) as metrics:
        validator.convert(
            valid_payload(metrics={"cpu_pct": 1, "mem_pct": 2, "conns": 3}), now_ms=NOW_MS
        )
    with pytest.raises(ContractViolation) as tags:
        validator.convert(
            valid_payload(metrics={"cpu_pct": 1}, tags={"tenant": "a", "env": "b", "az": "c"}),
            now_ms=NOW_MS,
        )

    assert metrics.value.field == "metrics"
    assert tags.value.field == "tags"
    ok = validator.convert(
        valid_payload(metrics={"cpu_pct": 1, "mem_pct": 2}, tags={"tenant": "a", "env": "b"}),
        now_ms=NOW_MS,
    )
    assert len(ok.metrics) == 2


def test_metric_ranges_come_from_the_settings():
    validator = Validator(
        contract_settings(metrics={"temp_c": MetricSpec(min=-40, max=125)}, tag_keys=("tenant",))
    )

    event = validator.convert(
        valid_payload(metrics={"temp_c": -12.5}, tags={"tenant": "acme"}), now_ms=NOW_MS
    )
    assert event.metrics == {"temp_c": -12.5}
    assert validator.metric_names == ("temp_c",)
    for payload, field in [
        (valid_payload(metrics={"temp_c": 126}, tags={"tenant": "a"}), "metrics.temp_c"),
        (valid_payload(metrics={"cpu_pct": 1}, tags={"tenant": "a"}), "metrics.cpu_pct"),
        (valid_payload(metrics={"temp_c": 1}, tags={"tenant": "a", "env": "x"}), "tags.env"),
    ]:
        with pytest.raises(ContractViolation) as info:
            validator.convert(payload, now_ms=NOW_MS)
        assert info.value.field == field


def test_shipped_settings_match_the_rules_tested_here():
    shipped = Validator(load_settings("base").contract)

    assert set(shipped.metric_names) == set(PERCENT + NON_NEGATIVE)
    assert shipped.convert(valid_payload(), now_ms=NOW_MS) == check_both(valid_payload())
    with pytest.raises(ContractViolation) as info:
        shipped.convert(with_metric("cpu_pct", 100.5), now_ms=NOW_MS)
    assert info.value.field == "metrics.cpu_pct"


# -- tenant ------------------------------------------------------------------------------------


def test_tenant_comes_from_the_caller():
    spoofed = with_tag("tenant", "globex")

    event = VALIDATOR.convert(spoofed, now_ms=NOW_MS, tenant="acme")

    assert event.tags["tenant"] == "acme"
    assert event.tags["region"] == "eu-west-1"
    assert spoofed["tags"]["tenant"] == "globex"  # the input is not modified


def test_tenant_from_the_caller_fills_missing_tags():
    event = VALIDATOR.convert(without("tags"), now_ms=NOW_MS, tenant="initech")

    assert event.tags == {"tenant": "initech"}


def test_tenant_from_the_caller_counts_towards_max_tags():
    validator = Validator(contract_settings(max_tags=2))
    payload = valid_payload(tags={"region": "r", "env": "e"})

    with pytest.raises(ContractViolation) as info:
        validator.convert(payload, now_ms=NOW_MS, tenant="acme")

    assert info.value.field == "tags"


def test_decode_needs_the_tenant_in_the_body():
    raw = msgspec.json.encode(valid_payload(tags={"region": "eu-west-1"}))

    with pytest.raises(ContractViolation) as info:
        VALIDATOR.decode(raw, now_ms=NOW_MS)

    assert info.value.field == "tags.tenant"


# -- size --------------------------------------------------------------------------------------


def test_decode_enforces_the_payload_size_limit():
    validator = Validator(contract_settings(max_payload_bytes=1_000))
    raw = msgspec.json.encode(valid_payload())
    at_limit = raw + b" " * (1_000 - len(raw))

    assert validator.decode(at_limit, now_ms=NOW_MS).server_id == "srv-00042"
    with pytest.raises(ContractViolation) as info:
        validator.decode(at_limit + b" ", now_ms=NOW_MS)
    assert info.value.field == ""
    assert "1001 bytes" in info.value.reason


def test_convert_enforces_the_payload_size_limit():
    validator = Validator(contract_settings(max_payload_bytes=600))
    small = valid_payload()
    big = valid_payload(tags={key: "v" * 100 for key in TAG_KEYS})

    assert len(encode_event(validator.convert(small, now_ms=NOW_MS))) < 600
    with pytest.raises(ContractViolation) as info:
        validator.convert(big, now_ms=NOW_MS)
    assert info.value.field == ""
    assert "bytes" in info.value.reason


def test_canonical_event_decodes_to_itself():
    event = VALIDATOR.convert(
        valid_payload(ts="2026-10-31T23:59:55.5+01:00"), now_ms=NOW_MS, tenant="acme"
    )

    again = VALIDATOR.decode(encode_event(event), now_ms=NOW_MS)

    assert again == event
    assert msgspec.json.decode(encode_event(event))["ts"] == event.ts


# -- fuzzing: nothing but ContractViolation escapes -------------------------------------------

FIELD_NAMES = st.sampled_from(TOP_LEVEL + PERCENT + NON_NEGATIVE + TAG_KEYS + ("x",))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["2026-11-01T00:00:00Z", "2026-11-01T00:00:00", "1e999", "", "\x00"]),
)
JSON_LIKE = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(FIELD_NAMES, st.text(max_size=10)), children, max_size=6),
    ),
    max_leaves=25,
)


@st.composite
def payload_shaped(draw: st.DrawFn) -> dict[str, Any]:
    """Objects with the contract's keys and arbitrary values: they get past the first checks."""
    payload = valid_payload()
    for key in draw(st.lists(st.sampled_from(TOP_LEVEL), unique=True, max_size=3)):
        if draw(st.booleans()):
            del payload[key]
        else:
            payload[key] = draw(JSON_LIKE)
    return payload


@given(st.one_of(JSON_LIKE, payload_shaped()))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_convert_raises_only_contract_violations(obj: Any):
    for tenant in (None, "acme"):
        try:
            event = VALIDATOR.convert(obj, now_ms=NOW_MS, tenant=tenant)
        except ContractViolation as violation:
            assert isinstance(violation.field, str)
            assert violation.reason
        else:
            assert isinstance(event, Event)
            assert "tenant" in event.tags


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


@given(
    st.one_of(
        st.binary(max_size=300),
        JSON_LIKE.map(_json_bytes),
        payload_shaped().map(_json_bytes),
        payload_shaped()
        .map(_json_bytes)
        .flatmap(lambda raw: st.integers(0, len(raw)).map(lambda cut: raw[:cut])),
    )
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_decode_raises_only_contract_violations(data: bytes):
    try:
        event = VALIDATOR.decode(data, now_ms=NOW_MS)
    except ContractViolation as violation:
        assert isinstance(violation.field, str)
        assert violation.reason
    else:
        assert isinstance(event, Event)
        assert VALIDATOR.decode(encode_event(event), now_ms=NOW_MS) == event


# -- fuzzing: valid payloads pass, mutations name the mutated field ----------------------------

TAG_VALUE = st.text(string.ascii_letters + string.digits + "-_. /é", min_size=1, max_size=128)


@st.composite
def valid_payloads(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(PERCENT + NON_NEGATIVE), min_size=1, unique=True))
    metrics: dict[str, Any] = {}
    for name in names:
        high = 100 if name in PERCENT else 1e12
        metrics[name] = draw(st.one_of(st.floats(0, high), st.integers(0, int(high))))
    keys = draw(st.lists(st.sampled_from(TAG_KEYS[1:]), unique=True))
    tags = {"tenant": draw(TAG_VALUE)} | {key: draw(TAG_VALUE) for key in keys}
    epoch_ms = draw(st.integers(NOW_MS - 7 * 86_400_000, NOW_MS + 300_000))
    ts: Any = epoch_ms
    if draw(st.booleans()):
        offset = timezone(timedelta(minutes=draw(st.integers(-14 * 60, 14 * 60))))
        moment = (EPOCH + timedelta(milliseconds=epoch_ms)).astimezone(offset)
        ts = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    ident = st.text(string.ascii_letters + string.digits + "_.:-", min_size=1, max_size=64)
    return {
        "schema_version": 1,
        "event_id": draw(ident),
        "server_id": draw(ident),
        "ts": ts,
        "metrics": metrics,
        "tags": tags,
    }


def _expected_ts(payload: dict[str, Any]) -> int:
    ts = payload["ts"]
    if isinstance(ts, int):
        return ts
    return (datetime.fromisoformat(ts) - EPOCH) // timedelta(milliseconds=1)


@given(valid_payloads())
@settings(max_examples=200, deadline=None)
def test_generated_valid_payloads_are_accepted(payload: dict[str, Any]):
    event = VALIDATOR.convert(payload, now_ms=NOW_MS)

    assert event.ts == _expected_ts(payload)
    assert event.metrics == {k: float(v) for k, v in payload["metrics"].items()}
    assert event.tags == payload["tags"]
    assert VALIDATOR.decode(msgspec.json.encode(payload), now_ms=NOW_MS) == event


NOT_A_NUMBER = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
NOT_A_STRING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)
NOT_A_TS = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers()),
)
NOT_AN_OBJECT = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
)
BAD_ID = st.one_of(
    st.just(""),
    st.text(string.ascii_letters, min_size=129, max_size=140),
    st.tuples(st.text(string.ascii_letters, max_size=5), st.sampled_from(" /#@!é\n,")).map("".join),
)
OUT_OF_WINDOW_MS = st.one_of(
    st.integers(NOW_MS + 300_001, 2**63 - 1),
    st.integers(-(2**63), NOW_MS - 7 * 86_400_000 - 1),
)


def _percent_out_of_range() -> st.SearchStrategy[float]:
    return st.one_of(
        st.floats(min_value=100, exclude_min=True, allow_infinity=True),
        st.floats(max_value=0, exclude_max=True, allow_infinity=True),
        st.just(float("nan")),
    )


def _non_negative_out_of_range() -> st.SearchStrategy[float]:
    return st.one_of(
        st.floats(max_value=0, exclude_max=True, allow_infinity=True),
        st.just(float("inf")),
        st.just(float("nan")),
    )


@st.composite
def mutations(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid payload broken in one way, and the dotted path of what was broken."""
    payload = draw(valid_payloads())
    kind = draw(
        st.sampled_from(
            [
                "drop",
                "top_type",
                "bad_id",
                "schema_version",
                "metric_type",
                "metric_range",
                "unknown_metric",
                "unknown_tag",
                "bad_tag_value",
                "ts_window",
                "ts_naive",
                "unknown_field",
            ]
        )
    )
    if kind == "drop":
        target = draw(st.sampled_from(TOP_LEVEL))
        del payload[target]
        return payload, target
    if kind == "top_type":
        target = draw(st.sampled_from(TOP_LEVEL))
        strategy = {
            "schema_version": st.one_of(NOT_A_NUMBER, st.floats()),
            "event_id": NOT_A_STRING,
            "server_id": NOT_A_STRING,
            "ts": NOT_A_TS,
            "metrics": NOT_AN_OBJECT,
            "tags": NOT_AN_OBJECT,
        }[target]
        payload[target] = draw(strategy)
        return payload, target
    if kind == "bad_id":
        target = draw(st.sampled_from(["event_id", "server_id"]))
        payload[target] = draw(BAD_ID)
        return payload, target
    if kind == "schema_version":
        payload["schema_version"] = draw(st.integers(-(2**63), 2**63 - 1).filter(lambda v: v != 1))
        return payload, "schema_version"
    if kind == "metric_type":
        name = draw(st.sampled_from(PERCENT + NON_NEGATIVE))
        payload["metrics"][name] = draw(NOT_A_NUMBER)
        return payload, f"metrics.{name}"
    if kind == "metric_range":
        name = draw(st.sampled_from(PERCENT + NON_NEGATIVE))
        bad = _percent_out_of_range() if name in PERCENT else _non_negative_out_of_range()
        payload["metrics"][name] = draw(bad)
        return payload, f"metrics.{name}"
    if kind == "unknown_metric":
        known = PERCENT + NON_NEGATIVE
        name = draw(st.text(max_size=20).filter(lambda n: n not in known))
        payload["metrics"][name] = draw(st.floats(0, 100))
        return payload, f"metrics.{name}"
    if kind == "unknown_tag":
        key = draw(st.text(max_size=20).filter(lambda k: k not in TAG_KEYS))
        payload["tags"][key] = draw(TAG_VALUE)
        return payload, f"tags.{key}"
    if kind == "bad_tag_value":
        key = draw(st.sampled_from(TAG_KEYS))
        payload["tags"][key] = draw(
            st.one_of(st.just(""), st.text(min_size=129, max_size=200), NOT_A_STRING)
        )
        return payload, f"tags.{key}"
    if kind == "ts_window":
        epoch_ms = draw(OUT_OF_WINDOW_MS)
        if draw(st.booleans()) and -62_135_596_800_000 < epoch_ms < 253_402_300_799_000:
            moment = EPOCH + timedelta(milliseconds=epoch_ms)
            payload["ts"] = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        else:
            payload["ts"] = epoch_ms
        return payload, "ts"
    if kind == "ts_naive":
        moment = EPOCH + timedelta(milliseconds=draw(st.integers(NOW_MS - 3_600_000, NOW_MS)))
        payload["ts"] = moment.replace(tzinfo=None).isoformat()
        return payload, "ts"
    name = draw(st.text(min_size=1, max_size=15).filter(lambda n: n not in TOP_LEVEL))
    payload[name] = draw(st.one_of(SCALARS, st.just({})))
    return payload, name


def _names(field: str, target: str) -> bool:
    """Whether ``field`` is ``target``, inside it, or its parent (never the whole payload)."""
    if field == target or field.startswith(f"{target}."):
        return True
    return bool(field) and target.startswith(f"{field}.")


@given(mutations())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_mutation_is_rejected_naming_its_field(case: tuple[dict[str, Any], str]):
    payload, target = case

    with pytest.raises(ContractViolation) as converted:
        VALIDATOR.convert(copy.deepcopy(payload), now_ms=NOW_MS)
    assert _names(converted.value.field, target), (converted.value.field, target)

    with pytest.raises(ContractViolation) as decoded:
        VALIDATOR.decode(msgspec.json.encode(payload), now_ms=NOW_MS)
    assert _names(decoded.value.field, target), (decoded.value.field, target)


# -- the canonical fast path (what the speed layer's fetcher uses) ------------------------------


def agree(validator: Validator, data: bytes) -> None:
    """``canonical`` accepts exactly what ``decode`` accepts, naming the same field, and its
    bytes decode, unchecked, to the same event."""
    try:
        expected = validator.decode(data, now_ms=NOW_MS)
    except ContractViolation as violation:
        with pytest.raises(ContractViolation) as info:
            validator.canonical(data, now_ms=NOW_MS)
        assert info.value.field == violation.field
    else:
        assert decode_canonical(validator.canonical(data, now_ms=NOW_MS)) == expected


@pytest.mark.parametrize("payload", VALID_CASES.values(), ids=VALID_CASES.keys())
def test_canonical_agrees_on_valid_payloads(payload: dict[str, Any]):
    data = msgspec.json.encode(payload)
    agree(VALIDATOR, data)
    if isinstance(payload["ts"], int):
        assert VALIDATOR.canonical(data, now_ms=NOW_MS) is data  # no copy on the fast path


@pytest.mark.parametrize(
    "payload", [payload for _, payload, _ in INVALID_CASES], ids=[n for n, _, _ in INVALID_CASES]
)
def test_canonical_agrees_on_invalid_payloads(payload: Any):
    agree(VALIDATOR, msgspec.json.encode(payload))


def test_canonical_counts_metrics_and_tags_when_the_catalogue_exceeds_the_limits():
    tight = Validator(contract_settings(max_metrics=2, max_tags=2))
    for payload in (
        valid_payload(metrics={"cpu_pct": 1.0, "mem_pct": 2.0, "conns": 3}),
        valid_payload(metrics={"cpu_pct": 1.0, "mem_pct": 2.0}),
        valid_payload(tags={"tenant": "acme", "env": "prod", "az": "a"}),
        valid_payload(tags={"tenant": "acme", "env": "prod"}),
    ):
        agree(tight, msgspec.json.encode(payload))


METRIC_VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
    st.integers(-10, 200),
    st.sampled_from([0, 100, 100.0000001, -0.0, 1e308]),
    st.text(max_size=3),
)


@st.composite
def nearly_valid(draw: st.DrawFn) -> bytes:
    """Payloads close to valid: metric and tag maps, ids and times near their limits."""
    id_text = st.text(alphabet=string.ascii_letters + string.digits + "-_.:/ é", max_size=70)
    payload = valid_payload(
        event_id=draw(st.one_of(st.just("e-1"), id_text)),
        server_id=draw(st.one_of(st.just("srv-1"), id_text)),
        ts=draw(st.integers(NOW_MS - 7 * 86_400_000 - 2, NOW_MS + 300_002)),
        metrics=draw(st.dictionaries(FIELD_NAMES, METRIC_VALUES, max_size=9)),
        tags=draw(
            st.dictionaries(
                st.sampled_from((*TAG_KEYS, "x")), st.text(max_size=130), max_size=8
            ).map(lambda tags: tags if draw(st.booleans()) else {"tenant": "acme", **tags})
        ),
    )
    return _json_bytes(payload)


@given(
    st.one_of(
        nearly_valid(),
        payload_shaped().map(_json_bytes),
        JSON_LIKE.map(_json_bytes),
        st.binary(max_size=200),
    )
)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_canonical_agrees_with_decode(data: bytes):
    agree(VALIDATOR, data)
