"""`voicepipe dashboard`: the operators' pages and their JSON endpoints (Starlette, served by uvicorn).

Every request, pages and /api alike, needs HTTP basic authentication from
VOICEPIPE_DASHBOARD_AUTH, checked by the exporter's own functions (one rule for
every credential variable). Each request reads in one read-only transaction; the
pages are rendered on the server from the same dicts the /api endpoints return
(voicepipe/dashboard/data.py), with charts drawn as SVG (charts.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from voicepipe.dashboard import charts, data
from voicepipe.errors import InvalidInput
from voicepipe.metrics.bookkeeping import DAILY, HOURLY

log = logging.getLogger(__name__)

AUTH_VARIABLE = "VOICEPIPE_DASHBOARD_AUTH"
# Rows of the organization table on the platform page (the busiest, or the first by the
# chosen sort); `?rows=all` shows every organization and /api/organizations has them all.
TABLE_ROWS = 50
REALM = "voicepipe dashboard"


class BasicAuth:
    """Refuses every request without valid credentials (401 with a Basic challenge)."""

    def __init__(self, app: ASGIApp, credentials: list[tuple[str, str]]) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from voicepipe.observability.exporter import authorized

        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if not authorized(headers.get("authorization"), self.credentials):
                response = PlainTextResponse(
                    "authentication required\n", status_code=401,
                    headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _read(work: Callable[[Session, datetime], Any], now: datetime | None = None) -> Any:
    """WORK(session, now) in one read-only transaction (data.read)."""
    return data.read(work, now)


def _error(request: Request, status: int, exc: Exception) -> Response:
    body = {"error": type(exc).__name__, "message": str(exc)}
    if request.url.path.startswith("/api/"):
        return JSONResponse(body, status_code=status)
    return HTMLResponse(_env.get_template("error.html").render(status=status, **body), status_code=status)


# --- formatting (display only: the values come from data.py unchanged) ---

def fmt_int(value: Any) -> str:
    return f"{int(value):,}"


def fmt_pct(value: Any) -> str:
    return f"{float(value) * 100:.1f} %"


def fmt_ms(value: Any) -> str:
    """Milliseconds as seconds with one decimal."""
    return f"{float(value) / 1000:.1f} s"


def fmt_usd(value: Any) -> str:
    return f"${Decimal(str(value)):,.4f}"


def fmt_age(seconds: Any) -> str:
    if seconds is None:
        return "never"
    s = float(seconds)
    return f"{s / 3600:.1f} h" if abs(s) >= 3600 else f"{s / 60:.0f} min"


FORMAT: dict[str, Callable[[Any], str]] = {
    "artifacts_received": fmt_int, "artifacts_completed": fmt_int, "artifacts_failed": fmt_int,
    "windows": fmt_int, "completed": fmt_int, "failed": fmt_int, "calls": fmt_int,
    "input_tokens": fmt_int, "cached_tokens": fmt_int, "output_tokens": fmt_int,
    "avg_end_to_end_latency": fmt_ms, "p95_end_to_end_latency": fmt_ms, "avg_latency": fmt_ms,
    "total_ai_cost": fmt_usd, "avg_cost_per_artifact": fmt_usd, "cost": fmt_usd,
    "cache_hit_rate": fmt_pct, "failure_rate": fmt_pct,
}


def fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.endswith("_rate"):
        return fmt_pct(value)
    return FORMAT.get(key, str)(value)


def figure(key: str, value: Any) -> Markup:
    """A shown figure: formatted text, with the exact value of the JSON beside it."""
    raw = "" if value is None else str(value)
    return Markup('<span class="figure" data-figure="{}" data-value="{}">{}</span>').format(key, raw, fmt(key, value))


LABELS: dict[str, str] = {
    "artifacts_received": "Received", "artifacts_completed": "Completed", "artifacts_failed": "Failed",
    "overall_failure_rate": "Failure rate", "transcription_failure_rate": "Transcription",
    "claims_extraction_failure_rate": "Claims extraction", "entity_resolution_failure_rate": "Entity resolution",
    "draft_generation_failure_rate": "Draft generation", "avg_end_to_end_latency": "Avg end-to-end",
    "p95_end_to_end_latency": "p95 end-to-end", "total_ai_cost": "AI cost",
    "avg_cost_per_artifact": "AI cost / artifact", "windows": "Windows", "name": "Organization",
    "organization_id": "Id",
}
# (chart, title, figures, formatter)
CHARTS: tuple[tuple[str, str, tuple[str, ...], Callable[[float], str]], ...] = (
    ("artifacts", "Artifacts", ("artifacts_received", "artifacts_completed", "artifacts_failed"),
     lambda v: f"{v:,.4g}"),
    ("failure-rates", "Failure rates", (
        "overall_failure_rate", "transcription_failure_rate", "claims_extraction_failure_rate",
        "entity_resolution_failure_rate", "draft_generation_failure_rate"), lambda v: f"{v * 100:.4g} %"),
    ("latency", "End-to-end latency", ("avg_end_to_end_latency", "p95_end_to_end_latency"),
     lambda v: f"{v / 1000:,.4g} s"),
    ("cost", "AI cost (USD)", ("total_ai_cost",), lambda v: f"${v:,.4g}"),
)


def series_charts(payload: dict[str, Any], prefix: str, api: str) -> list[tuple[str, Markup]]:
    start, end = datetime.fromisoformat(payload["start"]), datetime.fromisoformat(payload["end"])
    hourly = payload["period"] == HOURLY
    x_label: Callable[[datetime], str] = (lambda ts: ts.strftime("%d %H:00")) if hourly else (
        lambda ts: ts.strftime("%b %d"))
    out = []
    for key, title, figures, value_fmt in CHARTS:
        lines = [
            charts.Series(f, LABELS[f], [(datetime.fromisoformat(w["period_start"]), float(w[f]))
                                         for w in payload["windows"]])
            for f in figures
        ]
        out.append((title, charts.line_chart(f"{prefix}-{payload['period']}-{key}", lines, start, end,
                                             value_fmt, x_label, api)))
    return out


_env = Environment(loader=PackageLoader("voicepipe.dashboard", "templates"), autoescape=select_autoescape())
_env.globals.update(figure=figure, fmt=fmt, fmt_age=fmt_age, LABELS=LABELS, FIGURES=data.FIGURES,
                    ORGANIZATION_COLUMNS=data.ORGANIZATION_COLUMNS)


def _page(template: str, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env.get_template(template).render(**context))


def _period(request: Request, default: str = HOURLY) -> str:
    period = request.query_params.get("period", default)
    if period not in (HOURLY, DAILY):
        raise InvalidInput.field("period", f"expected hourly or daily, got {period[:32]!r}")
    return period


def _org_id(request: Request) -> str:
    return str(request.path_params["organization_id"])


# --- JSON endpoints ---

def api_platform_series(request: Request) -> Response:
    period = _period(request)
    return JSONResponse(_read(lambda s, now: data.series(s, period, now)))


def api_platform_stages(request: Request) -> Response:
    period = _period(request)
    return JSONResponse(_read(lambda s, now: data.stages(s, period, now)))


def api_organizations(request: Request) -> Response:
    period, q = _period(request, DAILY), request.query_params
    return JSONResponse(_read(lambda s, now: data.organizations(s, period, now, q.get("sort"), q.get("order"))))


def api_alerts(request: Request) -> Response:
    return JSONResponse(_read(lambda s, now: data.alerts(s)))


def api_aggregation(request: Request) -> Response:
    return JSONResponse(_read(data.aggregation))


def api_organization(request: Request) -> Response:
    org = _org_id(request)
    return JSONResponse(_read(lambda s, now: data.organization(s, org)))


def api_organization_series(request: Request) -> Response:
    org, period = _org_id(request), _period(request)

    def work(s: Session, now: datetime) -> dict[str, Any]:
        data.organization(s, org)
        return data.series(s, period, now, org)

    return JSONResponse(_read(work))


def api_organization_stages(request: Request) -> Response:
    org, period = _org_id(request), _period(request)

    def work(s: Session, now: datetime) -> dict[str, Any]:
        data.organization(s, org)
        return data.stages(s, period, now, org)

    return JSONResponse(_read(work))


def api_organization_usage(request: Request) -> Response:
    org, q = _org_id(request), request.query_params

    def work(s: Session, now: datetime) -> dict[str, Any]:
        data.organization(s, org)
        first, last = data.usage_range(q.get("start"), q.get("end"), now)
        return data.usage(s, org, first, last, now)

    return JSONResponse(_read(work))


# --- pages ---

def _series_sections(s: Session, now: datetime, org: str | None) -> list[dict[str, Any]]:
    base = "/api/platform" if org is None else f"/api/organizations/{quote(org, safe='')}"
    sections = []
    for period, title in ((HOURLY, f"Last {data.HOURLY_WINDOWS} hours, hourly"),
                          (DAILY, f"Last {data.DAILY_WINDOWS} days, daily")):
        payload = data.series(s, period, now, org)
        api = f"{base}/series?period={period}"
        sections.append({
            "period": period, "title": title, "payload": payload, "api": api,
            "charts": series_charts(payload, "org" if org else "platform", api),
            "stages": data.stages(s, period, now, org), "stages_api": f"{base}/stages?period={period}",
        })
    return sections


def _stage_bars(section: dict[str, Any]) -> Markup:
    return charts.bar_chart(
        f"stages-{section['period']}", [(st["stage"], float(st["failure_rate"])) for st in section["stages"]["stages"]],
        fmt_pct, section["stages_api"])


_env.globals.update(stage_bars=_stage_bars)


def platform_page(request: Request) -> Response:
    q = request.query_params
    table_period = q.get("table", DAILY)
    if table_period not in (HOURLY, DAILY):
        raise InvalidInput.field("table", f"expected hourly or daily, got {table_period[:32]!r}")

    def work(s: Session, now: datetime) -> dict[str, Any]:
        return {
            "now": now,
            "sections": _series_sections(s, now, None),
            "table_api": f"/api/organizations?period={table_period}",
            "alerts": data.alerts(s)["alerts"],
            "aggregation": data.aggregation(s, now),
        }

    from voicepipe.clock import utcnow

    now = utcnow()
    # The organization breakdown (mostly PostgreSQL's time when it is not cached) is read on
    # a second connection while this thread reads and draws the rest of the page.
    table = _pool.submit(_read, lambda s, n: data.organizations(s, table_period, n, q.get("sort"), q.get("order")),
                         now)
    context = _read(work, now)
    context["table"] = table.result()
    organizations = context["table"]["organizations"]
    context["table_total"] = len(organizations)
    context["table_all"] = q.get("rows") == "all"
    if not context["table_all"]:
        context["table_rows"] = organizations[:TABLE_ROWS]
    else:
        context["table_rows"] = organizations
    return _page("platform.html", **context)


def organization_page(request: Request) -> Response:
    org, q = _org_id(request), request.query_params

    def work(s: Session, now: datetime) -> dict[str, Any]:
        info = data.organization(s, org)
        first, last = data.usage_range(q.get("start"), q.get("end"), now)
        usage = data.usage(s, org, first, last, now)
        usage_api = f"/api/organizations/{quote(org, safe='')}/usage?start={first.isoformat()}&end={last.isoformat()}"
        return {
            "now": now, "org": info, "sections": _series_sections(s, now, org), "usage": usage,
            "usage_api": usage_api,
            "usage_bars": charts.bar_chart(
                "usage-by-operation", [(op, float(t["cost"])) for op, t in usage["by_operation"].items()]
                + ([(f"{usage['other_operations']['count']} others", float(usage["other_operations"]["cost"]))]
                   if usage["other_operations"] else []),
                lambda v: f"${v:,.4f}",
                usage_api),
            "alerts": [a for a in data.alerts(s)["alerts"] if a["organization_id"] == org],
        }

    return _page("organization.html", **_read(work))


_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dashboard-read")
# How often the background refresher looks for a changed breakdown (see refresh_breakdowns):
# a look is two indexed reads of well under a millisecond.
REFRESH_S = 2.0


def _breakdown_of_span(s: Session, now: datetime, period: str) -> None:
    data.cached_breakdown(s, period, *data.period_span(period, now), wait=True)


def refresh_breakdowns(stop: threading.Event) -> None:
    """Keep the organization breakdowns of the shown ranges computed ahead of requests.

    A request that finds its range changed gets the previous breakdown marked refreshing
    while the new one is summed (data.cached_breakdown); the refresher makes that rare: at
    start, and after the hourly run, a late window or a new day, it recomputes within REFRESH_S.
    """
    first, last_error = True, ""
    while first or not stop.wait(REFRESH_S):
        first = False
        for period in (DAILY, HOURLY):
            try:
                _read(partial(_breakdown_of_span, period=period))
                last_error = ""
            except Exception as exc:
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if error != last_error:  # once per outage, not every REFRESH_S
                    log.warning("breakdown refresh failed period=%s: %s", period, error)
                last_error = error


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

    routes = [
        Route("/", platform_page),
        Route("/organizations/{organization_id:str}", organization_page),
        Route("/api/platform/series", api_platform_series),
        Route("/api/platform/stages", api_platform_stages),
        Route("/api/organizations", api_organizations),
        Route("/api/organizations/{organization_id:str}", api_organization),
        Route("/api/organizations/{organization_id:str}/series", api_organization_series),
        Route("/api/organizations/{organization_id:str}/stages", api_organization_stages),
        Route("/api/organizations/{organization_id:str}/usage", api_organization_usage),
        Route("/api/alerts", api_alerts),
        Route("/api/aggregation", api_aggregation),
    ]

    async def invalid(request: Request, exc: Exception) -> Response:
        return _error(request, 400, exc)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(request, 404, exc)

    app = Starlette(routes=routes, exception_handlers={InvalidInput: invalid, OrganizationNotFound: not_found},
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
