"""Delete rows past their retention, in bounded batches with a commit per batch.

Every cutoff is a UTC midnight, ``floor_day(now) - retention``: whole days go at
once, so a day is either complete or gone (a rollup or snapshot recomputed later
never sees half a day). Each table's delete walks its time index from the oldest
row up to the cutoff, however old (the reference only looked 72 hours behind it).

Retention (settings, days): pipeline events 30, counters 35, hourly snapshots 90,
daily snapshots 730, AI usage log 90, AI usage daily rollups 730. Counters outlive
the catch-up horizon (7 days) by far, and windows whose counters may be gone are
never recomputed (``recomputable_from``), so cleanup can never zero a snapshot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select, text
from sqlalchemy.orm import Session

from models.events import EventCounter, PipelineEvent
from models.metrics import AggregationWindow, MetricsSnapshot
from models.usage import AiUsageDailyAggregate, AiUsageLog
from voicepipe.settings import Settings, get_settings
from voicepipe.windows import floor_day

log = logging.getLogger(__name__)

# Rows per DELETE: small enough that each transaction holds its locks for well under
# a second and the WAL burst stays small; large enough to clear a day of events in
# a few hundred round trips.
BATCH_SIZE = 5000


@dataclass(frozen=True)
class Cutoffs:
    events: datetime
    counters: datetime
    hourly: datetime
    daily: datetime
    ai_usage: datetime
    ai_usage_daily: date
    records: datetime


def cutoffs(now: datetime, settings: Settings | None = None) -> Cutoffs:
    s = settings or get_settings()
    midnight = floor_day(now)
    def days(n: int) -> datetime:
        return midnight - timedelta(days=n)
    return Cutoffs(
        events=days(s.retention_events_days),
        counters=days(s.retention_counters_days),
        hourly=days(s.retention_hourly_days),
        daily=days(s.retention_daily_days),
        ai_usage=days(s.retention_ai_usage_days),
        ai_usage_daily=days(s.retention_ai_usage_daily_days).date(),
        records=days(s.retention_records_days),
    )


def recomputable_from(now: datetime) -> datetime:
    """The oldest hour whose counters are certainly complete (cleanup deletes older ones)."""
    return cutoffs(now).counters


def usage_recomputable_from(now: datetime) -> datetime:
    """The oldest day whose AI usage log rows are certainly complete."""
    return cutoffs(now).ai_usage


@dataclass
class CleanupResult:
    deleted: dict[str, int] = field(default_factory=dict)
    complete: bool = True

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def _older_than(
    engine: Engine,
    model: Any,
    column: Any,
    cutoff: object,
    result: CleanupResult,
    deadline: float | None,
    batch_size: int,
) -> None:
    """Delete a table's rows whose time column is before cutoff, oldest first, by its index."""
    _batches(
        engine, model.__tablename__,
        _by_ids(lambda n: select(model.id).where(column < cutoff).order_by(column).limit(n),
                lambda ids: delete(model).where(model.id.in_(ids))),
        result, deadline, batch_size,
    )


# Records of handled incidents, by the time they were last touched. A parked dead letter is
# work still to do and stays; the staff audit stays too (read-only for the application).
_RECORDS = (
    ("dead_letters", "status <> 'parked' AND coalesce(discarded_at, replayed_at, last_failed_at) < :cutoff"),
    ("retry_refusals", "refused_at < :cutoff"),
    ("signature_refusals", "refused_at < :cutoff"),
    ("task_deliveries", "updated_at < :cutoff"),
)


def _records(engine: Engine, cutoff: datetime, result: CleanupResult) -> None:
    for table, condition in _RECORDS:
        with Session(engine) as session, session.begin():
            deleted = session.execute(text(f"DELETE FROM {table} WHERE {condition}"), {"cutoff": cutoff})
        result.deleted[table] = int(deleted.rowcount or 0)  # type: ignore[attr-defined]


# At most :n breakdown rows of rollups older than :cutoff, by primary key, in one statement.
_OLD_BREAKDOWN_ROWS = text(
    "DELETE FROM ai_usage_daily_breakdowns AS b USING (SELECT o.rollup_id, o.kind, o.key "
    "FROM ai_usage_daily_breakdowns AS o JOIN ai_usage_daily_aggregates AS a ON a.id = o.rollup_id "
    "WHERE a.day < :cutoff ORDER BY a.day LIMIT :n) AS old "
    "WHERE b.rollup_id = old.rollup_id AND b.kind = old.kind AND b.key = old.key"
)


def _by_ids(
    select_ids: Callable[[int], object], delete_ids: Callable[[list[object]], object]
) -> Callable[[Session, int], int]:
    """A batch: the ids of at most n rows, then those rows deleted; returns how many."""
    def delete_batch(session: Session, n: int) -> int:
        ids = list(session.execute(select_ids(n)).scalars())  # type: ignore[call-overload]
        if ids:
            session.execute(delete_ids(ids))  # type: ignore[call-overload]
        return len(ids)

    return delete_batch


def _batches(
    engine: Engine,
    name: str,
    delete_batch: Callable[[Session, int], int],
    result: CleanupResult,
    deadline: float | None,
    batch_size: int,
) -> None:
    """Delete batches of at most batch_size rows, a transaction each, until one comes short."""
    total = 0
    while True:
        if deadline is not None and time.monotonic() > deadline:
            result.complete = False
            break
        with Session(engine) as session, session.begin():
            deleted = delete_batch(session, batch_size)
        total += deleted
        if deleted < batch_size:
            break
    result.deleted[name] = total
    if total:
        log.info("retention cleanup table=%s deleted=%d", name, total)


def _snapshot_ids(period_type: str, cutoff: datetime) -> Callable[[int], object]:
    def select_ids(n: int) -> object:
        return (
            select(MetricsSnapshot.id)
            .where(MetricsSnapshot.period_type == period_type, MetricsSnapshot.period_start < cutoff)
            .order_by(MetricsSnapshot.period_start)
            .limit(n)
        )

    return select_ids


def run_cleanup(
    engine: Engine,
    now: datetime,
    *,
    batch_size: int = BATCH_SIZE,
    deadline: float | None = None,
) -> CleanupResult:
    """Delete everything older than each table's cutoff; one transaction per batch.

    ``deadline`` (time.monotonic()) stops between batches so a task ends before its
    time limit; what is left is reached by the next run (``complete`` is then False).
    """
    c = cutoffs(now)
    result = CleanupResult()
    # The oldest rows first, by the table's time index, so each batch is an index range.
    _older_than(engine, PipelineEvent, PipelineEvent.occurred_at, c.events, result, deadline, batch_size)
    _older_than(engine, EventCounter, EventCounter.hour_start, c.counters, result, deadline, batch_size)
    for period_type, cutoff in (("hourly", c.hourly), ("daily", c.daily)):
        _batches(
            engine, f"metrics_snapshots_{period_type}",
            _by_ids(_snapshot_ids(period_type, cutoff),
                    lambda ids: delete(MetricsSnapshot).where(MetricsSnapshot.id.in_(ids))),
            result, deadline, batch_size,
        )
        # The bookkeeping of a window goes with its snapshots (few rows: one per window).
        with Session(engine) as session, session.begin():
            session.execute(
                delete(AggregationWindow).where(
                    AggregationWindow.period_type == period_type, AggregationWindow.period_start < cutoff
                )
            )
    _older_than(engine, AiUsageLog, AiUsageLog.occurred_at, c.ai_usage, result, deadline, batch_size)
    # A rollup's breakdown rows (hundreds each) go first, in batches of rows, so that the
    # rollups' own batches cascade to none. (Stopped by the deadline in between, rollups
    # past retention are left without rows until the next run deletes them.)
    _batches(
        engine, "ai_usage_daily_breakdowns",
        lambda session, n: int(session.execute(_OLD_BREAKDOWN_ROWS, {"cutoff": c.ai_usage_daily, "n": n})
                               .rowcount),  # type: ignore[attr-defined]
        result, deadline, batch_size,
    )
    _older_than(engine, AiUsageDailyAggregate, AiUsageDailyAggregate.day, c.ai_usage_daily,
                result, deadline, batch_size)
    _records(engine, c.records, result)
    # A nonce only has to outlive the messages that may still carry it (older ones are stale).
    from models.security import UsedNonce
    from voicepipe.settings import get_settings

    nonces_until = now - 2 * timedelta(seconds=get_settings().signature_max_age_seconds)
    _batches(
        engine, UsedNonce.__tablename__,
        _by_ids(lambda n: select(UsedNonce.nonce).where(UsedNonce.used_at < nonces_until)
                .order_by(UsedNonce.used_at).limit(n),
                lambda ids: delete(UsedNonce).where(UsedNonce.nonce.in_(ids))),
        result, deadline, batch_size,
    )
    return result
