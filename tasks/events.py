"""Recording pipeline events and AI usage rows."""

from __future__ import annotations

import logging
from typing import Any

from models.session import session_scope
from tasks._base import public_task, take
from voicepipe.events.recording import record_event, record_events
from voicepipe.usage.recording import record_usage

log = logging.getLogger(__name__)


@public_task("voicepipe.events.record", time_limit=60)
def record(**event: Any) -> None:
    """Record one pipeline event and its counters (a repeated event_id is a no-op)."""
    with session_scope() as session:
        new = record_event(session, event)
    if not new:
        log.info("duplicate event ignored event_id=%s", event.get("event_id"))


@public_task("voicepipe.events.record_batch", time_limit=120)
def record_batch(**kwargs: Any) -> dict[str, int]:
    """Record a batch of pipeline events in one transaction."""
    args = take(kwargs, required=("events",))
    with session_scope() as session:
        result = record_events(session, args["events"])
    log.info("event batch recorded inserted=%d duplicates=%d", result.inserted, result.duplicates)
    return {"inserted": result.inserted, "duplicates": result.duplicates}


@public_task("voicepipe.usage.record", time_limit=60)
def record_usage_call(**call: Any) -> None:
    """Record one AI call (a repeated id is a no-op)."""
    with session_scope() as session:
        record_usage(session, [call])


@public_task("voicepipe.usage.record_batch", time_limit=120)
def record_usage_batch(**kwargs: Any) -> int:
    """Record a batch of AI calls in one transaction."""
    args = take(kwargs, required=("records",))
    records = args["records"]
    if not isinstance(records, list):
        from voicepipe.errors import InvalidInput

        raise InvalidInput.field("records", "expected a list of AI usage records")
    with session_scope() as session:
        return record_usage(session, records)
