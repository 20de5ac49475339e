"""The ``alerts`` Delta table: the history of every alert, for notebooks, Grafana and audits.

One row per record of ``fleet.alerts.v1`` (a transition or a notification), with the
channels it was delivered to and those given up on; upserted on
:data:`~fleetlens.lake.schemas.ALERTS_KEY`, so records replayed after a restart leave one row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from datetime import datetime
from typing import Any

import msgspec
import pyarrow as pa

from fleetlens.alerts.engine import AlertEvent
from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import ALERTS_KEY, ALERTS_SCHEMA, TAG_COLUMNS, micros

__all__ = ["ALERTS_TABLE", "AlertHistory", "active_alerts"]

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

    def active(self, *, tenant: str | None = None) -> list[dict[str, Any]]:
        """The alerts pending or firing now (of ``tenant``), as :func:`active_alerts`."""
        columns = [
            "at",
            "alert_id",
            "rule",
            "severity",
            "change",
            "labels",
            "value",
            "started_at",
            "firing_at",
            "summary",
            "suppressed_by",
        ]
        filters = None if tenant is None else [("tenant", "=", tenant)]
        rows = delta.read_table(self._lake, ALERTS_TABLE, columns=columns, filters=filters)
        return active_alerts(rows.to_pylist())


#: The changes that end an episode.
_ENDS = frozenset({"resolved", "cancelled", "reset"})


def active_alerts(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The alerts whose latest episode has not ended, from rows of the ``alerts`` table.

    An episode is an alert's rows with one ``started_at``; it has ended once one of them is
    ``resolved``, ``cancelled`` or ``reset``. Rows are not ordered by ``at`` alone: a repeat
    is stamped with the wall clock, a resolution with the event time of the sample that ended
    it.
    """
    episodes: dict[tuple[str, datetime | None], list[Mapping[str, Any]]] = {}
    for row in rows:
        episodes.setdefault((row["alert_id"], row["started_at"]), []).append(row)
    latest: dict[str, list[Mapping[str, Any]]] = {}
    for (alert, started), episode in episodes.items():
        current = latest.get(alert)
        if current is None or _after(started, current[0]["started_at"]):
            latest[alert] = episode
    out = []
    for alert, episode in latest.items():
        if any(row["change"] in _ENDS for row in episode):
            continue
        firing = [row for row in episode if row["firing_at"] is not None]
        newest = max(firing or episode, key=lambda row: row["at"])
        out.append(
            {
                "id": alert,
                "rule": newest["rule"],
                "severity": newest["severity"],
                "state": "firing" if firing else "pending",
                "labels": msgspec.json.decode(newest["labels"]),
                "value": newest["value"],
                "summary": newest["summary"],
                "started_at": newest["started_at"],
                "firing_at": newest["firing_at"],
                "silenced_by": list(newest["suppressed_by"]),
            }
        )
    return sorted(out, key=lambda a: (a["state"] != "firing", a["rule"], a["id"]))


def _after(a: datetime | None, b: datetime | None) -> bool:
    return b is None or (a is not None and a > b)


def _row(event: AlertEvent, delivered: Mapping[str, object], failed: Set[str]) -> dict[str, object]:
    key = event.idempotency_key
    return {
        "at": micros(event.at),
        "alert_id": event.alert_id,
        "rule": event.rule,
        "severity": event.severity,
        "change": event.change,
        "state": event.state,
        "server_id": event.labels.get("server"),
        **{tag: event.labels.get(tag) for tag in TAG_COLUMNS},
        "labels": msgspec.json.encode(event.labels).decode(),
        "value": event.value,
        "started_at": micros(event.started_at),
        "firing_at": micros(event.firing_at),
        "summary": event.summary,
        "channels": list(event.channels),
        "delivered": [c for c in event.channels if f"{key}|{c}" in delivered],
        "failed": [c for c in event.channels if f"{key}|{c}" in failed],
        "suppressed_by": list(event.suppressed_by),
        "suppressed": bool(event.suppressed_by),
        "idempotency_key": key,
    }
