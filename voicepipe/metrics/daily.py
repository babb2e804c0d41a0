"""Aggregate one UTC day exactly from its 24 hourly snapshots' additive parts."""

from __future__ import annotations

import logging
from datetime import date, datetime

from sqlalchemy.orm import Session

from voicepipe.bulk import dbapi_connection
from voicepipe.events.histogram import empty as empty_histogram
from voicepipe.events.parts import HISTOGRAM_PART, INT_PARTS, SCALAR_PARTS, Parts
from voicepipe.metrics.bookkeeping import (
    DAILY,
    HOURLY,
    counter_revisions,
    lock_window,
    mark_computed,
    stored_revisions,
)
from voicepipe.metrics.hourly import aggregate_hour, check_recomputable
from voicepipe.metrics.snapshots import write_window
from voicepipe.windows import DAY, day_start, hours_of_day, parse_day

log = logging.getLogger(__name__)

_HOURLY_ROWS = "FROM metrics_snapshots WHERE period_type = 'hourly' AND period_start >= %(lo)s AND period_start < %(hi)s"
# Sums come back in the parts' own types (sum(bigint) is numeric in PostgreSQL), so
# rows become parts without a conversion per value.
_SUM_SQL = (
    "SELECT organization_id, count(*), "
    + ", ".join(f"sum({name})::bigint" if name in INT_PARTS else f"sum({name})" for name in SCALAR_PARTS)
    + f" {_HOURLY_ROWS} GROUP BY organization_id"
)
# Histograms are summed bucket by bucket in SQL, skipping empty buckets (latency
# histograms are sparse): summing 24,000 rows in Python cost seconds for 1,000 orgs.
_HIST_SQL = (
    f"SELECT s.organization_id, b.i::int, sum(b.n)::bigint FROM metrics_snapshots s "
    f"CROSS JOIN LATERAL unnest(s.{HISTOGRAM_PART}) WITH ORDINALITY AS b(n, i) "
    "WHERE s.period_type = 'hourly' AND s.period_start >= %(lo)s AND s.period_start < %(hi)s AND b.n <> 0 "
    "GROUP BY s.organization_id, b.i"
)


def sum_hourly_parts(session: Session, lo: datetime, hi: datetime) -> tuple[dict[str | None, Parts], int]:
    """Additive parts of the hourly snapshots in [lo, hi), summed per organization in SQL.

    Key None is the platform: the sum of the platform rows, which include the events
    without an organization (never the sum of organization rows alone). Also returns
    how many platform hours were found.
    """
    params = {"lo": lo, "hi": hi}
    sums: dict[str | None, Parts] = {}
    platform_hours = 0
    with dbapi_connection(session).cursor() as cur:
        for org, windows, *values in cur.execute(_SUM_SQL, params):
            parts: Parts = dict(zip(SCALAR_PARTS, values, strict=True))
            parts[HISTOGRAM_PART] = empty_histogram()
            sums[org] = parts
            if org is None:
                platform_hours = windows
        for org, index, count in cur.execute(_HIST_SQL, params):
            sums[org][HISTOGRAM_PART][index - 1] = count
    return sums, platform_hours


def aggregate_day(session: Session, day: date) -> int:
    """Refresh the day's missing or stale hours, then upsert its daily rows; returns rows written.

    Lock order is the day, then its hours in ascending order; an hourly run takes a
    single hour lock, so the two can wait on each other but never deadlock. Holding
    the hour locks means no hourly snapshot of the day changes while it is summed.
    """
    day = parse_day(day)
    start = day_start(day)
    check_recomputable(start, field="day")
    hours = hours_of_day(day)
    lock_window(session, DAILY, start)
    for hour in hours:
        lock_window(session, HOURLY, hour)
    current = counter_revisions(session, start, start + DAY)
    stored = stored_revisions(session, HOURLY, start, start + DAY)
    refreshed = 0
    for hour in hours:
        if stored.get(hour) is None or stored[hour] != current.get(hour, 0):
            aggregate_hour(session, hour)
            refreshed += 1
    sums, platform_hours = sum_hourly_parts(session, start, start + DAY)
    platform = sums.pop(None, None)
    if platform is None or platform_hours != 24:
        raise RuntimeError(f"day {day}: expected 24 hourly platform rows, found {platform_hours}")
    org_parts: dict[str, Parts] = {org: parts for org, parts in sums.items() if org is not None}
    # The platform day is the sum of the platform hours, which already include the
    # events without an organization (never the sum of organization rows alone).
    written = write_window(session, DAILY, start, start + DAY, org_parts, platform)
    # The day reflects exactly the hourly snapshots just read, whose source revisions
    # are (under the hour locks) the sums of the day's counter revisions.
    final = stored_revisions(session, HOURLY, start, start + DAY)
    source_revision = sum(final.get(h) or 0 for h in hours)
    mark_computed(session, DAILY, start, source_revision)
    log.info(
        "day aggregated day=%s organizations=%d rows=%d hours_refreshed=%d source_revision=%d",
        day.isoformat(), len(org_parts), written, refreshed, source_revision,
    )
    return written

