"""The JSON endpoints under /api: the same dicts the pages are rendered from (data.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from voicepipe.dashboard import artifacts, breakdowns, data
from voicepipe.errors import InvalidInput
from voicepipe.metrics.bookkeeping import DAILY, HOURLY


def period_of(request: Request, default: str = HOURLY) -> str:
    period = request.query_params.get("period", default)
    if period not in (HOURLY, DAILY):
        raise InvalidInput.field("period", f"expected hourly or daily, got {period[:32]!r}")
    return period


def organization_of(request: Request) -> str:
    return str(request.path_params["organization_id"])


def api_platform_series(request: Request) -> Response:
    period = period_of(request)
    return JSONResponse(data.read(lambda s, now: data.series(s, period, now)))


def api_platform_stages(request: Request) -> Response:
    period = period_of(request)
    return JSONResponse(data.read(lambda s, now: data.stages(s, period, now)))


def api_organizations(request: Request) -> Response:
    period, q = period_of(request, DAILY), request.query_params
    sort, order = q.get("sort"), q.get("order")
    return JSONResponse(data.read(lambda s, now: breakdowns.organizations(s, period, now, sort, order)))


def api_alerts(request: Request) -> Response:
    return JSONResponse(data.read(lambda s, now: data.alerts(s)))


def api_aggregation(request: Request) -> Response:
    return JSONResponse(data.read(data.aggregation))


def api_organization(request: Request) -> Response:
    org = organization_of(request)
    return JSONResponse(data.read(lambda s, now: data.organization(s, org)))


def _organization_figures(request: Request, view: Callable[[Session, str, datetime, str], dict[str, Any]]
                          ) -> Response:
    org, period = organization_of(request), period_of(request)

    def work(s: Session, now: datetime) -> dict[str, Any]:
        data.organization(s, org)  # an unknown organization is a 404, not an empty series
        return view(s, period, now, org)

    return JSONResponse(data.read(work))


def api_organization_series(request: Request) -> Response:
    return _organization_figures(request, data.series)


def api_organization_stages(request: Request) -> Response:
    return _organization_figures(request, data.stages)


def api_organization_usage(request: Request) -> Response:
    org, q = organization_of(request), request.query_params

    def work(s: Session, now: datetime) -> dict[str, Any]:
        data.organization(s, org)
        first, last = data.usage_range(q.get("start"), q.get("end"), now)
        return data.usage(s, org, first, last, now)

    return JSONResponse(data.read(work))


def api_artifacts(request: Request) -> Response:
    filters = artifacts.list_filters(request.query_params)
    return JSONResponse(data.read(lambda s, now: artifacts.list_artifacts(s, now, **filters), sums=False))


def api_artifact(request: Request) -> Response:
    art_id = request.path_params["artifact_id"]
    return JSONResponse(data.read(lambda s, now: artifacts.artifact_story(s, art_id, now), sums=False))
