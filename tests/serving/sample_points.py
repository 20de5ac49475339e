"""Samples for the serving tests' lakes: a few servers of one tenant, uniform values."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from fleetlens.simulator.lake import POINT_SCHEMA


def sample_points(
    start: datetime,
    *,
    hours: int,
    servers: Sequence[str],
    seed: int,
    tenant: str = "acme",
    metrics: Sequence[str] = ("cpu_pct",),
    interval_s: int = 10,
) -> pl.DataFrame:
    """``hours`` of samples from ``start`` every ``interval_s`` for each server and metric
    (:data:`POINT_SCHEMA`); servers alternate between the services ``api`` and ``db``."""
    rng = np.random.default_rng(seed)
    n = hours * 3600 // interval_s
    ts = [start + timedelta(seconds=interval_s * k) for k in range(n)]
    return pl.concat(
        pl.DataFrame(
            {
                "ts": ts,
                "server_id": server,
                "metric": metric,
                "value": rng.uniform(0, 100, n).round(3),
                "tenant": tenant,
                "region": "eu-west-1",
                "env": "prod",
                "service": ("api", "db")[index % 2],
                "cluster": "c1",
            }
        )
        for index, server in enumerate(servers)
        for metric in metrics
    ).cast(POINT_SCHEMA)  # type: ignore[arg-type]
