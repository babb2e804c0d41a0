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


def check_event_time(ts: datetime, field: str, *, now: datetime) -> datetime:
    """An event's occurred_at: within counter retention and not in the future."""
    return _check(ts, field, now=now, oldest=cutoffs(now).counters,
                  why="counter retention (VOICEPIPE_RETENTION_COUNTERS_DAYS)")


def check_usage_time(ts: datetime, field: str, *, now: datetime) -> datetime:
    """An AI call's occurred_at: within the usage log's retention and not in the future."""
    return _check(ts, field, now=now, oldest=cutoffs(now).ai_usage,
                  why="AI usage log retention (VOICEPIPE_RETENTION_AI_USAGE_DAYS)")


def _check(ts: datetime, field: str, *, now: datetime, oldest: datetime, why: str) -> datetime:
    newest = newest_accepted(now)
    if ts > newest:
        raise InvalidInput.field(
            field, f"{ts.isoformat()} is in the future (now {now.isoformat()}, clock skew allowed up to "
                   f"{newest.isoformat()}, VOICEPIPE_MAX_CLOCK_SKEW_SECONDS)")
    if ts < oldest:
        raise InvalidInput.field(
            field, f"{ts.isoformat()} is older than {oldest.isoformat()}, the oldest time kept by {why}: "
                   "it could never reach a snapshot")
    return ts
