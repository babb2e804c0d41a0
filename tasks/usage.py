"""AI usage rollup tasks. (voicepipe.usage.record lives in tasks/events.py.)

The wrapper fans out one task per due day, oldest first, for the same reasons as
the metrics wrappers (tasks/metrics.py): per-day retries and visibility.
"""

from __future__ import annotations

import logging
from typing import Any

from models.session import session_scope
from tasks._base import public_task, take
from voicepipe import late
from voicepipe.clock import utcnow
from voicepipe.maintenance.cleanup import usage_recomputable_from
from voicepipe.settings import get_settings
from voicepipe.usage.rollup import aggregate_usage_day, usage_plan
from voicepipe.windows import parse_day

log = logging.getLogger(__name__)

FANOUT_EXPIRES_S = 2 * 3600


@public_task("voicepipe.usage.aggregate_day", time_limit=300)
def usage_aggregate_day(**kwargs: Any) -> int:
    """Roll up one UTC day of AI usage per organization (idempotent upsert)."""
    day = parse_day(take(kwargs, required=("day",))["day"])
    with session_scope() as session:
        return aggregate_usage_day(session, day)


@public_task("voicepipe.usage.aggregate_daily_due", time_limit=60)
def usage_aggregate_daily_due(**kwargs: Any) -> None:
    """Send one usage aggregate_day per closed day (in the horizon, or late) whose rollups differ from the log."""
    take(kwargs)
    now = utcnow()
    with session_scope() as session:
        plan = usage_plan(session, now, get_settings().daily_horizon_days)
        late.clear_older(session, late.USAGE_DAY, usage_recomputable_from(now))
        late.clear(session, late.USAGE_DAY, plan.fresh_marks)
    days = plan.days
    for day in days:
        usage_aggregate_day.apply_async(kwargs={"day": day.isoformat()}, expires=FANOUT_EXPIRES_S)
    log.info("usage wrapper now=%s due_days=%s", now.isoformat(), [d.isoformat() for d in days])
