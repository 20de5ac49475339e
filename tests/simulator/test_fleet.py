"""Unit tests of the simulated fleet (fleetlens.simulator.fleet) and the live payload helpers."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from ulid import ULID

from fleetlens.config import load_settings
from fleetlens.contract import ContractViolation, Validator
from fleetlens.simulator.fleet import METRICS, Fleet, FleetSpec, event_ids
from fleetlens.simulator.live import _RAW_MALFORMED, build_payloads, corrupt

DAY = 86_400
ANCHOR = 1_793_491_200  # 2026-11-01T00:00:00Z, a Sunday
MONDAY = ANCHOR + DAY
VALIDATOR = Validator(load_settings("base").contract)


def slots(start: int, stop: int, step: int) -> np.ndarray:
    return np.arange(start, stop, step, dtype=np.int64)


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet(FleetSpec(servers=40, seed=11, anchor_s=ANCHOR))


# -- determinism -------------------------------------------------------------------------------


def test_same_seed_same_values_and_ids():
    spec = FleetSpec(servers=25, seed=5, anchor_s=ANCHOR)
    times = slots(MONDAY, MONDAY + 2 * DAY, 600)
    a, b = Fleet(spec), Fleet(spec)

    for metric in METRICS:
        np.testing.assert_array_equal(a.sample(times)[metric], b.sample(times)[metric])
    np.testing.assert_array_equal(a.reporting(times), b.reporting(times))
    np.testing.assert_array_equal(a.in_incident(times), b.in_incident(times))
    assert a.tags == b.tags
    ts_a, ts_b = a.timestamps_ms(times, 10), b.timestamps_ms(times, 10)
    np.testing.assert_array_equal(ts_a, ts_b)
    idx = np.broadcast_to(np.arange(25), ts_a.shape)
    np.testing.assert_array_equal(event_ids(5, idx, ts_a), event_ids(5, idx, ts_b))
    assert build_payloads(a, MONDAY, 10) == build_payloads(b, MONDAY, 10)


def test_different_seed_different_values_and_ids():
    times = slots(MONDAY, MONDAY + DAY, 600)
    a = Fleet(FleetSpec(servers=25, seed=5, anchor_s=ANCHOR))
    b = Fleet(FleetSpec(servers=25, seed=6, anchor_s=ANCHOR))

    assert not np.array_equal(a.sample(times)["cpu_pct"], b.sample(times)["cpu_pct"])
    ts = np.full(25, MONDAY * 1000, dtype=np.int64)
    ids_a = set(event_ids(5, np.arange(25), ts).tolist())
    ids_b = set(event_ids(6, np.arange(25), ts).tolist())
    assert not ids_a & ids_b


@pytest.mark.parametrize("cuts", [[1], [7, 8], [100, 250, 251], list(range(0, 300, 37))])
def test_chunking_does_not_change_anything(fleet: Fleet, cuts: list[int]):
    times = slots(MONDAY - 3600, MONDAY + 3 * DAY, 863)  # crosses day boundaries
    whole = fleet.sample(times)
    chunks = np.split(times, cuts)

    parts = [fleet.sample(chunk) for chunk in chunks]
    for metric in METRICS:
        np.testing.assert_array_equal(
            np.concatenate([part[metric] for part in parts]), whole[metric]
        )
    np.testing.assert_array_equal(
        np.concatenate([fleet.reporting(chunk) for chunk in chunks]), fleet.reporting(times)
    )
    np.testing.assert_array_equal(
        np.concatenate([fleet.in_incident(chunk) for chunk in chunks]), fleet.in_incident(times)
    )


def test_one_slot_at_a_time_matches_the_batch():
    fleet = Fleet(
        FleetSpec(servers=30, seed=3, anchor_s=ANCHOR, incidents_per_day=4, silences_per_day=4)
    )
    times = slots(MONDAY, MONDAY + DAY, 1800)

    batch = fleet.in_incident(times)
    silent = ~fleet.reporting(times)
    cpu = fleet.sample(times)["cpu_pct"]

    assert batch.any() and silent.any()  # the comparison below covers both states
    for row, slot in enumerate(times):
        one = np.array([slot])
        np.testing.assert_array_equal(fleet.in_incident(one)[0], batch[row])
        np.testing.assert_array_equal(~fleet.reporting(one)[0], silent[row])
        np.testing.assert_array_equal(fleet.sample(one)["cpu_pct"][0], cpu[row])


def test_event_id_depends_only_on_seed_server_and_time():
    ts = np.array([MONDAY * 1000 + 17, MONDAY * 1000 + 17, MONDAY * 1000 + 10_017])
    servers = np.array([3, 4, 3])

    ids = event_ids(9, servers, ts)
    alone = event_ids(9, np.array([3]), np.array([MONDAY * 1000 + 17]))

    assert ids[0] == alone[0]
    assert len(set(ids.tolist())) == 3


def test_fleet_needs_a_server():
    with pytest.raises(ValueError, match="at least one server"):
        Fleet(FleetSpec(servers=0))


# -- shapes, ids and tags ----------------------------------------------------------------------


def test_shapes(fleet: Fleet):
    times = slots(MONDAY, MONDAY + 600, 60)

    values = fleet.sample(times)

    assert tuple(values) == METRICS
    assert all(array.shape == (10, 40) for array in values.values())
    assert fleet.reporting(times).shape == (10, 40)
    assert fleet.in_incident(times).dtype == np.bool_
    assert fleet.sample(times[:0])["cpu_pct"].shape == (0, 40)
    assert fleet.reporting(times[:0]).shape == (0, 40)


@pytest.mark.parametrize("interval_s", [1, 5, 10, 60])
def test_timestamps_fall_inside_their_slot(fleet: Fleet, interval_s: int):
    times = slots(MONDAY, MONDAY + 50 * interval_s, interval_s)

    ts = fleet.timestamps_ms(times, interval_s)

    assert ts.shape == (50, 40)
    start = times[:, None] * 1000
    assert ((ts >= start) & (ts < start + interval_s * 1000)).all()
    # Each agent keeps its phase from one slot to the next.
    assert (np.diff(ts, axis=0) == interval_s * 1000).all()


def test_event_ids_are_ulids_carrying_the_timestamp(fleet: Fleet):
    times = slots(MONDAY, MONDAY + 3600, 10)
    ts = fleet.timestamps_ms(times, 10)
    idx = np.broadcast_to(np.arange(40), ts.shape)

    ids = event_ids(fleet.spec.seed, idx, ts)

    assert ids.shape == (ts.size,)
    texts = [raw.decode() for raw in ids]
    assert len(set(texts)) == ts.size
    for text, millis in zip(texts, ts.ravel().tolist(), strict=True):
        ulid = ULID.from_str(text)
        assert ulid.milliseconds == millis
        assert str(ulid) == text


def test_event_ids_at_the_extremes_of_the_ulid_range():
    ts = np.array([0, 1, 2**47, 2**48 - 1], dtype=np.int64)

    ids = event_ids(2**32, np.arange(4), ts)

    assert [ULID.from_str(raw.decode()).milliseconds for raw in ids] == ts.tolist()
    assert ids[0].startswith(b"0000000000")
    assert ids[3].startswith(b"7ZZZZZZZZZ")


def test_tags(fleet: Fleet):
    spec = fleet.spec

    assert len(fleet.tags) == spec.servers
    for tags in fleet.tags:
        assert set(tags) == {"tenant", "region", "env", "service", "cluster"}
        assert tags["tenant"] in spec.tenants
        assert tags["region"] in spec.regions
        assert tags["env"] in spec.envs
        assert tags["service"] in spec.services
        service, _, number = tags["cluster"].rpartition("-")
        assert service == tags["service"]
        assert 1 <= int(number) <= spec.clusters_per_service
    # Forty servers are spread over the values, not all on one.
    assert len({t["tenant"] for t in fleet.tags}) == len(spec.tenants)
    assert len({t["env"] for t in fleet.tags}) == 2


def test_spec_from_settings():
    simulator = load_settings("base").simulator

    spec = FleetSpec.from_settings(simulator, servers=7, seed=1, anchor_s=ANCHOR)

    assert spec.tenants == simulator.tenants
    assert spec.services == simulator.services
    assert spec.clusters_per_service == simulator.clusters_per_service
    assert (spec.servers, spec.seed, spec.anchor_s) == (7, 1, ANCHOR)


# -- values ------------------------------------------------------------------------------------


def test_values_respect_their_ranges():
    fleet = Fleet(FleetSpec(servers=60, seed=2, anchor_s=ANCHOR, incidents_per_day=3))
    # Weeks before and long after the anchor (disks full), every hour of the day.
    times = np.concatenate(
        [
            slots(ANCHOR - 30 * DAY, ANCHOR + 400 * DAY, 7 * DAY + 3_607),
            slots(MONDAY, MONDAY + DAY, 300),
        ]
    )

    values = fleet.sample(times)

    for metric, array in values.items():
        assert np.isfinite(array).all(), metric
        assert (array >= 0).all(), metric
    for metric in ("cpu_pct", "mem_pct", "disk_pct"):
        assert (values[metric] <= 100).all(), metric
    np.testing.assert_array_equal(values["conns"], np.round(values["conns"]))
    assert values["cpu_pct"].max() > 90  # incidents reach the top of the range
    assert values["disk_pct"].max() == 100  # disks fill up in the end


def test_every_payload_passes_the_contract():
    fleet = Fleet(
        FleetSpec(
            servers=80,
            seed=8,
            anchor_s=ANCHOR,
            incidents_per_day=3,
            silences_per_day=2,
            regions=("us-east-1", "us-west-2", "eu-west-1", "ap-south-1"),
        )
    )
    checked = 0
    for slot in range(ANCHOR - 20 * DAY, ANCHOR + 200 * DAY, 3 * DAY + 3_607):
        slot -= slot % 10
        for payload in build_payloads(fleet, slot, 10):
            event = VALIDATOR.convert(payload, now_ms=slot * 1000, tenant=payload["tags"]["tenant"])
            raw = json.dumps(payload).encode()
            assert VALIDATOR.decode(raw, now_ms=slot * 1000 + 10_000) == event
            assert ULID.from_str(event.event_id).milliseconds == event.ts
            checked += 1
    assert checked > 4_000


def test_build_payloads_reflects_the_model(fleet: Fleet):
    slot = MONDAY + 12 * 3600
    one = np.array([slot])

    payloads = build_payloads(fleet, slot, 10)

    reporting = np.flatnonzero(fleet.reporting(one)[0])
    assert [p["server_id"] for p in payloads] == [f"srv-{i:05d}" for i in reporting]
    values = fleet.sample(one)
    ts = fleet.timestamps_ms(one, 10)[0]
    for payload, i in zip(payloads, reporting, strict=True):
        assert payload["schema_version"] == 1
        assert payload["ts"] == ts[i]
        assert payload["tags"] == fleet.tags[i]
        assert list(payload["metrics"]) == list(METRICS)
        for metric in METRICS:
            assert payload["metrics"][metric] == pytest.approx(values[metric][0, i], abs=5e-4)
        assert (
            payload["event_id"]
            == event_ids(fleet.spec.seed, np.array([i]), np.array([ts[i]]))[0].decode()
        )


def _hourly_mean(fleet: Fleet, metric: str, days: range) -> np.ndarray:
    times = np.concatenate([slots(MONDAY + d * DAY, MONDAY + (d + 1) * DAY, 600) for d in days])
    values = fleet.sample(times)[metric].mean(axis=1)
    hours = (times % DAY) // 3600
    return np.array([values[hours == h].mean() for h in range(24)])


def test_diurnal_seasonality():
    fleet = Fleet(
        FleetSpec(servers=100, seed=4, anchor_s=ANCHOR, regions=("eu-west-1",), incidents_per_day=0)
    )

    cpu = _hourly_mean(fleet, "cpu_pct", range(5))  # Monday to Friday, UTC = local

    busiest, quietest = int(cpu.argmax()), int(cpu.argmin())
    assert 13 <= busiest <= 17
    assert 1 <= quietest <= 5
    assert cpu[busiest] - cpu[quietest] > 10
    net = _hourly_mean(fleet, "net_in_bps", range(5))
    assert net[15] > 1.5 * net[3]


def test_seasonality_follows_the_region_clock():
    fleet = Fleet(
        FleetSpec(servers=100, seed=4, anchor_s=ANCHOR, regions=("us-west-2",), incidents_per_day=0)
    )

    cpu = _hourly_mean(fleet, "cpu_pct", range(5))

    # UTC-8: mid-afternoon local is late evening UTC.
    assert int(cpu.argmax()) in (21, 22, 23, 0, 1)
    assert cpu[23] > cpu[11]


def test_weekends_are_quieter():
    fleet = Fleet(
        FleetSpec(servers=100, seed=4, anchor_s=ANCHOR, regions=("eu-west-1",), incidents_per_day=0)
    )

    weekdays = _hourly_mean(fleet, "cpu_pct", range(5)).mean()
    weekend = _hourly_mean(fleet, "cpu_pct", range(5, 7)).mean()  # Saturday, Sunday

    assert weekend < 0.8 * weekdays


def test_disks_grow_over_days():
    fleet = Fleet(FleetSpec(servers=50, seed=6, anchor_s=ANCHOR))
    daily = np.array(
        [
            fleet.sample(slots(ANCHOR + d * DAY, ANCHOR + (d + 1) * DAY, 900))["disk_pct"].mean(
                axis=0
            )
            for d in range(10)
        ]
    )  # (days, servers)

    assert (fleet.disk_growth_per_day > 0).all()
    assert (np.diff(daily, axis=0) > 0).all()
    slope = (daily[-1] - daily[0]) / 9
    np.testing.assert_allclose(slope, fleet.disk_growth_per_day, atol=0.02)


def _onsets(flags: np.ndarray) -> int:
    """How many spells start in a (slots, servers) boolean array."""
    starts = flags[1:] & ~flags[:-1]
    return int(starts.sum() + flags[0].sum())


@pytest.mark.parametrize(("incidents", "silences"), [(0.3, 0.2), (2.0, 1.5)])
def test_incidents_and_silences_happen_at_the_configured_rate(incidents: float, silences: float):
    servers, days, step = 150, 15, 120
    fleet = Fleet(
        FleetSpec(
            servers=servers,
            seed=21,
            anchor_s=ANCHOR,
            incidents_per_day=incidents,
            silences_per_day=silences,
        )
    )
    times = slots(ANCHOR, ANCHOR + days * DAY, step)

    in_incident = fleet.in_incident(times)
    silent = ~fleet.reporting(times)

    assert _onsets(in_incident) / (servers * days) == pytest.approx(incidents, rel=0.2)
    assert _onsets(silent) / (servers * days) == pytest.approx(silences, rel=0.2)
    # Spells last 5 to 30 minutes (incidents) or 5 to 60 minutes (silences).
    assert 5 * 60 < in_incident.sum() * step / _onsets(in_incident) < 35 * 60
    assert 5 * 60 < silent.sum() * step / _onsets(silent) < 65 * 60


def test_no_incidents_or_silences_when_disabled():
    fleet = Fleet(
        FleetSpec(servers=50, seed=1, anchor_s=ANCHOR, incidents_per_day=0, silences_per_day=0)
    )
    times = slots(ANCHOR, ANCHOR + 5 * DAY, 300)

    assert not fleet.in_incident(times).any()
    assert fleet.reporting(times).all()


def test_incidents_show_in_cpu_and_memory():
    fleet = Fleet(FleetSpec(servers=100, seed=13, anchor_s=ANCHOR, incidents_per_day=2))
    times = slots(MONDAY, MONDAY + 4 * DAY, 120)

    incident = fleet.in_incident(times)
    values = fleet.sample(times)

    assert incident.any()
    assert values["cpu_pct"][incident].mean() > values["cpu_pct"][~incident].mean() + 30
    assert values["mem_pct"][incident].mean() > values["mem_pct"][~incident].mean() + 8


def test_silent_servers_send_nothing():
    fleet = Fleet(FleetSpec(servers=60, seed=17, anchor_s=ANCHOR, silences_per_day=6))
    times = slots(MONDAY, MONDAY + DAY, 600)
    reporting = fleet.reporting(times)
    row = int(np.argmax((~reporting).sum(axis=1)))  # the slot with most silent servers
    slot = int(times[row])

    payloads = build_payloads(fleet, slot, 10)

    assert (~reporting[row]).sum() > 0
    assert len(payloads) == reporting[row].sum()
    silent_ids = {f"srv-{i:05d}" for i in np.flatnonzero(~reporting[row])}
    assert not silent_ids & {p["server_id"] for p in payloads}


# -- fault injection ---------------------------------------------------------------------------

CORRUPTED_FIELDS = [
    "metrics.cpu_pct",
    "server_id",
    "metrics.bogus_metric",
    "ts",
    "metrics.mem_pct",
    "tags.owner",
    "ts",
    "schema_version",
]


@pytest.mark.parametrize(("choice", "field"), list(enumerate(CORRUPTED_FIELDS)))
def test_every_corruption_is_rejected(fleet: Fleet, choice: int, field: str):
    payload = build_payloads(fleet, MONDAY, 10)[0]
    original = json.dumps(payload)
    now_ms = payload["ts"] + 2_000

    broken = corrupt(payload, choice)

    assert json.dumps(payload) == original  # the input is left alone
    assert broken != payload
    for tenant in (None, payload["tags"]["tenant"]):
        with pytest.raises(ContractViolation) as info:
            VALIDATOR.convert(broken, now_ms=now_ms, tenant=tenant)
        assert info.value.field == field
    with pytest.raises(ContractViolation) as raw:
        VALIDATOR.decode(json.dumps(broken).encode(), now_ms=now_ms)
    assert raw.value.field == field
    # `choice` wraps around the variants.
    assert corrupt(payload, choice + len(CORRUPTED_FIELDS)) == broken


def test_corruptions_cover_distinct_variants(fleet: Fleet):
    payload = build_payloads(fleet, MONDAY, 10)[0]

    variants = {json.dumps(corrupt(payload, choice), sort_keys=True) for choice in range(8)}

    assert len(variants) == 8
    assert corrupt(payload, 8) == corrupt(payload, 0)


@pytest.mark.parametrize("raw", _RAW_MALFORMED)
def test_raw_malformed_records_are_rejected(raw: bytes):
    with pytest.raises(ContractViolation):
        VALIDATOR.decode(raw, now_ms=int(datetime(2026, 11, 2, tzinfo=UTC).timestamp() * 1000))


def test_scripted_spells_saturate_the_cpu_and_silence_a_server_at_known_times() -> None:
    start = 1_793_491_200
    fleet = Fleet(
        FleetSpec(
            servers=5,
            incidents_per_day=0,
            silences_per_day=0,
            scripted_incidents=((1, start + 60, start + 180),),
            scripted_silences=((3, start + 30, start + 90),),
        )
    )
    times = np.arange(start, start + 240, 10)
    cpu = fleet.sample(times)["cpu_pct"]
    hot = (times >= start + 60) & (times < start + 180)
    assert (cpu[hot, 1] > 90).all() and (cpu[~hot, 1] < 90).all()
    assert (fleet.in_incident(times)[:, 1] == hot).all()
    silent = (times >= start + 30) & (times < start + 90)
    assert (fleet.reporting(times)[:, 3] == ~silent).all()
    assert fleet.reporting(times)[:, [0, 1, 2, 4]].all()
