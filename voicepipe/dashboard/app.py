"""`voicepipe dashboard`: the operators' pages and their JSON endpoints (Starlette, served by uvicorn).

Every request needs HTTP basic authentication (auth.py). Each request reads in one
read-only transaction; the pages (pages.py) are rendered on the server from the same
dicts the /api endpoints (api.py) return (data.py), with charts drawn as SVG
(charts.py, render.py); a background thread keeps the breakdowns summed (refresh.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from voicepipe.dashboard import api, data, pages, repair
from voicepipe.dashboard.auth import AUTH_VARIABLE, BasicAuth
from voicepipe.dashboard.refresh import REFRESH_S, refresh_breakdowns
from voicepipe.dashboard.render import error
from voicepipe.errors import InvalidInput

log = logging.getLogger(__name__)

__all__ = ["AUTH_VARIABLE", "create_app", "serve"]


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    from voicepipe.clock import utcnow

    stop = threading.Event()
    thread = threading.Thread(target=refresh_breakdowns, args=(stop,), name="dashboard-refresh", daemon=True)
    thread.start()
    data.DUE_WINDOWS.start(utcnow)
    try:
        yield
    finally:
        stop.set()
        data.DUE_WINDOWS.stop()
        thread.join(REFRESH_S)


def create_app(credentials: list[tuple[str, str]]) -> ASGIApp:
    from voicepipe.dashboard.data import OrganizationNotFound
    from voicepipe.errors import ArtifactNotFound, PermissionDenied, RetryNotAllowed

    routes = [
        Route("/", pages.platform_page),
        Route("/organizations/{organization_id:str}", pages.organization_page),
        Route("/artifacts", pages.artifacts_page),
        Route("/artifacts/retry-failed", repair.bulk_action, methods=["POST"]),
        Route("/artifacts/{artifact_id:str}", pages.artifact_page),
        Route("/artifacts/{artifact_id:str}/retry", repair.retry_action, methods=["POST"]),
        Route("/api/platform/series", api.api_platform_series),
        Route("/api/platform/stages", api.api_platform_stages),
        Route("/api/organizations", api.api_organizations),
        Route("/api/organizations/{organization_id:str}", api.api_organization),
        Route("/api/organizations/{organization_id:str}/series", api.api_organization_series),
        Route("/api/organizations/{organization_id:str}/stages", api.api_organization_stages),
        Route("/api/organizations/{organization_id:str}/usage", api.api_organization_usage),
        Route("/api/alerts", api.api_alerts),
        Route("/api/aggregation", api.api_aggregation),
        Route("/api/artifacts", api.api_artifacts),
        Route("/api/artifacts/{artifact_id:str}", api.api_artifact),
    ]

    async def invalid(request: Request, exc: Exception) -> Response:
        return error(request, 400, exc)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(request, 404, exc)

    async def forbidden(request: Request, exc: Exception) -> Response:
        return error(request, 403, exc)

    async def conflict(request: Request, exc: Exception) -> Response:
        return error(request, 409, exc)

    app = Starlette(routes=routes, exception_handlers={InvalidInput: invalid, OrganizationNotFound: not_found,
                                                        ArtifactNotFound: not_found, PermissionDenied: forbidden,
                                                        RetryNotAllowed: conflict},
                    lifespan=lifespan)
    return BasicAuth(app, credentials)


def serve(address: str, port: int, env: Mapping[str, str]) -> None:
    """Serve the dashboard until interrupted; refuses to start without usable credentials."""
    import uvicorn

    from voicepipe.observability.exporter import parse_credentials

    credentials = parse_credentials(env, AUTH_VARIABLE, "the dashboard")
    log.info("dashboard serving http://%s:%d/", address, port)
    # Idle keep-alive connections closed after 5 s; past 200 at once, new ones get 503.
    uvicorn.run(create_app(credentials), host=address, port=port, log_level="warning", access_log=False,
                timeout_keep_alive=5, limit_concurrency=200)
