"""The server-rendered pages: the platform and one organization."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from voicepipe.dashboard import artifacts, breakdowns, charts, data
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


def artifacts_page(request: Request) -> Response:
    """The artifacts list with its filters; `next` keeps them and moves one page on."""
    from urllib.parse import urlencode

    from voicepipe.dashboard import repair
    from voicepipe.dashboard.auth import csrf_token, operator

    user = operator(request)
    query = {k: v for k, v in request.query_params.items() if k != "bulk_sent"}
    filters = artifacts.list_filters(query)
    kept = {k: v for k, v in query.items() if k != "cursor" and v}

    def work(s: Session, now: datetime) -> dict[str, Any]:
        listed = artifacts.list_artifacts(s, now, **filters)
        # Staff looking at the failures of one stage since a time may retry them all (bulk).
        bulk = (filters["status"] == "failed" and filters["stage"] is not None and filters["since"] is not None
                and repair.is_staff(s, user))
        # What the bulk form would retry (its dry run): failed at the stage within the range, by failure time.
        would = len(repair.bulk_selection(s, filters)) if bulk else 0
        return {
            "bulk": bulk, "bulk_count": would, "csrf": csrf_token(user) if bulk else None, "operator": user,
            "bulk_sent": request.query_params.get("bulk_sent"),
            "now": now, "listed": listed, "filters": filters, "statuses": artifacts.LIST_STATUSES,
            "stages": artifacts.STAGE_ORDER,
            "api": "/api/artifacts" + (f"?{urlencode(kept)}" if kept else ""),
            "next_url": f"/artifacts?{urlencode({**kept, 'cursor': listed['next']})}" if listed["next"] else None,
        }

    return page("artifacts.html", **data.read(work, sums=False))


def artifact_page(request: Request) -> Response:
    """One artifact's story; for platform staff, with the retry form when it is retryable."""
    from voicepipe.dashboard import repair
    from voicepipe.dashboard.auth import csrf_token, operator

    art_id, user = request.path_params["artifact_id"], operator(request)

    def work(s: Session, now: datetime) -> dict[str, Any]:
        story = artifacts.artifact_story(s, art_id, now)
        a = story["artifact"]
        can_retry = repair.is_staff(s, user) and (a["status"] == "failed" or a["stalled"])
        return {"now": now, "story": story, "api": f"/api/artifacts/{quote(art_id)}", "operator": user,
                "can_retry": can_retry, "csrf": csrf_token(user) if can_retry else None,
                "retry_stages": artifacts.RETRY_STAGES,
                "default_stage": a["failed_stage"] if a["status"] == "failed" else a["current_stage"],
                "sent": request.query_params.get("sent")}

    return page("artifact.html", **data.read(work, sums=False))
