"""The alert endpoints: the active alerts, acknowledgements and silences, of the caller's
tenant only.

The active alerts are read from the ``alerts`` table (the notifier writes every record of
``fleet.alerts.v1`` there as it delivers it); acknowledgements and silences are written to the
lake (:mod:`fleetlens.alerts.control`), where the speed layer picks them up within
``alerts.control_check_s`` and puts them in force. Another tenant's alerts and silences are
answered as not found.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations, which
# name a dependency local to :func:`alerts_router`.
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from ulid import ULID

from fleetlens.alerts.control import Acknowledgement, AlertControl
from fleetlens.alerts.history import AlertHistory
from fleetlens.alerts.silences import Matcher, Silence
from fleetlens.lake.paths import Lake
from fleetlens.lake.schemas import epoch_ms
from fleetlens.serving.auth import BAD_REQUEST, TenantTokens

__all__ = ["AckRequest", "SilenceRequest", "alerts_router"]


class AckRequest(BaseModel):
    """``POST /api/v1/alerts/{id}/ack``."""

    model_config = ConfigDict(extra="forbid")

    by: str = Field(min_length=1, max_length=200, description="Who takes the alert")
    comment: str = Field(default="", max_length=2000)


class SilenceRequest(BaseModel):
    """``POST /api/v1/silences``: suppress notifications of the alerts matching every
    matcher, from ``starts_at`` (default now) to ``ends_at``."""

    model_config = ConfigDict(extra="forbid")

    matchers: list[Matcher] = Field(min_length=1, max_length=20)
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime
    comment: str = Field(min_length=1, max_length=2000)
    created_by: str = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _ordered(self) -> "SilenceRequest":
        if self.starts_at is not None and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


def alerts_router(lake: Lake, tokens: TenantTokens) -> APIRouter:
    """The ``/api/v1/alerts`` and ``/api/v1/silences`` routes over ``lake``."""
    router = APIRouter(prefix="/api/v1", tags=["alerts"], responses=BAD_REQUEST)
    history = AlertHistory(lake)
    control = AlertControl(lake)
    caller = Depends(tokens)

    def active(tenant: str) -> list[dict[str, Any]]:
        acks = {(a.alert_id, a.firing_at): a for a in control.acks(tenant=tenant)}
        out = []
        for alert in history.active(tenant=tenant):
            firing_at = alert["firing_at"]
            ack = None if firing_at is None else acks.get((alert["id"], epoch_ms(firing_at)))
            alert["acked_by"] = None if ack is None else ack.acked_by
            alert["acked_at"] = None if ack is None else _iso(ack.acked_at)
            for name in ("started_at", "firing_at"):
                alert[name] = None if alert[name] is None else alert[name].isoformat()
            out.append(alert)
        return out

    @router.get("/alerts", summary="The pending and firing alerts")
    def list_alerts(
        tenant: Annotated[str, caller],
        state: Literal["pending", "firing"] | None = None,
        severity: str | None = None,
        rule: str | None = None,
        server: Annotated[str | None, Query(description="A server id")] = None,
    ) -> dict[str, Any]:
        alerts = [
            a
            for a in active(tenant)
            if (state is None or a["state"] == state)
            and (severity is None or a["severity"] == severity)
            and (rule is None or a["rule"] == rule)
            and (server is None or a["labels"].get("server") == server)
        ]
        return {"alerts": alerts}

    @router.post(
        "/alerts/{alert_id}/ack",
        status_code=202,
        summary="Acknowledge a firing alert: its escalation stops (repeats go on)",
        responses={200: {"description": "Already acknowledged"}, 404: {}, 409: {}},
    )
    def acknowledge(alert_id: str, body: AckRequest, tenant: Annotated[str, caller]) -> Any:
        alert = next((a for a in active(tenant) if a["id"] == alert_id), None)
        if alert is None:
            raise HTTPException(404, f"no pending or firing alert {alert_id!r}")
        if alert["state"] != "firing" or alert["firing_at"] is None:
            raise HTTPException(409, "only a firing alert can be acknowledged; it is pending")
        firing_at = epoch_ms(datetime.fromisoformat(alert["firing_at"]))
        if alert["acked_by"] is not None:
            return JSONResponse(_ack_out(alert_id, firing_at, alert), status_code=200)
        ack = Acknowledgement(
            alert_id=alert_id,
            firing_at=firing_at,
            tenant=tenant,
            acked_by=body.by,
            acked_at=_now_ms(),
            comment=body.comment,
        )
        control.acknowledge(ack)
        return _ack_out(
            alert_id, firing_at, {"acked_by": ack.acked_by, "acked_at": _iso(ack.acked_at)}
        )

    @router.get("/silences", summary="The silences")
    def list_silences(
        tenant: Annotated[str, caller], state: Literal["pending", "active", "expired"] | None = None
    ) -> dict[str, Any]:
        now = _now_ms()
        found = [_silence_out(s, by, now) for s, by in control.silences(tenant=tenant)]
        return {"silences": [s for s in found if state is None or s["state"] == state]}

    @router.post("/silences", status_code=201, summary="Create a silence")
    def create_silence(body: SilenceRequest, tenant: Annotated[str, caller]) -> dict[str, Any]:
        for matcher in body.matchers:
            if matcher.name == "tenant" and not matcher.matches({"tenant": tenant}):
                raise HTTPException(
                    400,
                    {
                        "field": "matchers",
                        "reason": "a silence applies to the caller's tenant only: "
                        f"{matcher.name}={matcher.value!r} excludes it",
                    },
                )
        now = _now_ms()
        starts_at = now if body.starts_at is None else epoch_ms(body.starts_at)
        ends_at = epoch_ms(body.ends_at)
        if ends_at <= now:
            raise HTTPException(400, {"field": "ends_at", "reason": "must be in the future"})
        silence = Silence(
            id=str(ULID()),
            tenant=tenant,
            matchers=tuple(body.matchers),
            starts_at=starts_at,
            ends_at=ends_at,
            comment=body.comment,
            created_by=body.created_by,
        )
        control.put_silence(silence, at=now)
        return _silence_out(silence, None, now)

    def find(silence_id: str, tenant: str) -> tuple[Silence, str | None]:
        for silence, expired_by in control.silences(tenant=tenant):
            if silence.id == silence_id:
                return silence, expired_by
        raise HTTPException(404, f"no silence {silence_id!r}")

    @router.get(
        "/silences/{silence_id}",
        summary="One silence",
        responses={404: {"description": "No such silence of the caller's tenant"}},
    )
    def get_silence(silence_id: str, tenant: Annotated[str, caller]) -> dict[str, Any]:
        return _silence_out(*find(silence_id, tenant), _now_ms())

    @router.delete(
        "/silences/{silence_id}",
        summary="Expire a silence now",
        responses={404: {"description": "No such silence of the caller's tenant"}},
    )
    def expire_silence(
        silence_id: str,
        tenant: Annotated[str, caller],
        by: Annotated[str, Query(min_length=1, max_length=200, description="Who expires it")],
    ) -> dict[str, Any]:
        silence, expired_by = find(silence_id, tenant)
        now = _now_ms()
        if silence.ends_at <= now:  # already over: nothing to change
            return _silence_out(silence, expired_by, now)
        # Ended now; one that had not started ends before it would have.
        expired = silence.model_copy(
            update={"starts_at": min(silence.starts_at, now - 1), "ends_at": now}
        )
        control.put_silence(expired, at=now, expired_by=by)
        return _silence_out(expired, by, now)

    return router


def _ack_out(alert_id: str, firing_at: int, ack: dict[str, Any]) -> dict[str, Any]:
    return {
        "alert_id": alert_id,
        "firing_at": _iso(firing_at),
        "acked_by": ack["acked_by"],
        "acked_at": ack["acked_at"],
    }


def _silence_out(silence: Silence, expired_by: str | None, now: int) -> dict[str, Any]:
    state = (
        "pending" if now < silence.starts_at else "active" if now < silence.ends_at else "expired"
    )
    return {
        "id": silence.id,
        "state": state,
        "matchers": [m.model_dump() for m in silence.matchers],
        "starts_at": _iso(silence.starts_at),
        "ends_at": _iso(silence.ends_at),
        "comment": silence.comment,
        "created_by": silence.created_by,
        "expired_by": expired_by,
    }


def _now_ms() -> int:
    return int(time.time() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()
