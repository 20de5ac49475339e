"""The FleetLens API: one service for the collector's ingest and the alert endpoints."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from fleetlens.config import Settings
from fleetlens.ingest.collector import create_app as create_collector
from fleetlens.lake.paths import Lake
from fleetlens.serving.alerts import alerts_router
from fleetlens.serving.auth import TenantTokens
from fleetlens.serving.live import LiveFeed, live_router
from fleetlens.serving.query import QueryEngine
from fleetlens.serving.query_api import query_router
from fleetlens.serving.ui import mount_dashboard

__all__ = ["create_app"]


def create_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> FastAPI:
    """The API's ASGI application: ``POST /api/v1/metrics``, the alert and query
    endpoints, all authenticated by the tenants' bearer tokens (``collector.tokens``)."""
    app = create_collector(settings, registry=registry, title="FleetLens API")
    tokens = TenantTokens(settings.collector.tokens)
    app.include_router(alerts_router(Lake(settings.lake), tokens))
    app.include_router(query_router(settings, QueryEngine(settings), tokens))
    feed = LiveFeed(settings)
    app.state.on_close = [feed.close]
    app.include_router(live_router(feed, tokens))
    mount_dashboard(app)  # last: it answers every path the routes above do not
    return app
