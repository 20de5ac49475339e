"""A simulated stream in arrival order, computed rather than waited for.

For tests and benchmarks of the consumers: the payloads of ``[start_s, end_s)`` with each one's
arrival time (event time + network delay, plus the injected lateness, reordering and
duplicates), sorted by arrival. Deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetlens.simulator.fleet import Fleet
from fleetlens.simulator.live import FaultSpec, build_payloads

__all__ = ["NO_FAULTS", "Arrival", "simulated_stream"]

NO_FAULTS = FaultSpec()


@dataclass(frozen=True, slots=True)
class Arrival:
    """One payload and when it reaches the collector (epoch ms)."""

    arrival_ms: int
    payload: dict[str, Any]
    duplicate: bool = False
    late: bool = False


def simulated_stream(
    fleet: Fleet,
    *,
    start_s: int,
    end_s: int,
    interval_s: int = 10,
    faults: FaultSpec = NO_FAULTS,
) -> list[Arrival]:
    """Every payload of the fleet in ``[start_s, end_s)``, in arrival order.

    Args:
        fleet: The simulated fleet.
        start_s, end_s: Event-time range, epoch seconds.
        interval_s: Sampling interval.
        faults: ``late`` payloads are delayed by an exponential delay of mean ``late_mean_s``;
            ``out_of_order`` ones by up to two intervals; ``duplicates`` are sent again up to
            30 s later. ``malformed`` and ``raw_malformed`` are not used here.
    """
    rng = np.random.default_rng([fleet.spec.seed, 17, start_s])
    arrivals: list[Arrival] = []
    for slot in range(start_s // interval_s * interval_s, end_s, interval_s):
        payloads = build_payloads(fleet, slot, interval_s)
        n = len(payloads)
        base = rng.uniform(200, 2_000, n)
        kind = rng.random(n)
        late = kind < faults.late
        reorder = (kind >= faults.late) & (kind < faults.late + faults.out_of_order)
        delay = base + np.where(late, rng.exponential(faults.late_mean_s * 1000, n), 0.0)
        delay += np.where(reorder, rng.uniform(0, 2 * interval_s * 1000, n), 0.0)
        again = rng.random(n) < faults.duplicates
        extra = rng.uniform(0, 30_000, n)
        for i, payload in enumerate(payloads):
            arrival = int(payload["ts"] + delay[i])
            arrivals.append(Arrival(arrival, payload, late=bool(late[i])))
            if again[i]:
                arrivals.append(Arrival(arrival + int(extra[i]), payload, duplicate=True))
    arrivals.sort(key=lambda a: a.arrival_ms)
    return arrivals
