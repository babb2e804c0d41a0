"""The aggregation_windows bookkeeping: window locks, counter revisions, success and failure.

A window's snapshot is fresh when the sum of its counter rows' revisions equals the
``source_revision`` remembered when it was computed. Every counter change takes a
fresh, larger value of counter_revision_seq, so a late event or a counter rebuild
changes the sum and makes the window (and its day) stale.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, cast, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.events import EventCounter
from models.metrics import AggregationWindow

HOURLY = "hourly"
DAILY = "daily"

# pg_advisory_xact_lock(int4, int4): one namespace per period type, the window's
# number (hours or days since the epoch) as the second key. Both fit in int4.
_LOCK_NAMESPACE = {HOURLY: 0x76700001, DAILY: 0x76700002}
_SECONDS = {HOURLY: 3600, DAILY: 86400}
# last_error keeps the start of a long message only: enough to recognise the error.
MAX_ERROR_CHARS = 2000


def utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC)


def lock_window(session: Session, period_type: str, start: datetime) -> None:
    """Serialize writers of one window until the end of the transaction."""
    number = int(start.timestamp()) // _SECONDS[period_type]
    session.execute(select(func.pg_advisory_xact_lock(_LOCK_NAMESPACE[period_type], number)))


def counter_revisions(session: Session, lo: datetime, hi: datetime) -> dict[datetime, int]:
    """Sum of counter revisions per hour in [lo, hi); hours without counters are absent (sum 0)."""
    rows = session.execute(
        select(EventCounter.hour_start, cast(func.sum(EventCounter.revision), BigInteger))
        .where(EventCounter.hour_start >= lo, EventCounter.hour_start < hi)
        .group_by(EventCounter.hour_start)
    ).all()
    return {utc(hour): int(total) for hour, total in rows}


def counter_revisions_at(session: Session, hours: Iterable[datetime]) -> dict[datetime, int]:
    """Sum of counter revisions of each of the given hours (absent: no counters)."""
    wanted = sorted(set(hours))
    if not wanted:
        return {}
    rows = session.execute(
        select(EventCounter.hour_start, cast(func.sum(EventCounter.revision), BigInteger))
        .where(EventCounter.hour_start.in_(wanted))
        .group_by(EventCounter.hour_start)
    ).all()
    return {utc(hour): int(total) for hour, total in rows}


def stored_revisions_at(
    session: Session, period_type: str, starts: Iterable[datetime]
) -> dict[datetime, int | None]:
    """source_revision of each of the given windows that has bookkeeping."""
    wanted = sorted(set(starts))
    if not wanted:
        return {}
    rows = session.execute(
        select(AggregationWindow.period_start, AggregationWindow.source_revision).where(
            AggregationWindow.period_type == period_type, AggregationWindow.period_start.in_(wanted)
        )
    ).all()
    return {utc(start): rev for start, rev in rows}


def stored_revisions(
    session: Session, period_type: str, lo: datetime, hi: datetime
) -> dict[datetime, int | None]:
    """source_revision per window start in [lo, hi); None = never succeeded (failures only)."""
    rows = session.execute(
        select(AggregationWindow.period_start, AggregationWindow.source_revision).where(
            AggregationWindow.period_type == period_type,
            AggregationWindow.period_start >= lo,
            AggregationWindow.period_start < hi,
        )
    ).all()
    return {utc(start): rev for start, rev in rows}


def mark_computed(session: Session, period_type: str, start: datetime, source_revision: int) -> None:
    """Remember the revision a window was computed from; a success clears its failures."""
    stmt = pg_insert(AggregationWindow).values(
        period_type=period_type,
        period_start=start,
        source_revision=source_revision,
        computed_at=func.now(),
        failures=0,
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[AggregationWindow.period_type, AggregationWindow.period_start],
            set_={
                "source_revision": stmt.excluded.source_revision,
                "computed_at": stmt.excluded.computed_at,
                "failures": 0,
                "last_error": None,
                "last_error_at": None,
            },
        )
    )


def record_failure(session: Session, period_type: str, start: datetime, error: str) -> None:
    """Count one more consecutive failure of a window (kept until it next succeeds)."""
    message = error[:MAX_ERROR_CHARS]
    stmt = pg_insert(AggregationWindow).values(
        period_type=period_type,
        period_start=start,
        failures=1,
        last_error=message,
        last_error_at=func.now(),
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[AggregationWindow.period_type, AggregationWindow.period_start],
            set_={
                "failures": AggregationWindow.failures + 1,
                "last_error": stmt.excluded.last_error,
                "last_error_at": stmt.excluded.last_error_at,
            },
        )
    )


def failing_windows(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """Windows whose latest attempt failed, newest failure first."""
    rows = session.execute(
        select(AggregationWindow)
        .where(AggregationWindow.failures > 0)
        .order_by(AggregationWindow.last_error_at.desc())
        .limit(limit)
    ).scalars()
    return [
        {
            "period_type": w.period_type,
            "period_start": utc(w.period_start),
            "failures": w.failures,
            "last_error": w.last_error,
            "last_error_at": utc(w.last_error_at) if w.last_error_at else None,
            "ever_computed": w.source_revision is not None,
        }
        for w in rows
    ]


def newest_computed(session: Session, period_type: str) -> datetime | None:
    value = session.scalar(
        select(func.max(AggregationWindow.period_start)).where(
            AggregationWindow.period_type == period_type,
            AggregationWindow.source_revision.is_not(None),
        )
    )
    return utc(value) if value is not None else None


def sum_revisions(values: Iterable[int | None]) -> int:
    return sum(v or 0 for v in values)
