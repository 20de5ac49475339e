"""The built-in dashboard at ``/``: the static build of ``fleetlens/serving/dashboard/``.

``make setup`` builds it with npm into ``dashboard/dist/`` (git-ignored). Until it has, ``/``
answers 503 saying so; the API is unaffected either way. The dashboard holds no secrets: it
calls the API with the token its user signs in with.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

__all__ = ["DASHBOARD_DIST", "mount_dashboard"]

#: Where ``npm run build`` (``make setup``) puts the dashboard.
DASHBOARD_DIST = Path(__file__).parent / "dashboard" / "dist"


class _Dashboard:
    """The build's files; a 503 while there is none (checked per request, so a build made
    while the service runs is served without a restart)."""

    def __init__(self, dist: Path) -> None:
        self._index = dist / "index.html"
        self._files = StaticFiles(directory=dist, html=True, check_dir=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            # An unknown API path stays an API answer, not a page's.
            await JSONResponse({"detail": "Not Found"}, status_code=404)(scope, receive, send)
            return
        if scope["type"] == "http" and not self._index.is_file():
            missing = PlainTextResponse(
                "The FleetLens dashboard is not built: run `make setup` "
                f"(it builds {self._index.parent} with npm).\n",
                status_code=503,
            )
            await missing(scope, receive, send)
            return
        await self._files(scope, receive, send)


def mount_dashboard(app: FastAPI, dist: Path | None = None) -> None:
    """Serve the dashboard (default :data:`DASHBOARD_DIST`) at ``/``. Mount it after every
    other route: a mount at ``/`` answers whatever the routes before it did not."""
    app.mount("/", _Dashboard(dist or DASHBOARD_DIST), name="dashboard")
