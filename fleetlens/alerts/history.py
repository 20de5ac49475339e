"""The ``alerts`` Delta table: the history of every alert, for notebooks, Grafana and audits.

One row per record of ``fleet.alerts.v1`` (a transition or a notification), with the
channels it was delivered to and those given up on; upserted on
:data:`~fleetlens.lake.schemas.ALERTS_KEY`, so records replayed after a restart leave one row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set

import msgspec
import pyarrow as pa

from fleetlens.alerts.engine import AlertEvent
from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import ALERTS_KEY, ALERTS_SCHEMA, TAG_COLUMNS

__all__ = ["ALERTS_TABLE", "AlertHistory"]

ALERTS_TABLE = "alerts"


class AlertHistory:
    """Writes alert records to the ``alerts`` table."""

    def __init__(self, lake: Lake) -> None:
        self._lake = lake
        delta.ensure_table(
            lake,
            ALERTS_TABLE,
            schema=ALERTS_SCHEMA,
            description="Alert transitions and notifications (fleet.alerts.v1), with delivery",
        )

    def record(
        self,
        events: Sequence[AlertEvent],
        *,
        delivered: Mapping[str, object],
        failed: Set[str],
    ) -> None:
        """Upsert ``events``; ``delivered`` and ``failed`` hold ``key|channel`` entries."""
        if not events:
            return
        rows = [_row(e, delivered, failed) for e in events]
        table = pa.Table.from_pylist(rows, schema=ALERTS_SCHEMA)
        # Alerts are rare next to samples: the merge reads the whole table, which stays small.
        delta.upsert(self._lake, ALERTS_TABLE, table, key=ALERTS_KEY)


def _us(ms: int | None) -> int | None:
    return None if ms is None else ms * 1000


def _row(event: AlertEvent, delivered: Mapping[str, object], failed: Set[str]) -> dict[str, object]:
    key = event.idempotency_key
    return {
        "at": _us(event.at),
        "alert_id": event.alert_id,
        "rule": event.rule,
        "severity": event.severity,
        "change": event.change,
        "state": event.state,
        "server_id": event.labels.get("server"),
        **{tag: event.labels.get(tag) for tag in TAG_COLUMNS},
        "labels": msgspec.json.encode(event.labels).decode(),
        "value": event.value,
        "started_at": _us(event.started_at),
        "firing_at": _us(event.firing_at),
        "summary": event.summary,
        "channels": list(event.channels),
        "delivered": [c for c in event.channels if f"{key}|{c}" in delivered],
        "failed": [c for c in event.channels if f"{key}|{c}" in failed],
        "suppressed_by": list(event.suppressed_by),
        "suppressed": bool(event.suppressed_by),
        "idempotency_key": key,
    }
