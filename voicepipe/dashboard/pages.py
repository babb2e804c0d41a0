"""The server-rendered pages: the platform and one organization."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from voicepipe.dashboard import breakdowns, charts, data
from voicepipe.dashboard.api import organization_of
from voicepipe.dashboard.render import page, series_charts
from voicepipe.errors import InvalidInput
from voicepipe.metrics.bookkeeping import DAILY, HOURLY

# Rows of the organization table on the platform page (the busiest, or the first by the
# chosen sort); `?rows=all` shows every organization and /api/organizations has them all.
TABLE_ROWS = 50
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dashboard-read")


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
    sort, order = q.get("sort"), q.get("order")
    table = _pool.submit(data.read, lambda s, n: breakdowns.organizations(s, table_period, n, sort, order), now)
    context = data.read(work, now)
    context["table"] = table.result()
    organizations = context["table"]["organizations"]
    context["table_total"] = len(organizations)
    context["table_all"] = q.get("rows") == "all"
    if not context["table_all"]:
        context["table_rows"] = organizations[:TABLE_ROWS]
    else:
        context["table_rows"] = organizations
    return page("platform.html", **context)


def organization_page(request: Request) -> Response:
    org, q = organization_of(request), request.query_params

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

    return page("organization.html", **data.read(work))
