"""Record many single-item messages in one transaction, each message answered alone.

Producers send one `voicepipe.events.record` / `voicepipe.usage.record` per event; the
worker gathers them (worker/batching.py) and hands them here. Each message is
validated by itself: a bad one is answered with its InvalidInput and writes nothing,
the good ones are written together in the caller's transaction. Unlike the batch API
(record_events), one bad message never refuses the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from voicepipe.clock import utcnow
from voicepipe.errors import InvalidInput
from voicepipe.events.recording import foreign_artifact_error, foreign_artifact_events, record_parsed
from voicepipe.events.schema import Event, parse_event
from voicepipe.infra.gcpause import without_cyclic_gc
from voicepipe.usage.recording import parse_usage, record_usage

# What one message gets: True (its event was new), False (its event_id was already
# stored, or came earlier in the same batch), None (usage: recorded), or the
# InvalidInput refusing it.
Outcome = bool | None | InvalidInput


@without_cyclic_gc
def record_event_messages(session: Session, raws: Sequence[Any], *, now: datetime | None = None) -> list[Outcome]:
    """Record one event per message (ids already filled in); one outcome per message, in order."""
    now = now or utcnow()
    outcomes: list[Outcome] = []
    good: list[Event] = []
    for raw in raws:
        try:
            event = parse_event(raw, now=now)
        except InvalidInput as exc:
            outcomes.append(exc)
            continue
        good.append(event)
        outcomes.append(None)
    if not good:
        return outcomes
    foreign = set(foreign_artifact_events(session, good))
    if foreign:  # refused alone, like any other bad message
        slots = [i for i, outcome in enumerate(outcomes) if outcome is None]
        for i in foreign:
            outcomes[slots[i]] = foreign_artifact_error(good[i])
        good = [event for i, event in enumerate(good) if i not in foreign]
        if not good:
            return outcomes
    inserted = set(record_parsed(session, good).inserted_ids)
    events = iter(good)
    for i, outcome in enumerate(outcomes):
        if outcome is None:
            event_id = next(events).event_id
            # The first message carrying a new id gets True; a repeat of it gets False.
            outcomes[i] = event_id in inserted
            inserted.discard(event_id)
    return outcomes


@without_cyclic_gc
def record_usage_messages(session: Session, raws: Sequence[Any], *, now: datetime | None = None) -> list[Outcome]:
    """Record one AI call per message (ids already filled in); None for each recorded one."""
    now = now or utcnow()
    outcomes: list[Outcome] = []
    good: list[Any] = []
    for raw in raws:
        try:
            parse_usage(raw, now=now)
        except InvalidInput as exc:
            outcomes.append(exc)
            continue
        good.append(raw)
        outcomes.append(None)
    if good:
        record_usage(session, good)
    return outcomes
