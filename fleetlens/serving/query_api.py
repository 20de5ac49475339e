"""The query endpoints: ``/api/v1/query``, ``/api/v1/servers``, ``/api/v1/metrics`` and
``/api/v1/freshness``, scoped to the caller's tenant.

A bad parameter gets a 400 whose body names it: ``{"detail": {"field": ..., "reason": ...,
"allowed": [...]}}`` (the metrics for an unknown metric, a step that would work for a range
too large for its step).
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations, which
# name a dependency local to :func:`query_router`.
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
import polars as pl
from cachetools import TTLCache
from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import TypeAdapter, ValidationError

from fleetlens.config import Settings
from fleetlens.lake.schemas import TAG_COLUMNS
from fleetlens.serving.auth import BAD_REQUEST, TenantTokens
from fleetlens.serving.query import DEFAULT_AGGS, QueryEngine, QueryError
from fleetlens.serving.tiers import GROUP_KEYS, StepError, parse_step

__all__ = ["bad_request", "parse_time", "parse_where", "query_router"]

_RELATIVE = re.compile(r"^now(?:\s*-\s*(\S+))?$")
_AWARE = TypeAdapter(datetime)
#: Answers wholly before the watermark may be kept by clients and proxies this long.
_BATCH_MAX_AGE_S = 300
_INVENTORY_TTL_S = 30.0


def parse_time(text: str, *, field: str, now: datetime) -> datetime:
    """An ISO 8601 time with a zone, ``now``, or ``now-<step>`` (``now-24h``).

    Raises:
        QueryError: Neither.
    """
    if match := _RELATIVE.match(text.strip().lower()):
        if match.group(1) is None:
            return now
        try:
            seconds = parse_step(match.group(1))
        except StepError as error:
            raise QueryError(field, f"{field}: {error}") from error
        return now if seconds is None else now - timedelta(seconds=seconds)
    try:
        moment = _AWARE.validate_python(text)
    except ValidationError as error:
        raise QueryError(
            field, f"{field} must be ISO 8601 with a zone (2026-01-01T00:00:00Z) or now-<d>"
        ) from error
    if moment.tzinfo is None:
        raise QueryError(field, f"{field} needs a time zone (e.g. 2026-01-01T00:00:00Z)")
    return moment.astimezone(UTC)


def bad_request(error: QueryError) -> HTTPException:
    return HTTPException(
        400, {"field": error.field, "reason": str(error), "allowed": error.allowed}
    )


def _iso_columns(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(
        pl.col(c).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        for c, dtype in frame.schema.items()
        if isinstance(dtype, pl.Datetime)
    )


def query_router(settings: Settings, engine: QueryEngine, tokens: TenantTokens) -> APIRouter:
    """The query routes over ``engine``."""
    router = APIRouter(prefix="/api/v1", tags=["query"], responses=BAD_REQUEST)
    caller = Depends(tokens)
    inventory: TTLCache[str, pl.DataFrame] = TTLCache(maxsize=64, ttl=_INVENTORY_TTL_S)
    inventory_lock = threading.Lock()

    @router.get(
        "/query",
        summary="A metric over a time range, from the batch and speed layers merged",
        responses={
            200: {
                "description": "JSON (columns, rows, meta) or CSV",
                "content": {"text/csv": {}},
            },
        },
    )
    def run_query(
        tenant: Annotated[str, caller],
        metric: Annotated[str, Query(description="A metric of the contract, e.g. cpu_pct")],
        start: Annotated[str, Query(description="ISO 8601 with a zone, or now-<d> (now-24h)")],
        end: Annotated[str, Query(description="ISO 8601 with a zone, now, or now-<d>")] = "now",
        step: Annotated[str, Query(description="auto, seconds, or 10s, 5m, 1h, 1d")] = "auto",
        server: Annotated[list[str] | None, Query(description="Only these servers")] = None,
        where: Annotated[
            list[str] | None,
            Query(description="Tag filters tag=value (repeat; one tag repeated is OR)"),
        ] = None,
        group_by: Annotated[
            str,
            Query(description="Series keys, comma-separated: server_id, tags; or 'all'"),
        ] = "server_id",
        aggs: Annotated[
            str, Query(description="Comma-separated: avg,min,max,sum,count,last,pNN")
        ] = ",".join(DEFAULT_AGGS),
        format: Annotated[Literal["json", "csv"], Query(description="Response format")] = "json",
    ) -> Response:
        now = datetime.now(UTC)
        try:
            begin = parse_time(start, field="start", now=now)
            finish = parse_time(end, field="end", now=now)
            result = engine.query(
                metric,
                begin,
                finish,
                step=step,
                servers=server,
                where=parse_where(where or []),
                group_by=_group_by(group_by),
                aggs=[a.strip() for a in aggs.split(",") if a.strip()],
                tenant=tenant,
            )
        except QueryError as error:
            raise bad_request(error) from error
        cacheable = all(s["table"] != "speed_1m" for s in result.meta.sources)
        headers = {
            "Cache-Control": f"private, max-age={_BATCH_MAX_AGE_S}" if cacheable else "no-store",
            "X-FleetLens-Cache": "hit" if result.meta.cached else "miss",
        }
        frame = _iso_columns(pl.DataFrame(result))
        if format == "csv":
            return Response(frame.write_csv(), media_type="text/csv", headers=headers)
        body = {
            "meta": result.meta.to_json(),
            "columns": frame.columns,
            "rows": [list(row) for row in frame.rows()],
        }
        return _json(body, headers)

    @router.get("/servers", summary="The inventory: tags, metrics, first and last seen")
    def list_servers(tenant: Annotated[str, caller]) -> dict[str, Any]:
        with inventory_lock:
            found = inventory.get(tenant)
        if found is None:
            found = engine.servers(tenant=tenant)
            with inventory_lock:
                inventory[tenant] = found
        return {"servers": _iso_columns(found).to_dicts()}

    @router.get("/metrics", summary="The metrics of the contract, with their units and bounds")
    def list_metrics(tenant: Annotated[str, caller]) -> dict[str, Any]:
        specs = settings.contract.metrics
        return {
            "metrics": [{"name": name, **specs[name].model_dump()} for name in sorted(specs)],
            "tags": list(TAG_COLUMNS),
        }

    @router.get("/freshness", summary="Where verified batch data ends; the last speed window")
    def freshness(tenant: Annotated[str, caller]) -> dict[str, Any]:
        found = engine.freshness()
        return {
            "watermarks": {k: v.isoformat() for k, v in found.watermarks.items()},
            "last_speed_window": None
            if found.last_speed_window is None
            else found.last_speed_window.isoformat(),
        }

    return router


def _json(body: dict[str, Any], headers: dict[str, str]) -> Response:
    # msgspec: a day of 100 servers is 144,000 rows, several times faster than json.dumps.
    return Response(msgspec.json.encode(body), media_type="application/json", headers=headers)


def parse_where(items: list[str]) -> dict[str, list[str]]:
    """``tag=value`` filters (repeatable; a tag given twice matches either value).

    Raises:
        QueryError: An item is not ``tag=value`` (the tag itself is checked by the engine).
    """
    out: dict[str, list[str]] = {}
    for item in items:
        tag, sep, value = item.partition("=")
        if not sep or not value:
            raise QueryError("where", f"where {item!r} is not tag=value", allowed=TAG_COLUMNS)
        out.setdefault(tag.strip(), []).append(value.strip())
    return out


def _group_by(text: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    if keys == ("all",):
        return ()
    if not keys:
        raise QueryError(
            "group_by", "group_by is empty: use 'all' for one series", allowed=GROUP_KEYS
        )
    return keys
