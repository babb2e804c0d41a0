"""The times an event or an AI call may carry: not in the future, not past retention.

An event stamped in the future (beyond a small allowance for producers' clock skew)
would sit in a counter row that no window reads yet and that cleanup, which deletes
the oldest rows first, would keep for years. An event older than counter retention
would be stored and reported as inserted, yet could never reach a snapshot: its
window is past recomputation (``recomputable_from``). Both are refused with
InvalidInput naming the field, before anything is written. AI calls follow the
retention of the raw usage log, the source of their daily rollups.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from voicepipe.errors import InvalidInput
from voicepipe.maintenance.cleanup import cutoffs
from voicepipe.settings import get_settings


def newest_accepted(now: datetime) -> datetime:
    return now + timedelta(seconds=get_settings().max_clock_skew_seconds)


# (now, settings, oldest event, oldest AI call, newest accepted) of the latest call: a batch
# checks every item against the same `now`, and working the bounds out again for each of
# 1,000 events cost a tenth of the batch's validation.
_bounds_memo: tuple[datetime, object, datetime, datetime, datetime] | None = None


def _bounds(now: datetime) -> tuple[datetime, datetime, datetime]:
    global _bounds_memo
    settings = get_settings()
    memo = _bounds_memo
    if memo is None or memo[0] != now or memo[1] is not settings:
        kept = cutoffs(now, settings)
        memo = _bounds_memo = (now, settings, kept.counters, kept.ai_usage,
                               now + timedelta(seconds=settings.max_clock_skew_seconds))
    return memo[2], memo[3], memo[4]


def event_time_bounds(now: datetime) -> tuple[datetime, datetime]:
    """(oldest, newest) occurred_at an event may carry at `now`, both included."""
    oldest, _, newest = _bounds(now)
    return oldest, newest


def check_event_time(ts: datetime, field: str, *, now: datetime) -> datetime:
    """An event's occurred_at: within counter retention and not in the future."""
    oldest, _, newest = _bounds(now)
    return _check(ts, field, now=now, oldest=oldest, newest=newest,
                  why="counter retention (VOICEPIPE_RETENTION_COUNTERS_DAYS)")


def check_usage_time(ts: datetime, field: str, *, now: datetime) -> datetime:
    """An AI call's occurred_at: within the usage log's retention and not in the future."""
    _, oldest, newest = _bounds(now)
    return _check(ts, field, now=now, oldest=oldest, newest=newest,
                  why="AI usage log retention (VOICEPIPE_RETENTION_AI_USAGE_DAYS)")


def _check(ts: datetime, field: str, *, now: datetime, oldest: datetime, newest: datetime, why: str) -> datetime:
    if ts > newest:
        raise InvalidInput.field(
            field, f"{ts.isoformat()} is in the future (now {now.isoformat()}, clock skew allowed up to "
                   f"{newest.isoformat()}, VOICEPIPE_MAX_CLOCK_SKEW_SECONDS)")
    if ts < oldest:
        raise InvalidInput.field(
            field, f"{ts.isoformat()} is older than {oldest.isoformat()}, the oldest time kept by {why}: "
                   "it could never reach a snapshot")
    return ts
