"""AI usage: recording calls (one per message, or a batch) and the daily rollup.

The wrapper fans out one task per due day, oldest first, for the same reasons as
the metrics wrappers (tasks/metrics.py): per-day retries and visibility.
"""

from __future__ import annotations

import logging
from typing import Any

from models.session import session_scope
from tasks.events import BATCHED
from voicepipe.clock import utcnow
from voicepipe.errors import InvalidInput
from voicepipe.maintenance.cleanup import usage_recomputable_from
from voicepipe.metrics import late
from voicepipe.settings import get_settings
from voicepipe.usage.recording import record_usage
from voicepipe.usage.rollup import aggregate_usage_day, usage_plan
from voicepipe.windows import parse_day
from worker.declare import check_batch_size, public_task, sent
from worker.ids import current_task_id, with_id

log = logging.getLogger(__name__)

FANOUT_EXPIRES_S = 2 * 3600


@public_task("voicepipe.usage.record", time_limit=60, parks=True, strategy=BATCHED)
def record(
    *, id: str | None = None, occurred_at: str | None = None, organization_id: str, coach_id: str | None = None,
    player_id: str | None = None, operation: str, model: str, input_tokens: int = 0, cached_tokens: int = 0,
    output_tokens: int = 0, cost: float,
) -> None:
    """Record one AI call (a repeated id is a no-op)."""
    with session_scope() as session:
        record_usage(session, [with_id(sent(), "id", current_task_id(), 0)])


@public_task("voicepipe.usage.record_batch", time_limit=120, parks=True)
def record_batch(*, records: list[dict[str, Any]]) -> int:
    """Record a batch of AI calls in one transaction."""
    if not isinstance(records, list):
        raise InvalidInput.field("records", "expected a list of AI usage records")
    check_batch_size("records", records)
    task_id = current_task_id()
    records = [with_id(record, "id", task_id, i) for i, record in enumerate(records)]
    with session_scope() as session:
        return record_usage(session, records)


@public_task("voicepipe.usage.aggregate_day", time_limit=300)
def aggregate_day(*, day: str) -> int:
    """Roll up one UTC day of AI usage per organization (idempotent upsert)."""
    start = parse_day(day)
    with session_scope() as session:
        return aggregate_usage_day(session, start)


@public_task("voicepipe.usage.aggregate_daily_due", time_limit=60)
def aggregate_daily_due() -> None:
    """Send one usage aggregate_day per closed day (in the horizon, or late) whose rollups differ from the log."""
    now = utcnow()
    with session_scope() as session:
        plan = usage_plan(session, now, get_settings().daily_horizon_days)
        late.clear_older(session, late.USAGE_DAY, usage_recomputable_from(now))
        late.clear(session, late.USAGE_DAY, plan.fresh_marks)
    days = plan.days
    for day in days:
        aggregate_day.apply_async(kwargs={"day": day.isoformat()}, expires=FANOUT_EXPIRES_S)
    log.info("usage wrapper now=%s due_days=%s", now.isoformat(), [d.isoformat() for d in days])
