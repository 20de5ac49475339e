"""Acknowledgements and silences made through the API, kept in the lake.

The API writes them; the speed layer reads them on its clock and puts them in force in its
alert engine (:class:`ControlFollower`), so they reach every speed layer instance, survive
restarts of the API, the layer and the broker, and stay on record. Two small Delta tables,
upserted: ``alert_silences`` (one row a silence, in its latest form: expiring one ends it
then) and ``alert_acks`` (one row per acknowledged episode of an alert).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import msgspec
import pyarrow as pa

from fleetlens.alerts.silences import Matcher, Silence
from fleetlens.lake import delta
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import (
    ACKS_KEY,
    ACKS_SCHEMA,
    SILENCES_KEY,
    SILENCES_SCHEMA,
    epoch_ms,
    micros,
)
from fleetlens.logging import get_logger

__all__ = ["ACKS_TABLE", "SILENCES_TABLE", "Acknowledgement", "AlertControl", "ControlFollower"]

SILENCES_TABLE = "alert_silences"
ACKS_TABLE = "alert_acks"
log = get_logger("alerts.control")


class Acknowledgement(msgspec.Struct, frozen=True):
    """Someone of ``tenant`` took the episode of ``alert_id`` that fired at ``firing_at``
    (epoch ms): its escalation stops; repeats go on."""

    alert_id: str
    firing_at: int
    tenant: str
    acked_by: str
    acked_at: int
    comment: str = ""


class AlertControl:
    """The two tables, created on first use."""

    def __init__(self, lake: Lake) -> None:
        self._lake = lake
        delta.ensure_table(
            lake,
            SILENCES_TABLE,
            schema=SILENCES_SCHEMA,
            description="Alert silences made through the API (latest form of each)",
        )
        delta.ensure_table(
            lake,
            ACKS_TABLE,
            schema=ACKS_SCHEMA,
            description="Alert acknowledgements made through the API (one per episode)",
        )

    def versions(self) -> tuple[int, int]:
        """The tables' versions (a change means something to read)."""
        return (
            delta.open_table(self._lake, SILENCES_TABLE).version(),
            delta.open_table(self._lake, ACKS_TABLE).version(),
        )

    # -- silences ------------------------------------------------------------------------

    def put_silence(self, silence: Silence, *, at: int, expired_by: str | None = None) -> None:
        """Create or replace ``silence`` (``at``: when, epoch ms)."""
        row = {
            "id": silence.id,
            "tenant": silence.tenant,
            "matchers": msgspec.json.encode([m.model_dump() for m in silence.matchers]).decode(),
            "starts_at": micros(silence.starts_at),
            "ends_at": micros(silence.ends_at),
            "comment": silence.comment,
            "created_by": silence.created_by,
            "updated_at": micros(at),
            "expired_by": expired_by,
        }
        rows = pa.Table.from_pylist([row], schema=SILENCES_SCHEMA)
        delta.upsert(self._lake, SILENCES_TABLE, rows, key=SILENCES_KEY)

    def silences(
        self, *, tenant: str | None = None, ending_after: int | None = None
    ) -> list[tuple[Silence, str | None]]:
        """The silences (of ``tenant``; ending after ``ending_after``, epoch ms), each with
        who expired it, if someone did; newest first."""
        filters = _filters(tenant, "ends_at", ending_after)
        rows = delta.read_table(self._lake, SILENCES_TABLE, filters=filters)
        out = []
        for row in sorted(rows.to_pylist(), key=lambda r: r["starts_at"], reverse=True):
            matchers = [Matcher(**m) for m in msgspec.json.decode(row["matchers"])]
            silence = Silence(
                id=row["id"],
                tenant=row["tenant"],
                matchers=tuple(matchers),
                starts_at=epoch_ms(row["starts_at"]),
                ends_at=epoch_ms(row["ends_at"]),
                comment=row["comment"],
                created_by=row["created_by"],
            )
            out.append((silence, row["expired_by"]))
        return out

    # -- acknowledgements ----------------------------------------------------------------

    def acknowledge(self, ack: Acknowledgement) -> None:
        """Record ``ack`` (a second one of the same episode replaces the first)."""
        row = msgspec.structs.asdict(ack) | {
            "firing_at": micros(ack.firing_at),
            "acked_at": micros(ack.acked_at),
        }
        rows = pa.Table.from_pylist([row], schema=ACKS_SCHEMA)
        delta.upsert(self._lake, ACKS_TABLE, rows, key=ACKS_KEY)

    def acks(
        self, *, tenant: str | None = None, fired_after: int | None = None
    ) -> list[Acknowledgement]:
        """The acknowledgements (of ``tenant``; of episodes that fired after
        ``fired_after``, epoch ms)."""
        rows = delta.read_table(
            self._lake, ACKS_TABLE, filters=_filters(tenant, "firing_at", fired_after)
        )
        times = ("firing_at", "acked_at")
        return [
            Acknowledgement(**(row | {t: epoch_ms(row[t]) for t in times}))
            for row in rows.to_pylist()
        ]


class ControlFollower:
    """Puts the API's silences and acknowledgements in force in an alert engine: read again
    whenever a table has a new version (checked every ``check_every_s``).

    Args:
        control: The tables.
        set_silences: Receives the silences that have not ended.
        acknowledge: Receives each acknowledgement, once.
        check_every_s: How often the versions are checked.
        ack_horizon_s: Acknowledgements of episodes that fired longer ago are not read again.
    """

    def __init__(
        self,
        control: AlertControl,
        *,
        set_silences: Callable[[Iterable[Silence]], None],
        acknowledge: Callable[[Acknowledgement], None],
        check_every_s: float = 2.0,
        ack_horizon_s: float = 30 * 86_400,
    ) -> None:
        self._control = control
        self._set_silences = set_silences
        self._acknowledge = acknowledge
        self._check_every_ms = int(check_every_s * 1000)
        self._ack_horizon_ms = int(ack_horizon_s * 1000)
        self._versions: tuple[int, int] | None = None
        #: The acknowledged episodes already handed over.
        self._applied: set[tuple[str, int]] = set()
        self._checked_at = -(2**62)

    def refresh(self, now_ms: int) -> None:
        """Every ``check_every_s``: read what changed."""
        if now_ms - self._checked_at < self._check_every_ms:
            return
        self._checked_at = now_ms
        versions = self._control.versions()
        previous, self._versions = self._versions, versions
        if previous is None or versions[0] != previous[0]:
            silences = [s for s, _ in self._control.silences(ending_after=now_ms)]
            self._set_silences(silences)
            log.info("alerts.silences_loaded", silences=len(silences))
        if previous is None or versions[1] != previous[1]:
            acks = self._control.acks(fired_after=now_ms - self._ack_horizon_ms)
            new = [a for a in acks if (a.alert_id, a.firing_at) not in self._applied]
            for ack in new:  # each looks the alert up among all: only the new ones
                self._acknowledge(ack)
                self._applied.add((ack.alert_id, ack.firing_at))
            log.info("alerts.acks_loaded", acks=len(acks), new=len(new))


def _filters(
    tenant: str | None, column: str, after_ms: int | None
) -> list[tuple[str, str, object]] | None:
    """Rows of ``tenant`` (all: None) whose ``column`` is after ``after_ms`` (any: None)."""
    filters: list[tuple[str, str, object]] = []
    if tenant is not None:
        filters.append(("tenant", "=", tenant))
    if after_ms is not None:
        filters.append((column, ">", datetime.fromtimestamp(after_ms / 1000, UTC)))
    return filters or None
