"""Metrics tasks: per-window aggregation and the beat wrappers that find due windows.

The wrappers fan out, one task per due window, sent oldest first, rather than
aggregating inline: each window then has its own bounded retries of transient
errors, its own SUCCESS or FAILURE in Flower, and a failing window cannot stop the
others behind it; several worker processes share a long catch-up. The wrappers
themselves only read (a few indexed queries) and finish in milliseconds.

A window whose task fails stays due (missing or stale) and its failure is counted in
aggregation_windows, so the next wrapper run sends it again: never retried forever,
never forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any, TypeVar

from models.session import session_scope
from voicepipe.clock import utcnow
from voicepipe.errors import REFUSALS
from voicepipe.metrics import daily, hourly
from voicepipe.metrics.bookkeeping import DAILY, HOURLY, record_failure
from voicepipe.metrics.due import due_days, plan_and_clear
from voicepipe.settings import get_settings
from voicepipe.windows import day_start, parse_day, parse_hour
from worker.declare import public_task

log = logging.getLogger(__name__)
T = TypeVar("T")

# A fanned-out window task not started within two hours is dropped by the worker:
# by then later wrapper runs have sent the window again if it is still due, so a
# long outage does not leave a pile of redundant messages to chew through.
FANOUT_EXPIRES_S = 2 * 3600


@contextmanager
def failures_recorded(period_type: str, start: datetime) -> Iterator[None]:
    """Count a failed attempt of a window in its own transaction (the task's rolled back)."""
    try:
        yield
    except REFUSALS:
        raise
    except Exception as exc:
        try:
            with session_scope() as session:
                record_failure(session, period_type, start, f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("could not record failure window=%s %s", period_type, start.isoformat())
        raise


def _run(period_type: str, start: datetime, work: Callable[[Any], T]) -> T:
    with failures_recorded(period_type, start), session_scope() as session:
        return work(session)


@public_task("voicepipe.metrics.aggregate_hour", time_limit=300)
def aggregate_hour(*, window_start: str) -> int:
    """Aggregate one closed UTC hour from its counters (idempotent upsert)."""
    hour = parse_hour(window_start)
    return _run(HOURLY, hour, lambda session: hourly.aggregate_hour(session, hour))


@public_task("voicepipe.metrics.aggregate_day", time_limit=600)
def aggregate_day(*, day: str) -> int:
    """Aggregate one UTC day from its 24 hourly snapshots (refreshing stale hours first)."""
    start = parse_day(day)
    return _run(DAILY, day_start(start), lambda session: daily.aggregate_day(session, start))


def send_hours(hours: list[datetime]) -> None:
    for hour in hours:
        aggregate_hour.apply_async(kwargs={"window_start": hour.isoformat()}, expires=FANOUT_EXPIRES_S)


def send_days(days: list[date]) -> None:
    for day in days:
        aggregate_day.apply_async(kwargs={"day": day.isoformat()}, expires=FANOUT_EXPIRES_S)


@public_task("voicepipe.metrics.aggregate_hourly_due", time_limit=60)
def aggregate_hourly_due() -> None:
    """Send one aggregate_hour per due hour, and one aggregate_day per stale closed day."""
    now = utcnow()  # at execution, never when beat emitted the message
    settings = get_settings()
    with session_scope() as session:
        # Late events also make their (already computed) day stale: refresh it now
        # rather than at the next 01:30 run. Missing days wait for the daily run.
        plan, cleared = plan_and_clear(session, now, settings.hourly_horizon_hours, settings.daily_horizon_days)
    hours, days = plan.hours, plan.days
    send_hours(hours)
    send_days(days)
    log.info(
        "hourly wrapper now=%s due_hours=%d stale_days=%d late_marks_cleared=%d first=%s last=%s",
        now.isoformat(), len(hours), len(days), cleared,
        hours[0].isoformat() if hours else "-", hours[-1].isoformat() if hours else "-",
    )


@public_task("voicepipe.metrics.aggregate_daily_due", time_limit=60)
def aggregate_daily_due() -> None:
    """Send one aggregate_day per missing closed day in the horizon, and per stale or late day."""
    now = utcnow()
    with session_scope() as session:
        days = due_days(session, now, get_settings().daily_horizon_days)
    send_days(days)
    log.info("daily wrapper now=%s due_days=%s", now.isoformat(), [d.isoformat() for d in days])
