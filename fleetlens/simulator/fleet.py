"""A deterministic model of a server fleet's telemetry, vectorised over servers and time.

Every value is a pure function of ``(seed, server, time slot)``: the live simulator and the
history writer produce the same sample for the same server and instant, whatever order or
chunking they use. The model has diurnal and weekly seasonality, noise, slow disk growth,
CPU incidents (with latency spikes) and servers that go silent for a while.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from fleetlens.config import SimulatorSettings

__all__ = ["METRICS", "Fleet", "FleetSpec", "event_ids"]

#: The metrics every simulated agent reports, in this order.
METRICS = ("cpu_pct", "mem_pct", "disk_pct", "net_in_bps", "net_out_bps", "conns")

_DAY = 86_400
_WEEK = 7 * _DAY
_CROCKFORD = np.frombuffer(b"0123456789ABCDEFGHJKMNPQRSTVWXYZ", dtype=np.uint8)
_REGION_UTC_OFFSET_H = {"us-east-1": -5, "us-west-2": -8, "eu-west-1": 0, "ap-south-1": 5.5}

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class FleetSpec:
    """The shape of a simulated fleet.

    Attributes:
        servers: How many servers.
        seed: Everything random derives from it.
        tenants, regions, envs, services: Tag values servers are spread over.
        clusters_per_service: Clusters ``<service>-<n>`` per service.
        anchor_s: Epoch second at which each server's disk is at its starting level (disks
            grow linearly around it); the history writer and the live simulator share it.
        incidents_per_day: Expected CPU incidents per server per day.
        silences_per_day: Expected silent spells per server per day.
        scripted_incidents: ``(server index, start_s, end_s)`` spells on top of the random
            ones, with the CPU saturated (a demo's incident at a known time).
        scripted_silences: ``(server index, start_s, end_s)`` spells without a sample.
    """

    servers: int
    seed: int = 42
    tenants: tuple[str, ...] = ("acme", "globex", "initech")
    regions: tuple[str, ...] = ("us-east-1", "us-west-2", "eu-west-1")
    envs: tuple[str, ...] = ("prod", "staging")
    services: tuple[str, ...] = ("api", "web", "db", "cache", "queue", "search")
    clusters_per_service: int = 3
    anchor_s: int = 1_793_491_200  # 2026-11-01T00:00:00Z
    incidents_per_day: float = 0.3
    silences_per_day: float = 0.2
    scripted_incidents: tuple[tuple[int, int, int], ...] = ()
    scripted_silences: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def from_settings(
        cls, settings: SimulatorSettings, *, servers: int, seed: int, anchor_s: int
    ) -> FleetSpec:
        """A spec with the tag values of the ``simulator`` settings."""
        return cls(
            servers=servers,
            seed=seed,
            tenants=settings.tenants,
            regions=settings.regions,
            envs=settings.envs,
            services=settings.services,
            clusters_per_service=settings.clusters_per_service,
            anchor_s=anchor_s,
        )


class Fleet:
    """Per-server traits drawn once from the seed, and samples computed from them."""

    def __init__(self, spec: FleetSpec) -> None:
        if spec.servers < 1:
            raise ValueError("a fleet needs at least one server")
        self.spec = spec
        n = spec.servers
        rng = np.random.default_rng([spec.seed, 0])
        self.server_ids = np.array([f"srv-{i:05d}" for i in range(n)], dtype=object)
        self.tenant_idx = rng.integers(0, len(spec.tenants), n)
        self.region_idx = rng.integers(0, len(spec.regions), n)
        self.env_idx = (rng.random(n) < 0.25).astype(np.int64) % max(len(spec.envs), 1)
        self.service_idx = rng.integers(0, len(spec.services), n)
        self.cluster_no = rng.integers(1, spec.clusters_per_service + 1, n)
        self.cpu_base = rng.uniform(15, 45, n)
        self.cpu_amp = rng.uniform(5, 25, n)
        self.mem_base = rng.uniform(35, 70, n)
        self.disk_start = rng.uniform(20, 60, n)
        # Disk growth in percentage points per day: per service, with per-server spread.
        service_growth = np.random.default_rng([spec.seed, 1]).uniform(
            0.05, 0.6, len(spec.services)
        )
        self.disk_growth_per_day = service_growth[self.service_idx] * rng.uniform(0.8, 1.2, n)
        self.net_base = rng.lognormal(np.log(2e6), 0.8, n)
        self.conns_base = rng.uniform(50, 600, n)
        offsets = np.array([_REGION_UTC_OFFSET_H.get(r, 0.0) for r in spec.regions])
        self.utc_offset_s = offsets[self.region_idx] * 3600
        # Agents do not sample in lockstep: each has its own phase within the interval.
        self.phase_ms = rng.integers(0, 10_000, n)

    @cached_property
    def tags(self) -> list[dict[str, str]]:
        """Each server's tags, in server order."""
        s = self.spec
        return [
            {
                "tenant": s.tenants[self.tenant_idx[i]],
                "region": s.regions[self.region_idx[i]],
                "env": s.envs[self.env_idx[i]],
                "service": s.services[self.service_idx[i]],
                "cluster": f"{s.services[self.service_idx[i]]}-{self.cluster_no[i]}",
            }
            for i in range(s.servers)
        ]

    def timestamps_ms(self, slot_s: Ints, interval_s: int) -> Ints:
        """Event times (epoch ms) of each server's sample in each slot: shape (slots, servers)."""
        phase = (self.phase_ms % (interval_s * 1000)).astype(np.int64)
        return slot_s[:, None].astype(np.int64) * 1000 + phase[None, :]

    def sample(self, slot_s: Ints) -> dict[str, Floats]:
        """Every metric for every server at each slot start: arrays of shape (slots, servers)."""
        t = slot_s.astype(np.float64)[:, None]
        local = t + self.utc_offset_s[None, :]
        day_phase = (local % _DAY) / _DAY
        # Busiest mid-afternoon, quietest before dawn; weekends at about 60 %.
        diurnal = np.sin(2 * np.pi * (day_phase - 0.375))
        weekday = ((local // _DAY + 3) % 7) < 5  # 1970-01-01 was a Thursday
        weekly = np.where(weekday, 1.0, 0.6)
        noise = self._noise(slot_s)
        incident = self._windows(
            slot_s, salt=2, per_day=self.spec.incidents_per_day, min_s=300, max_s=1800
        )

        load = (1 + 0.5 * diurnal) * weekly
        cpu = self.cpu_base * weekly + self.cpu_amp * diurnal * weekly + 3 * noise[..., 0]
        cpu = np.where(incident, np.maximum(cpu, 0) + 45, cpu)
        saturated = self._scripted(slot_s, self.spec.scripted_incidents)
        cpu = np.where(saturated, 97 + noise[..., 0], cpu)
        mem = self.mem_base + 6 * diurnal * weekly + 1.5 * noise[..., 1] + np.where(incident, 12, 0)
        days = (t - self.spec.anchor_s) / _DAY
        disk = self.disk_start + self.disk_growth_per_day * days + 0.05 * noise[..., 2]
        net_in = self.net_base * load * np.exp(0.15 * noise[..., 3])
        net_out = 0.7 * self.net_base * load * np.exp(0.15 * noise[..., 4])
        conns = np.round(self.conns_base * load + 10 * noise[..., 5])
        return {
            "cpu_pct": np.clip(cpu, 0, 100),
            "mem_pct": np.clip(mem, 0, 100),
            "disk_pct": np.clip(disk, 0, 100),
            "net_in_bps": np.maximum(net_in, 0),
            "net_out_bps": np.maximum(net_out, 0),
            "conns": np.maximum(conns, 0),
        }

    def reporting(self, slot_s: Ints) -> npt.NDArray[np.bool_]:
        """Whether each server reports in each slot (False while it is silent)."""
        silent = self._windows(
            slot_s, salt=3, per_day=self.spec.silences_per_day, min_s=300, max_s=3600
        )
        return ~(silent | self._scripted(slot_s, self.spec.scripted_silences))

    def in_incident(self, slot_s: Ints) -> npt.NDArray[np.bool_]:
        """Whether each server is in a CPU incident at each slot."""
        random = self._windows(
            slot_s, salt=2, per_day=self.spec.incidents_per_day, min_s=300, max_s=1800
        )
        return random | self._scripted(slot_s, self.spec.scripted_incidents)

    def _scripted(
        self, slot_s: Ints, spells: tuple[tuple[int, int, int], ...]
    ) -> npt.NDArray[np.bool_]:
        """True where a scripted spell covers a server's slot."""
        out = np.zeros((len(slot_s), self.spec.servers), dtype=bool)
        for server, start_s, end_s in spells:
            out[:, server] |= (slot_s >= start_s) & (slot_s < end_s)
        return out

    def _noise(self, slot_s: Ints) -> Floats:
        out = np.empty((len(slot_s), self.spec.servers, len(METRICS)))
        for row, slot in enumerate(slot_s):
            out[row] = np.random.default_rng([self.spec.seed, 1000, int(slot)]).standard_normal(
                (self.spec.servers, len(METRICS))
            )
        return out

    def _windows(
        self, slot_s: Ints, *, salt: int, per_day: float, min_s: int, max_s: int
    ) -> npt.NDArray[np.bool_]:
        """Spells (incidents, silences) drawn per server and day: True inside one."""
        out = np.zeros((len(slot_s), self.spec.servers), dtype=bool)
        if per_day <= 0 or len(slot_s) == 0:
            return out
        # Up to `draws` spells per server and day, each with probability per_day / draws, so
        # that the expected count is per_day even above one a day.
        draws = max(1, math.ceil(per_day))
        first, last = int(slot_s.min()) // _DAY - 1, int(slot_s.max()) // _DAY
        for day in range(first, last + 1):
            rng = np.random.default_rng([self.spec.seed, salt, day])
            for _ in range(draws):
                hit = rng.random(self.spec.servers) < per_day / draws
                starts = day * _DAY + rng.integers(0, _DAY, self.spec.servers)
                ends = starts + rng.integers(min_s, max_s, self.spec.servers)
                servers = np.flatnonzero(hit)
                if servers.size:
                    t = slot_s[:, None]
                    out[:, servers] |= (t >= starts[servers]) & (t < ends[servers])
        return out


def _splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def event_ids(seed: int, server_idx: Ints, ts_ms: Ints) -> npt.NDArray[np.bytes_]:
    """Deterministic ULIDs (ASCII bytes, 26 characters): the time part is ``ts_ms``, the random
    part a hash of ``(seed, server, ts_ms)``, so the same sample always has the same id."""
    ts = ts_ms.astype(np.uint64).ravel()
    key = _splitmix64(np.uint64(seed) * np.uint64(1_000_003) + server_idx.astype(np.uint64).ravel())
    r1 = _splitmix64(key ^ ts)
    r2 = _splitmix64(r1 ^ np.uint64(0xD1B54A32D192ED03))
    hi = (ts << np.uint64(16)) | (r1 >> np.uint64(48))  # 48 time bits, 16 random bits
    lo = r2  # 64 random bits
    chars = np.empty((ts.size, 26), dtype=np.uint8)
    for k in range(26):
        shift = 5 * (25 - k)
        if shift >= 64:
            bits = hi >> np.uint64(shift - 64)
        elif shift + 5 <= 64:
            bits = lo >> np.uint64(shift)
        else:
            bits = (lo >> np.uint64(shift)) | (hi << np.uint64(64 - shift))
        chars[:, k] = _CROCKFORD[(bits & np.uint64(31)).astype(np.intp)]
    return chars.view("S26").ravel()
