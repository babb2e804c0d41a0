"""The cleanup *task* through a real worker, with every retention variable set.

Each cleaned table gets rows just before, at and just after every table's cutoff
(so a table that used another table's retention would keep or lose the wrong rows),
plus a very old and a recent row. The expected survivors are worked out here from
the variables (cutoff = floor_day(now) - N days, domain of voicepipe/maintenance/cleanup.py)
and compared with what is left in each table, never with the task's deletion counts.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import (
    AggregationWindow,
    AiUsageDailyAggregate,
    AiUsageLog,
    EventCounter,
    MetricsSnapshot,
    PipelineEvent,
)
from tests.support.helpers import Proc, wait_for

# Small values, each allowed by settings' minimums (counters and the AI usage log: 8 days).
RETENTION = {
    "VOICEPIPE_RETENTION_EVENTS_DAYS": 2,
    "VOICEPIPE_RETENTION_COUNTERS_DAYS": 8,
    "VOICEPIPE_RETENTION_HOURLY_DAYS": 3,
    "VOICEPIPE_RETENTION_DAILY_DAYS": 12,
    "VOICEPIPE_RETENTION_AI_USAGE_DAYS": 9,
    "VOICEPIPE_RETENTION_AI_USAGE_DAILY_DAYS": 15,
}
SECOND, HOUR, DAY = timedelta(seconds=1), timedelta(hours=1), timedelta(days=1)


def times_around(cutoffs: list[datetime], step: timedelta, old: datetime, recent: datetime) -> list[datetime]:
    """One step before, at and one step after every cutoff, plus a very old and a recent time."""
    return sorted({c + k * step for c in cutoffs for k in (-1, 0, 1)} | {old, recent})


def test_the_cleanup_task_leaves_exactly_the_rows_inside_each_tables_retention(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    midnight = now.replace(hour=0, minute=0, second=0)
    cutoff = {name: midnight - days * DAY for name, days in RETENTION.items()}
    all_cutoffs = list(cutoff.values())
    old = midnight - 400 * DAY

    instants = times_around(all_cutoffs, SECOND, old, now - HOUR)
    hours = times_around(all_cutoffs, HOUR, old, midnight - HOUR)
    days = times_around(all_cutoffs, DAY, old, midnight - DAY)
    for ts in instants:
        session.add(PipelineEvent(id=uuid.uuid4(), event_type="artifact_received", occurred_at=ts,
                                  time_window=ts.strftime("%Y-%m-%d-%H")))
        session.add(AiUsageLog(occurred_at=ts, organization_id="org-1", operation="parent_summary", model="m",
                               input_tokens=10, cached_tokens=0, output_tokens=5, cost=0.01))
    for ts in hours:
        session.add(EventCounter(organization_id="org-1", hour_start=ts))
        session.add(MetricsSnapshot(organization_id=None, period_type="hourly", period_start=ts,
                                    period_end=ts + HOUR))
        session.add(AggregationWindow(period_type="hourly", period_start=ts, source_revision=1))
    for ts in days:
        session.add(MetricsSnapshot(organization_id=None, period_type="daily", period_start=ts, period_end=ts + DAY))
        session.add(AggregationWindow(period_type="daily", period_start=ts, source_revision=1))
        session.add(AiUsageDailyAggregate(day=ts.date(), organization_id="org-1", total_cost=0.01, total_calls=1,
                                          total_input_tokens=10, total_cached_tokens=0, total_output_tokens=5,
                                          cache_hit_rate=0))
    session.commit()

    worker = start_worker(queues="metrics", VOICEPIPE_FAKE_NOW=now.isoformat(),
                          **{name: str(days) for name, days in RETENTION.items()})
    client.send_task("voicepipe.maintenance.cleanup", queue="metrics")
    done = re.compile(r"Task voicepipe\.maintenance\.cleanup\[[\w-]+\] (succeeded|raised)")
    wait_for(lambda: done.search(worker.log()), timeout=120, what="the cleanup task to finish")
    assert "succeeded" in done.search(worker.log()).group(0), worker.log()[-3000:]  # type: ignore[union-attr]

    def left(column: object, *where: object) -> list[datetime]:
        session.rollback()  # see the worker's commits
        return sorted(session.scalars(select(column).where(*where)))  # type: ignore[call-overload]

    def kept(times: list[datetime], variable: str) -> list[datetime]:
        return [t for t in times if t >= cutoff[variable]]

    assert left(PipelineEvent.occurred_at) == kept(instants, "VOICEPIPE_RETENTION_EVENTS_DAYS")
    assert left(AiUsageLog.occurred_at) == kept(instants, "VOICEPIPE_RETENTION_AI_USAGE_DAYS")
    assert left(EventCounter.hour_start) == kept(hours, "VOICEPIPE_RETENTION_COUNTERS_DAYS")
    hourly = kept(hours, "VOICEPIPE_RETENTION_HOURLY_DAYS")
    assert left(MetricsSnapshot.period_start, MetricsSnapshot.period_type == "hourly") == hourly
    assert left(AggregationWindow.period_start, AggregationWindow.period_type == "hourly") == hourly
    daily = kept(days, "VOICEPIPE_RETENTION_DAILY_DAYS")
    assert left(MetricsSnapshot.period_start, MetricsSnapshot.period_type == "daily") == daily
    assert left(AggregationWindow.period_start, AggregationWindow.period_type == "daily") == daily
    usage_days: list[date] = [d.date() for d in kept(days, "VOICEPIPE_RETENTION_AI_USAGE_DAILY_DAYS")]
    assert left(AiUsageDailyAggregate.day) == usage_days
    # The variables mattered: under the defaults (30 days and more) far more would be left.
    assert len(left(PipelineEvent.occurred_at)) < len(instants) - 1
