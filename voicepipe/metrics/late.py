"""Marks of windows whose source changed after they closed (late events, rebuilds, late AI calls).

A beat wrapper compares a window's sources with what its snapshot was computed from,
but only over its catch-up horizon; a change older than that would never be seen.
So whoever changes the source of an old window marks it here, in the same
transaction, and the wrappers read the marks: the cost is the number of late
windows, however far back they lie. A mark carries a fresh revision each time it is
touched; a wrapper removes a mark only at the revision it read and found fresh, so
a change that commits while the wrapper works keeps (or re-creates) its mark.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import delete, select, text, tuple_
from sqlalchemy.orm import Session

from models.metrics import LateWindow

HOURLY = "hourly"
USAGE_DAY = "usage_day"

# Upserted in period order: concurrent recorders lock marks in one order (no deadlock).
_MARK_SQL = text(
    "INSERT INTO late_windows (kind, period_start) "
    "SELECT :kind, s FROM unnest(CAST(:starts AS timestamptz[])) AS s ORDER BY s "
    "ON CONFLICT (kind, period_start) DO UPDATE "
    "SET revision = nextval('counter_revision_seq'), marked_at = now()"
)


def closed_before(starts: Iterable[datetime], now: datetime, period: timedelta) -> list[datetime]:
    """The windows (by start) already closed at now: the ones a change makes late.

    Every closed window is marked, not only those past the wrappers' horizons: a
    wrapper that does not run for a while (beat down, a horizon set to 1) must still
    find every change made meanwhile.
    """
    return sorted({s for s in starts if s + period <= now})


def mark(session: Session, kind: str, starts: Iterable[datetime]) -> None:
    """Mark windows (by start) as changed since they closed, in the caller's transaction."""
    ordered = sorted(set(starts))
    if ordered:
        session.execute(_MARK_SQL, {"kind": kind, "starts": ordered})


def marked(session: Session, kind: str) -> list[tuple[datetime, int]]:
    """Every mark of a kind, oldest window first, with the revision it was read at."""
    rows = session.execute(
        select(LateWindow.period_start, LateWindow.revision)
        .where(LateWindow.kind == kind)
        .order_by(LateWindow.period_start)
    ).all()
    return [(start, int(revision)) for start, revision in rows]


def clear(session: Session, kind: str, seen: Iterable[tuple[datetime, int]]) -> int:
    """Remove marks found fresh, each only if it still has the revision that was read."""
    pairs = list(seen)
    if not pairs:
        return 0
    result = session.execute(
        delete(LateWindow).where(
            LateWindow.kind == kind,
            tuple_(LateWindow.period_start, LateWindow.revision).in_(pairs),
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def clear_older(session: Session, kind: str, oldest: datetime) -> int:
    """Drop marks of windows past recomputation (their sources are being deleted)."""
    result = session.execute(delete(LateWindow).where(LateWindow.kind == kind, LateWindow.period_start < oldest))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
