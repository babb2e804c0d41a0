"""The organization table's breakdown, summed once per change of its range, not per request.

organization_breakdown over 30 days sums a snapshot row per organization and day
(1.2 to 1.7 s for 10,000 organizations); its result changes only when a window of the
range is (re)computed or deleted, or an organization is named. Those leave traces read
in well under a millisecond (aggregation_windows: one row per window; organizations), so
a result is reused while they are unchanged, and for at most BREAKDOWN_TTL_S in any case.

When they have changed, a request is not made to wait for the new sum: it gets the
previous result, marked `refreshing` with the time it was computed, while the new one is
computed in the background (one computation per range at a time). Only a range never
computed yet is computed while the request waits.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.directory import Organization
from models.metrics import AggregationWindow
from voicepipe.dashboard.data import ORGANIZATION_COLUMNS, SORT_KEYS, jsonable, period_span, read
from voicepipe.errors import InvalidInput
from voicepipe.metrics.queries import OrganizationFigures, organization_breakdown

log = logging.getLogger(__name__)

def organizations(
    session: Session, period: str, now: datetime, sort: str | None = None, order: str | None = None
) -> dict[str, Any]:
    """Every organization's figures over the range (organization_breakdown), optionally re-sorted.

    Without SORT the query's order stands (busiest first). ORDER is asc or desc
    (default: desc for figures, asc for name and id).
    """
    if sort is not None and sort not in SORT_KEYS:
        raise InvalidInput.field("sort", f"expected one of {', '.join(SORT_KEYS)}, got {sort[:32]!r}")
    if order is not None and order not in ("asc", "desc"):
        raise InvalidInput.field("order", f"expected asc or desc, got {order[:32]!r}")
    start, end = period_span(period, now)
    breakdown = cached_breakdown(session, period, start, end)
    table = breakdown.table
    if sort is not None:
        descending = (order or ("asc" if sort in ("name", "organization_id") else "desc")) == "desc"
        # By the figures' own values (a Decimal cost, not its string). Ties keep the query's
        # order (a stable sort), so equal rows never swap between loads.
        table = sorted(table, key=lambda row: row[0][sort], reverse=descending)
    return {
        "period": period,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "sort": sort,
        "order": order,
        "computed_at": breakdown.computed_at.isoformat(),
        "refreshing": breakdown.refreshing,
        "organizations": [shown for _, shown in table],
    }


BREAKDOWN_TTL_S = 300.0


# A table row: the figures by column (for sorting), and the same as JSON-ready values.
TableRow = tuple[dict[str, Any], dict[str, Any]]


@dataclass(frozen=True)
class Breakdown:
    rows: list[OrganizationFigures]
    table: list[TableRow]  # the rows as the organization table shows them, in the query's order
    computed_at: datetime  # when the rows were summed (UTC)
    refreshing: bool  # the range changed since: newer rows are being computed


@dataclass(frozen=True)
class _Cached:
    version: tuple[Any, ...]
    monotonic: float
    computed_at: datetime
    rows: list[OrganizationFigures]
    # Made once per sum, not per request: 10,000 organizations' JSON values cost ~50 ms.
    table: list[TableRow]


def _table_row(f: OrganizationFigures) -> TableRow:
    row = {"organization_id": f.organization_id, "name": f.name, "windows": f.windows,
           **{c: f.metrics[c] for c in ORGANIZATION_COLUMNS}, "percentile_error": f.metrics["percentile_error"]}
    return row, {k: jsonable(v) for k, v in row.items()}


_breakdowns: dict[tuple[str, datetime, datetime], _Cached] = {}
_breakdowns_lock = threading.Lock()
_computing: dict[tuple[str, datetime, datetime], threading.Lock] = {}


def breakdown_version(session: Session, period: str, start: datetime, end: datetime) -> tuple[Any, ...]:
    """What changes whenever organization_breakdown(period, start, end) can change."""
    windows = session.execute(
        select(func.count(), func.sum(AggregationWindow.source_revision), func.max(AggregationWindow.computed_at))
        .where(AggregationWindow.period_type == period, AggregationWindow.period_start >= start,
               AggregationWindow.period_start < end)
    ).one()
    names = session.execute(select(func.count(), func.max(Organization.updated_at))).one()
    return (*windows, *names)


def _compute(session: Session, key: tuple[str, datetime, datetime]) -> _Cached:
    """Sum the range now and keep the result (the caller holds the range's lock)."""
    version = breakdown_version(session, *key)
    rows = organization_breakdown(session, *key)
    cached = _Cached(version, time.monotonic(), datetime.now(UTC), rows, [_table_row(f) for f in rows])
    with _breakdowns_lock:
        if len(_breakdowns) >= 8:  # older ranges (the clock moved on) are dropped
            _breakdowns.clear()
        _breakdowns[key] = cached
    return cached


def _compute_in_background(key: tuple[str, datetime, datetime], computing: threading.Lock) -> None:
    try:
        read(lambda session, _now: _compute(session, key))
    except Exception:
        log.exception("breakdown refresh failed period=%s", key[0])
    finally:
        computing.release()


def cached_breakdown(
    session: Session, period: str, start: datetime, end: datetime, *, wait: bool = False
) -> Breakdown:
    """organization_breakdown's result, reused while breakdown_version is unchanged (and young).

    A changed range gives the previous result marked refreshing while a background thread
    sums the new one, unless WAIT (then, and for a range never computed, the caller waits).
    """
    key = (period, start, end)
    version = breakdown_version(session, period, start, end)
    with _breakdowns_lock:
        computing = _computing.setdefault(key, threading.Lock())
        hit = _breakdowns.get(key)
    if hit is not None and hit.version == version and time.monotonic() - hit.monotonic < BREAKDOWN_TTL_S:
        return Breakdown(hit.rows, hit.table, hit.computed_at, False)
    if hit is not None and not wait:
        if computing.acquire(blocking=False):
            threading.Thread(target=_compute_in_background, args=(key, computing),
                             name="dashboard-breakdown", daemon=True).start()
        return Breakdown(hit.rows, hit.table, hit.computed_at, True)
    # One computation of a range at a time (the refresher and requests alike): a caller
    # that arrives while it runs waits for it instead of running a second one beside it.
    with computing:
        with _breakdowns_lock:
            hit = _breakdowns.get(key)
        if hit is not None and hit.version == version and time.monotonic() - hit.monotonic < BREAKDOWN_TTL_S:
            return Breakdown(hit.rows, hit.table, hit.computed_at, False)
        fresh = _compute(session, key)
    return Breakdown(fresh.rows, fresh.table, fresh.computed_at, False)
