"""Aggregate one UTC day exactly from its 24 hourly snapshots' additive parts."""

from __future__ import annotations

import logging
from datetime import date

from sqlalchemy.orm import Session

from voicepipe.events.parts import Parts
from voicepipe.infra.gcpause import without_cyclic_gc
from voicepipe.metrics.bookkeeping import (
    DAILY,
    HOURLY,
    counter_revisions,
    lock_window,
    mark_computed,
    stored_revisions,
)
from voicepipe.metrics.hourly import aggregate_hour, check_recomputable
from voicepipe.metrics.snapshots import sum_snapshot_parts, write_window
from voicepipe.windows import DAY, day_start, hours_of_day, parse_day

log = logging.getLogger(__name__)

@without_cyclic_gc
def aggregate_day(session: Session, day: date) -> int:
    """Refresh the day's missing or stale hours, then upsert its daily rows; returns rows written.

    Lock order is the day, then its hours in ascending order; an hourly run takes a
    single hour lock, so the two can wait on each other but never deadlock. Holding
    the hour locks means no hourly snapshot of the day changes while it is summed.
    """
    day = parse_day(day)
    start = day_start(day)
    check_recomputable(start, DAY, field="day")
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
    sums = sum_snapshot_parts(session, HOURLY, start, start + DAY)
    platform = sums.pop(None, None)
    if platform is None or platform.windows != 24:
        found = platform.windows if platform is not None else 0
        raise RuntimeError(f"day {day}: expected 24 hourly platform rows, found {found}")
    org_parts: dict[str, Parts] = {org: summed.parts for org, summed in sums.items() if org is not None}
    # The platform day is the sum of the platform hours, which already include the
    # events without an organization (never the sum of organization rows alone).
    written = write_window(session, DAILY, start, start + DAY, org_parts, platform.parts)
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

