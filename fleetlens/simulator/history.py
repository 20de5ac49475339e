"""Simulated history written straight into a landing zone, vectorised one hour at a time."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from fleetlens.lake.landing import LANDING_SCHEMA, hour_partition, write_landing_file
from fleetlens.lake.paths import Lake
from fleetlens.simulator.fleet import METRICS, Fleet, event_ids

__all__ = ["HistoryStats", "history_hour_table", "write_history"]

_HOUR = 3600


@dataclass
class HistoryStats:
    """What ``simulate history`` wrote."""

    payloads: int = 0
    points: int = 0
    files: int = 0


def history_hour_table(
    fleet: Fleet, hour_start_s: int, *, interval_s: int, duplicate_fraction: float = 0.0
) -> pa.Table:
    """Landing rows of every reporting server for the hour starting at ``hour_start_s``.

    ``duplicate_fraction`` of the payloads appear twice (same ``event_id``, a later
    ``ingest_ts``), as an agent's retry would make them.
    """
    slots = np.arange(hour_start_s, hour_start_s + _HOUR, interval_s, dtype=np.int64)
    n = fleet.spec.servers
    values = fleet.sample(slots)
    ts_ms = fleet.timestamps_ms(slots, interval_s)
    keep = fleet.reporting(slots).ravel()
    server_idx = np.broadcast_to(np.arange(n, dtype=np.int64), ts_ms.shape).ravel()[keep]
    ts = ts_ms.ravel()[keep]
    points = np.stack([values[m].ravel()[keep] for m in METRICS], axis=1)

    if duplicate_fraction > 0:
        rng = np.random.default_rng([fleet.spec.seed, 7, hour_start_s])
        dup = np.flatnonzero(rng.random(ts.size) < duplicate_fraction)
        server_idx = np.concatenate([server_idx, server_idx[dup]])
        ts = np.concatenate([ts, ts[dup]])
        points = np.concatenate([points, points[dup]])
        delay_ms = np.concatenate([np.full(ts.size - dup.size, 1500), np.full(dup.size, 31_000)])
    else:
        delay_ms = np.full(ts.size, 1500)

    rows = ts.size
    tag_keys = ("tenant", "region", "env", "service", "cluster")
    # Arrow `take` from small per-server arrays instead of converting millions of Python strings.
    server_tags = pa.array([t[k] for t in fleet.tags for k in tag_keys], pa.string())
    tag_idx = (server_idx[:, None] * len(tag_keys) + np.arange(len(tag_keys))).ravel()
    metrics = pa.MapArray.from_arrays(
        np.arange(0, rows * len(METRICS) + 1, len(METRICS), dtype=np.int32),
        pa.array(METRICS, pa.string()).take(np.tile(np.arange(len(METRICS)), rows)),
        pa.array(points.ravel(), pa.float64()),
    )
    tags = pa.MapArray.from_arrays(
        np.arange(0, rows * len(tag_keys) + 1, len(tag_keys), dtype=np.int32),
        pa.array(tag_keys, pa.string()).take(np.tile(np.arange(len(tag_keys)), rows)),
        server_tags.take(tag_idx),
    )
    return pa.Table.from_arrays(
        [
            pa.array(event_ids(fleet.spec.seed, server_idx, ts)).cast(pa.string()),
            pa.array(fleet.server_ids, pa.string()).take(server_idx),
            pa.array(ts, pa.timestamp("ms", tz="UTC")),
            metrics,
            tags,
            pa.nulls(rows, pa.int32()),
            pa.nulls(rows, pa.int64()),
            pa.array(ts + delay_ms, pa.timestamp("ms", tz="UTC")),
        ],
        schema=LANDING_SCHEMA,
    )


def write_history(
    fleet: Fleet,
    lake: Lake,
    *,
    start_s: int,
    end_s: int,
    interval_s: int = 10,
    landing_dir: str | None = None,
    duplicate_fraction: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> HistoryStats:
    """Write the fleet's samples for ``[start_s, end_s)`` (hour-aligned) into the landing zone.

    Files are named after the seed and hour, so a rerun replaces rather than adds.

    Args:
        fleet: The simulated fleet.
        lake: The lake whose landing zone receives the files (unless ``landing_dir``).
        start_s, end_s: Epoch seconds, rounded outwards to whole hours.
        interval_s: Sampling interval of the agents.
        landing_dir: Another landing folder (a path for ``lake.fs``) to write into.
        duplicate_fraction: Share of payloads written twice.
        progress: Called with the number of hours done after each hour.
    """
    if _HOUR % interval_s:
        raise ValueError("interval_s must divide an hour")
    base = landing_dir or lake.path(Lake.LANDING_METRICS)
    stats = HistoryStats()
    name = f"part-history-s{fleet.spec.seed}-n{fleet.spec.servers}.parquet"

    def one_hour(hour_start: int) -> int:
        table = history_hour_table(
            fleet, hour_start, interval_s=interval_s, duplicate_fraction=duplicate_fraction
        )
        write_landing_file(lake, f"{base}/{hour_partition(hour_start * 1000)}/{name}", table)
        return int(table.num_rows)

    hours = range(start_s // _HOUR * _HOUR, end_s, _HOUR)
    # Two hours in flight: Parquet encoding and most numpy work release the GIL.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for rows in pool.map(one_hour, hours):
            stats.payloads += rows
            stats.points += rows * len(METRICS)
            stats.files += 1
            if progress is not None:
                progress(1)
    return stats
