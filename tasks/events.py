"""Recording pipeline events: one per message, or a batch per message."""

from __future__ import annotations

import logging
from typing import Any

from models.session import session_scope
from voicepipe.events.recording import record_event, record_events
from voicepipe.settings import get_settings
from worker.declare import check_batch_size, public_task, sent
from worker.ids import current_task_id, with_id

log = logging.getLogger(__name__)


# One event (or AI call) per message, as producers send them: the worker records them in
# batches, one transaction each (worker/batching.py); the task function is the
# per-message path (redeliveries, retries, refusals, a batch that failed).
BATCHED = "worker.batching:batched"


@public_task("voicepipe.events.record", time_limit=60, parks=True, strategy=BATCHED)
def record(
    *, event_id: str | None = None, event_type: str, artifact_id: str | None = None,
    organization_id: str | None = None, coach_id: str | None = None, stage: str | None = None,
    occurred_at: str | None = None, duration_ms: float | None = None, error_code: str | None = None,
    error_message: str | None = None, metadata: dict[str, Any] | None = None,
) -> bool:
    """Record one pipeline event and its counters; True if new (a repeated event_id is a no-op)."""
    # Without an event_id, the id comes from the task id: a redelivery records nothing twice.
    event = with_id(sent(), "event_id", current_task_id(), 0)
    with session_scope() as session:
        new = record_event(session, event)
    if not new:
        log.info("duplicate event ignored event_id=%s", event.get("event_id"))
    return new


@public_task("voicepipe.events.record_batch", time_limit=120, parks=True)
def record_batch(*, events: list[dict[str, Any]]) -> dict[str, int]:
    """Record a batch of pipeline events in one transaction."""
    check_batch_size("events", events)
    if isinstance(events, list):
        task_id = current_task_id()
        events = [with_id(event, "event_id", task_id, i) for i, event in enumerate(events)]
    with session_scope() as session:
        result = record_events(session, events, max_late_hours=get_settings().max_late_hours)
    log.info("event batch recorded inserted=%d duplicates=%d", result.inserted, result.duplicates)
    return {"inserted": result.inserted, "duplicates": result.duplicates}
