"""Which closed windows are due: missing within the catch-up horizon, or stale at any age.

A window is missing when it was never computed, stale when the current sum of its
counter revisions differs from the source_revision it was computed from (a late
event or a counter rebuild happened since). Both are decided at call time from the
clock and the database, so a late, missed or doubled beat emission changes nothing.

Windows that closed before the first counter row (the oldest hour with events) are
not missing: there was nothing to aggregate yet, and a fresh installation would
otherwise report its whole horizon as missing.

The horizon bounds the catch-up of *missing* windows only: a window never
computed and older than the horizon is left to `voicepipe backfill`. Changes to
computed windows older than the horizon are found by what changed, not by scanning:
recording and rebuilds mark the closed hours whose counters they touch
(voicepipe.metrics.late), and every marked hour, with its day, joins the horizon's windows
here, however old, as long as its counters are kept (``recomputable_from``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.events import EventCounter
from voicepipe.maintenance.cleanup import recomputable_from
from voicepipe.metrics import late
from voicepipe.metrics.bookkeeping import (
    DAILY,
    HOURLY,
    counter_revisions,
    counter_revisions_at,
    stored_revisions,
    stored_revisions_at,
    utc,
)
from voicepipe.windows import DAY, HOUR, closed_days, closed_hours, day_start, floor_day


@dataclass(frozen=True)
class WindowState:
    start: datetime
    stored_revision: int | None  # None: never computed successfully
    current_revision: int
    # Late windows (changed after they closed): for an hour, the revision of its mark;
    # a day is late when one of its hours is marked.
    mark_revision: int | None = None
    late: bool = False
    # Outside the horizon a window is listed only because it is marked: a missing one
    # there is not caught up (the horizon bounds catch-up), a stale one is refreshed.
    in_horizon: bool = True
    # Closed before the first hour with counters: nothing to aggregate, never missing.
    before_data: bool = False

    @property
    def missing(self) -> bool:
        return self.stored_revision is None and not self.before_data

    @property
    def stale(self) -> bool:
        return self.stored_revision is not None and self.stored_revision != self.current_revision

    @property
    def due(self) -> bool:
        return (self.missing and self.in_horizon) or self.stale


def first_data_hour(session: Session) -> datetime | None:
    """The oldest hour with counters (None: no event recorded, or all past retention)."""
    first = session.scalar(select(func.min(EventCounter.hour_start)))
    return utc(first) if first is not None else None


def _before(first: datetime | None, end: datetime) -> bool:
    """Whether a window ending at END closed before the data began at FIRST."""
    return first is None or end <= first


def marked_hours(session: Session, now: datetime) -> dict[datetime, int]:
    """Closed hours marked as changed, still recomputable, with their mark's revision."""
    oldest = recomputable_from(now)
    return {h: rev for h, rev in late.marked(session, late.HOURLY) if h >= oldest and h + HOUR <= now}


def hour_states(session: Session, now: datetime, horizon_hours: int) -> list[WindowState]:
    """Every closed hour in the horizon, and every marked one (recomputable), oldest first."""
    oldest = recomputable_from(now)
    in_horizon = [h for h in closed_hours(now, horizon_hours) if h >= oldest]
    marks = marked_hours(session, now)
    if in_horizon:
        lo, hi = in_horizon[0], in_horizon[-1] + HOUR
        current = counter_revisions(session, lo, hi)
        stored = stored_revisions(session, HOURLY, lo, hi)
    else:
        lo = hi = oldest
        current, stored = {}, {}
    older = [h for h in marks if not lo <= h < hi]
    current.update(counter_revisions_at(session, older))
    stored.update(stored_revisions_at(session, HOURLY, older))
    hours = sorted(set(in_horizon) | set(marks))
    horizon = set(in_horizon)
    first = first_data_hour(session)
    return [WindowState(h, stored.get(h), current.get(h, 0), marks.get(h), in_horizon=h in horizon,
                        before_data=_before(first, h + HOUR))
            for h in hours]


def day_states(session: Session, now: datetime, horizon_days: int) -> list[WindowState]:
    """Every closed day in the horizon, and every closed day with a marked hour, oldest first."""
    oldest = recomputable_from(now)
    marked_days = {floor_day(h) for h in marked_hours(session, now)}
    in_horizon = [day_start(d) for d in closed_days(now, horizon_days) if day_start(d) >= oldest]
    days = sorted(set(in_horizon) | {d for d in marked_days if d + DAY <= now})
    if not days:
        return []
    current: dict[datetime, int] = {}
    stored: dict[datetime, int | None] = {}
    for lo, hi in _runs(days):
        for hour, revision in counter_revisions(session, lo, hi).items():
            current[floor_day(hour)] = current.get(floor_day(hour), 0) + revision
        stored.update(stored_revisions(session, DAILY, lo, hi))
    horizon = set(in_horizon)
    first = first_data_hour(session)
    return [WindowState(d, stored.get(d), current.get(d, 0), late=d in marked_days, in_horizon=d in horizon,
                        before_data=_before(first, d + DAY))
            for d in days]


def _runs(days: list[datetime]) -> list[tuple[datetime, datetime]]:
    """Sorted day starts as ranges of consecutive days: one query per run."""
    runs: list[tuple[datetime, datetime]] = []
    for d in days:
        if runs and runs[-1][1] == d:
            runs[-1] = (runs[-1][0], d + DAY)
        else:
            runs.append((d, d + DAY))
    return runs


def due_hours(session: Session, now: datetime, horizon_hours: int) -> list[datetime]:
    """Closed hours missing in the horizon, or stale at any age, oldest first."""
    return [s.start for s in hour_states(session, now, horizon_hours) if s.due]


def due_days(session: Session, now: datetime, horizon_days: int) -> list[date]:
    """Closed days missing in the horizon, or stale at any age, oldest first."""
    return [s.start.date() for s in day_states(session, now, horizon_days) if s.due]


def stale_days(session: Session, now: datetime, horizon_days: int) -> list[date]:
    """Closed days already computed whose counters changed since, at any age, oldest first."""
    return [s.start.date() for s in day_states(session, now, horizon_days) if s.stale]


@dataclass(frozen=True)
class LatePlan:
    hours: list[datetime]  # due hours (horizon and marked)
    # Stale days, refreshed now rather than at the next 01:30 run. Missing days in
    # the horizon are the daily wrapper's: due_days lists them.
    days: list[date]
    fresh_marks: list[tuple[datetime, int]]  # marks whose hour and day are both up to date


def hourly_plan(session: Session, now: datetime, horizon_hours: int, horizon_days: int) -> LatePlan:
    """What the hourly wrapper sends, and which marks it may clear."""
    hours = hour_states(session, now, horizon_hours)
    days = day_states(session, now, horizon_days)
    due_day_starts = {s.start for s in days if s.due}
    fresh = [
        (s.start, s.mark_revision) for s in hours
        if s.mark_revision is not None and not s.due and floor_day(s.start) not in due_day_starts
    ]
    return LatePlan(
        hours=[s.start for s in hours if s.due],
        days=[s.start.date() for s in days if s.stale],
        fresh_marks=fresh,
    )


def plan_and_clear(session: Session, now: datetime, horizon_hours: int, horizon_days: int) -> tuple[LatePlan, int]:
    """The hourly wrapper's plan, with the marks it makes obsolete removed; returns (plan, marks cleared).

    Marks of windows past recomputation go, and so do those of windows found up to date
    (at the revision read); the caller commits.
    """
    plan = hourly_plan(session, now, horizon_hours, horizon_days)
    late.clear_older(session, late.HOURLY, recomputable_from(now))
    return plan, late.clear(session, late.HOURLY, plan.fresh_marks)


def day_state(session: Session, day: date) -> WindowState:
    """One day's state, whatever its age (backfill)."""
    lo = day_start(day)
    current = sum(counter_revisions(session, lo, lo + DAY).values())
    stored = stored_revisions(session, DAILY, lo, lo + DAY)
    return WindowState(lo, stored.get(lo), current)  # asked for by name: due even before the data
