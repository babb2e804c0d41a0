"""What the dashboard shows, as JSON-ready dicts: one function per /api endpoint.

The pages are rendered from these same dicts, so a figure on a page and the figure
of its JSON endpoint are one value. Every figure comes from the product's query
functions (voicepipe.metrics.queries, voicepipe.usage.queries, voicepipe.alerts,
voicepipe.observability.probe): nothing here computes a rate, a mean or a sum.

Ranges are closed windows: the 72 hours before the current hour (hourly) and the
30 days before today (daily), all UTC. Costs are decimal strings (USD, exact),
latencies milliseconds, rates fractions in [0, 1].
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from models.directory import Organization
from models.metrics import MetricsSnapshot
from voicepipe.errors import InvalidInput, VoicepipeError
from voicepipe.events.parts import COARSE_PART
from voicepipe.metrics.bookkeeping import DAILY, HOURLY
from voicepipe.metrics.derive import percentile_error, stage_figures
from voicepipe.metrics.queries import (
    UNKNOWN_ORGANIZATION,
    historical_snapshots,
    range_figures,
    range_parts,
)
from voicepipe.observability.probe import DueWindows, read_only_session
from voicepipe.validation import MAX_TS, MIN_TS, check_id
from voicepipe.windows import floor_day, floor_hour, parse_day

log = logging.getLogger(__name__)

HOURLY_WINDOWS = 72
DAILY_WINDOWS = 30
USAGE_DEFAULT_DAYS = 30
USAGE_MAX_DAYS = 366
WORK_MEM = "64MB"
# The due windows sum the counter revisions of both horizons (0.3 s for 10,000
# organizations): read every few seconds in the background (started by the app), not per page.
DUE_WINDOWS = DueWindows()

# The figures of every chart and summary, in the order the pages show them.
FIGURES: tuple[str, ...] = (
    "artifacts_received",
    "artifacts_completed",
    "artifacts_failed",
    "overall_failure_rate",
    "transcription_failure_rate",
    "claims_extraction_failure_rate",
    "entity_resolution_failure_rate",
    "draft_generation_failure_rate",
    "avg_end_to_end_latency",
    "p50_end_to_end_latency",
    "p90_end_to_end_latency",
    "p95_end_to_end_latency",
    "p99_end_to_end_latency",
    "total_ai_cost",
    "avg_cost_per_artifact",
)
# Columns of the organization table, and the keys it may be sorted by.
ORGANIZATION_COLUMNS: tuple[str, ...] = (
    "artifacts_received",
    "artifacts_completed",
    "artifacts_failed",
    "overall_failure_rate",
    "avg_end_to_end_latency",
    "p50_end_to_end_latency",
    "p95_end_to_end_latency",
    "p99_end_to_end_latency",
    "total_ai_cost",
)
SORT_KEYS: tuple[str, ...] = ("name", "organization_id", "windows", *ORGANIZATION_COLUMNS)


class OrganizationNotFound(VoicepipeError):
    """No organization of this id is named in the directory or has any snapshot."""


def jsonable(value: Any) -> Any:
    """Decimals as exact strings, datetimes and days as ISO-8601, infinities as None."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float) and math.isinf(value):
        return None
    return value


def period_span(period: str, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the closed windows shown for PERIOD at NOW."""
    if period == HOURLY:
        end = floor_hour(now)
        return end - timedelta(hours=HOURLY_WINDOWS), end
    if period == DAILY:
        end = floor_day(now)
        return end - timedelta(days=DAILY_WINDOWS), end
    raise InvalidInput.field("period", f"expected hourly or daily, got {period[:32]!r}")


def _figures(values: dict[str, Any]) -> dict[str, Any]:
    """The shown figures, and the relative error their percentiles may have (derive.percentile_error)."""
    return {**{name: jsonable(values[name]) for name in FIGURES}, "percentile_error": values["percentile_error"]}


def series(session: Session, period: str, now: datetime, organization_id: str | None = None) -> dict[str, Any]:
    """Every window's figures (historical_snapshots) and the whole range's (range_figures)."""
    start, end = period_span(period, now)
    rows = historical_snapshots(session, period, start, end, organization_id)
    return {
        "period": period,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "organization_id": organization_id,
        "totals": _figures(range_figures(session, period, start, end, organization_id)),
        "windows": [
            {"period_start": jsonable(row.period_start), **_figures(
                {**{n: getattr(row, n) for n in FIGURES}, "percentile_error": percentile_error(
                    {COARSE_PART: row.coarse_percentiles})})}
            for row in rows
        ],
    }


def stages(session: Session, period: str, now: datetime, organization_id: str | None = None) -> dict[str, Any]:
    """Per-stage completed, failed, failure rate, mean latency and its percentiles."""
    start, end = period_span(period, now)
    parts = range_parts(session, period, start, end, organization_id)
    return {
        "period": period,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "organization_id": organization_id,
        "percentile_error": percentile_error(parts),
        "stages": [{k: jsonable(v) for k, v in s.items()} for s in stage_figures(parts)],
    }


def read(work: Callable[[Session, datetime], Any], now: datetime | None = None, *, sums: bool = True) -> Any:
    """WORK(session, now) in one read-only transaction of its own (SUMS: with room to sum in memory)."""
    from voicepipe.clock import utcnow

    with read_only_session() as session:
        if sums:
            # The 30-day organization breakdown hashes and sorts a row per organization and day:
            # in memory, not in temporary files (PostgreSQL's default work_mem is 4 MB).
            session.connection().exec_driver_sql(f"SET LOCAL work_mem = '{WORK_MEM}'")
        return work(session, now or utcnow())


def alerts(session: Session) -> dict[str, Any]:
    """Open alerts, oldest first (voicepipe.alerts.evaluate.open_alerts)."""
    from voicepipe.alerts.evaluate import open_alerts

    return {"alerts": [
        {"id": a.id, "kind": a.kind, "organization_id": a.organization_id, "message": a.message,
         "value": jsonable(a.value), "threshold": jsonable(a.threshold),
         "opened_at": jsonable(a.opened_at), "last_seen_at": jsonable(a.last_seen_at),
         "evaluations": a.evaluations, "acknowledged_at": jsonable(a.acknowledged_at),
         "acknowledged_by": a.acknowledged_by}
        for a in open_alerts(session)
    ]}


def aggregation(session: Session, now: datetime) -> dict[str, Any]:
    """Aggregation lag and due windows, as the exporter and the alerts read them (probe.collect)."""
    from voicepipe.observability.probe import PERIODS, collect, heartbeat_file
    from voicepipe.settings import get_settings

    settings = get_settings()
    # No broker: queue depths are Flower's and the exporter's; a page must not wait on the broker.
    # The due windows come from DUE_WINDOWS's background reading, as the exporter's do.
    health = collect(
        session, now, broker_url=None, heartbeat=heartbeat_file(),
        hourly_horizon_hours=settings.hourly_horizon_hours, daily_horizon_days=settings.daily_horizon_days,
        stall_timeout_s=settings.stall_timeout_seconds, due=DUE_WINDOWS,
        organizations=False,  # the exporter's per-organization series: a row per organization, unused here
    )
    return {
        "now": now.isoformat(),
        "hourly_horizon_hours": settings.hourly_horizon_hours,
        "daily_horizon_days": settings.daily_horizon_days,
        "newest_window": {p: jsonable(health.newest_window[p]) for p in PERIODS},
        "lag_seconds": {p: jsonable(health.window_lag_s(p)) for p in PERIODS},
        "windows_due": {p: {kind: health.windows_due[(p, kind)] for kind in ("missing", "stale")} for p in PERIODS},
        "windows_failing": health.windows_failing,
        "artifacts_stalled": health.artifacts_stalled,
        "dead_letters": health.dead_letters,
        "beat_silence_seconds": jsonable(health.beat.silence_s),
    }


def organization(session: Session, organization_id: str) -> dict[str, Any]:
    """The organization's id and name ("Unknown" when the directory has none); OrganizationNotFound
    when neither the directory nor any snapshot knows it."""
    check_id(organization_id, "organization_id")  # a NUL or control character: 400, not a database error
    name = session.scalar(select(Organization.name).where(Organization.id == organization_id))
    if name is None and not session.scalar(
        select(exists().where(MetricsSnapshot.organization_id == organization_id))
    ):
        raise OrganizationNotFound(f"no organization {organization_id[:64]!r} in the directory or the snapshots")
    return {"organization_id": organization_id, "name": name or UNKNOWN_ORGANIZATION}


def usage_range(start: str | None, end: str | None, now: datetime) -> tuple[date, date]:
    """The chosen days (YYYY-MM-DD, inclusive); by default the last 30 days up to today."""
    last = parse_day(end, "end") if end else now.date()
    if start:
        first = parse_day(start, "start")
        _check_day_in_range(first, "start")
    _check_day_in_range(last, "end")
    if not start:
        first = last - timedelta(days=USAGE_DEFAULT_DAYS - 1)
    if last < first:
        raise InvalidInput.field("end", f"{last.isoformat()} is before start {first.isoformat()}")
    if (last - first).days + 1 > USAGE_MAX_DAYS:
        raise InvalidInput.field("start", f"a range of at most {USAGE_MAX_DAYS} days, got {(last - first).days + 1}")
    return first, last


def _check_day_in_range(day: date, field: str) -> None:
    if not MIN_TS.date() <= day < MAX_TS.date():
        raise InvalidInput.field(field, f"{day.isoformat()} is outside {MIN_TS.date()}..{MAX_TS.date()}")


def usage(session: Session, organization_id: str, first: date, last: date, now: datetime) -> dict[str, Any]:
    """AI usage over [first, last]: totals, by operation, top coaches and players (usage_for_organization)."""
    from voicepipe.settings import get_settings
    from voicepipe.usage.queries import ranked, usage_for_organization
    from voicepipe.usage.rollup import UsageTotals

    summary = usage_for_organization(session, organization_id, first, last, now=now)
    out = summary.to_json()
    # At most VOICEPIPE_DASHBOARD_MAX_ROWS operations (the costliest), the rest summed in one
    # row: producers name operations, and must not decide the size of the page.
    limit = get_settings().dashboard_max_rows
    out["other_operations"] = None
    if len(summary.by_operation) > limit:
        order = ranked(summary.by_operation)
        rest = UsageTotals()
        for _, totals in order[limit:]:
            rest.add(totals)
        out["by_operation"] = {k: v.to_json() for k, v in sorted(order[:limit])}
        out["other_operations"] = {"count": len(order) - limit, **rest.to_json()}
    return out
