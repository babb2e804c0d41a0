"""Which closed windows are due: missing within the catch-up horizon, or stale.

A window is missing when it was never computed, stale when the current sum of its
counter revisions differs from the source_revision it was computed from (a late
event or a counter rebuild happened since). Both are decided at call time from the
clock and the database, so a late, missed or doubled beat emission changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy.orm import Session

from voicepipe.maintenance.cleanup import recomputable_from
from voicepipe.metrics.bookkeeping import DAILY, HOURLY, counter_revisions, stored_revisions
from voicepipe.windows import DAY, HOUR, closed_days, closed_hours, day_start


@dataclass(frozen=True)
class WindowState:
    start: datetime
    stored_revision: int | None  # None: never computed successfully
    current_revision: int

    @property
    def missing(self) -> bool:
        return self.stored_revision is None

    @property
    def stale(self) -> bool:
        return self.stored_revision is not None and self.stored_revision != self.current_revision

    @property
    def due(self) -> bool:
        return self.missing or self.stale


def hour_states(session: Session, now: datetime, horizon_hours: int) -> list[WindowState]:
    """Every closed hour in the horizon (and recomputable), oldest first."""
    oldest = recomputable_from(now)
    hours = [h for h in closed_hours(now, horizon_hours) if h >= oldest]
    if not hours:
        return []
    lo, hi = hours[0], hours[-1] + HOUR
    current = counter_revisions(session, lo, hi)
    stored = stored_revisions(session, HOURLY, lo, hi)
    return [WindowState(h, stored.get(h), current.get(h, 0)) for h in hours]


def day_states(session: Session, now: datetime, horizon_days: int) -> list[WindowState]:
    """Every closed day in the horizon (and recomputable), oldest first."""
    oldest = recomputable_from(now)
    days = [day_start(d) for d in closed_days(now, horizon_days) if day_start(d) >= oldest]
    if not days:
        return []
    lo, hi = days[0], days[-1] + DAY
    per_day: dict[datetime, int] = defaultdict(int)
    for hour, revision in counter_revisions(session, lo, hi).items():
        per_day[hour.replace(hour=0)] += revision
    stored = stored_revisions(session, DAILY, lo, hi)
    return [WindowState(d, stored.get(d), per_day.get(d, 0)) for d in days]


def due_hours(session: Session, now: datetime, horizon_hours: int) -> list[datetime]:
    """Closed hours in the horizon that are missing or stale, oldest first."""
    return [s.start for s in hour_states(session, now, horizon_hours) if s.due]


def due_days(session: Session, now: datetime, horizon_days: int) -> list[date]:
    """Closed days in the horizon that are missing or stale, oldest first."""
    return [s.start.date() for s in day_states(session, now, horizon_days) if s.due]


def stale_days(session: Session, now: datetime, horizon_days: int) -> list[date]:
    """Closed days already computed whose counters changed since (late events), oldest first."""
    return [s.start.date() for s in day_states(session, now, horizon_days) if s.stale]


def day_state(session: Session, day: date) -> WindowState:
    """One day's state, whatever its age (backfill)."""
    lo = day_start(day)
    current = sum(counter_revisions(session, lo, lo + DAY).values())
    stored = stored_revisions(session, DAILY, lo, lo + DAY)
    return WindowState(lo, stored.get(lo), current)
