"""Dead letters: park a write message durably, count redeliveries, list, replay and discard.

Parking runs in its own transaction (the task's own transaction has rolled back by
then). Replay re-sends the stored kwargs through the broker under the original task
id, so ids derived from the task id (worker/ids.py) are the same and a message whose
first attempt did commit changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.dead_letters import DISCARDED, PARKED, REPLAYED, DeadLetter, TaskDelivery
from models.session import session_scope
from voicepipe.errors import DeadLetterNotFound, InvalidInput

log = logging.getLogger(__name__)

# An error text is kept whole enough to diagnose, bounded so a huge message cannot bloat the row.
MAX_ERROR_CHARS = 4000


@dataclass(frozen=True)
class Parked:
    id: int
    task_id: str
    reason: str


def park(
    *,
    task_name: str,
    task_id: str,
    queue: str,
    kwargs: dict[str, Any],
    reason: str,
    error: str,
    attempts: int,
    deliveries: int = 1,
) -> Parked:
    """Store the message as a dead letter in its own transaction (a re-park updates the row).

    A signed message is stored without its signature and email: a replay of it is refused
    (an authority must be signed afresh by the platform), so they would only be exposed.
    """
    from voicepipe.authority import REDACTED_FIELDS, redact, signed_tasks

    if task_name in signed_tasks():
        kwargs = redact(kwargs, REDACTED_FIELDS)
    now = func.now()
    values = {
        "task_id": task_id, "task_name": task_name, "queue": queue, "kwargs": kwargs, "reason": reason,
        "error": error[:MAX_ERROR_CHARS], "attempts": attempts, "deliveries": deliveries, "status": PARKED,
    }
    with session_scope() as session:
        stmt = pg_insert(DeadLetter).values(**values)
        row_id = session.execute(
            stmt.on_conflict_do_update(
                index_elements=[DeadLetter.task_id],
                set_={
                    "kwargs": stmt.excluded.kwargs, "reason": stmt.excluded.reason, "error": stmt.excluded.error,
                    "attempts": DeadLetter.attempts + stmt.excluded.attempts,
                    "deliveries": DeadLetter.deliveries + stmt.excluded.deliveries,
                    "times_parked": DeadLetter.times_parked + 1, "status": PARKED, "last_failed_at": now,
                },
            ).returning(DeadLetter.id)
        ).scalar_one()
        # The delivery counts of this message are settled: a replay starts afresh.
        session.execute(delete(TaskDelivery).where(TaskDelivery.task_id == task_id))
    log.warning("dead letter parked id=%s task=%s task_id=%s reason=%s attempts=%d deliveries=%d error=%s",
                row_id, task_name, task_id, reason, attempts, deliveries, error.splitlines()[0][:200] if error else "")
    return Parked(row_id, task_id, reason)


def count_delivery(task_id: str, retries: int) -> int:
    """Record one more delivery of a redelivered message; its deliveries so far (the first included)."""
    with session_scope() as session:
        stmt = pg_insert(TaskDelivery).values(task_id=task_id, retries=retries, deliveries=2)
        return int(session.execute(
            stmt.on_conflict_do_update(
                index_elements=[TaskDelivery.task_id, TaskDelivery.retries],
                set_={"deliveries": TaskDelivery.deliveries + 1, "updated_at": func.now()},
            ).returning(TaskDelivery.deliveries)
        ).scalar_one())


def forget_deliveries(task_id: str) -> None:
    """A redelivered message finally ran: its delivery counts are no longer needed."""
    with session_scope() as session:
        session.execute(delete(TaskDelivery).where(TaskDelivery.task_id == task_id))


def list_dead_letters(session: Session, *, include_done: bool = False) -> list[DeadLetter]:
    """Parked messages, oldest first (with include_done, replayed and discarded ones too)."""
    query = select(DeadLetter).order_by(DeadLetter.id)
    if not include_done:
        query = query.where(DeadLetter.status == PARKED)
    return list(session.scalars(query))


def parked_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(DeadLetter).where(DeadLetter.status == PARKED)) or 0)


Send = Callable[[DeadLetter], None]


def replay(send: Send, *, ids: Sequence[int] = (), all_parked: bool = False) -> list[DeadLetter]:
    """Re-send dead letters through `send` and mark them replayed; the ones sent.

    With ids, each named letter is re-sent whatever its status except discarded
    (re-sending is idempotent); with all_parked, every letter still parked. Each
    letter is sent, then marked in a transaction of its own committed right after
    its send: a failure midway leaves the letters already sent marked, that one and
    the rest parked, and a second run re-sends only those. The letter's row stays
    locked during its send, so two replays at once do not both send it.
    """
    if bool(ids) == all_parked:
        raise InvalidInput.field("replay", "give either --id ID or --all")
    with session_scope() as session:
        if all_parked:
            todo = list(session.scalars(
                select(DeadLetter.id).where(DeadLetter.status == PARKED).order_by(DeadLetter.id)))
        else:
            # Every id is checked before anything is sent.
            for letter_id in ids:
                _replayable(session.get(DeadLetter, letter_id), letter_id)
            todo = list(ids)
    sent = []
    for letter_id in todo:
        with session_scope() as session:
            if all_parked:
                # Replayed, discarded or being replayed by another run meanwhile: not this run's.
                letter = session.scalars(
                    select(DeadLetter).where(DeadLetter.id == letter_id, DeadLetter.status == PARKED)
                    .with_for_update(skip_locked=True)).one_or_none()
                if letter is None:
                    continue
            else:
                letter = _replayable(session.get(DeadLetter, letter_id, with_for_update=True), letter_id)
            send(letter)
            session.execute(update(DeadLetter).where(DeadLetter.id == letter.id).values(
                status=REPLAYED, replayed_at=func.now(), replays=DeadLetter.replays + 1))
        log.info("dead letter replayed id=%s task=%s task_id=%s", letter.id, letter.task_name, letter.task_id)
        sent.append(letter)
    return sent


def _replayable(letter: DeadLetter | None, letter_id: int) -> DeadLetter:
    if letter is None:
        raise DeadLetterNotFound(f"no dead letter has id {letter_id}")
    if letter.status == DISCARDED:
        raise InvalidInput.field("id", f"dead letter {letter_id} was discarded; it cannot be replayed")
    return letter


def discard(session: Session, letter_id: int) -> DeadLetter:
    """Give up on a dead letter for good (kept, marked discarded, for the record)."""
    letter = session.get(DeadLetter, letter_id, with_for_update=True)
    if letter is None:
        raise DeadLetterNotFound(f"no dead letter has id {letter_id}")
    letter.status = DISCARDED
    letter.discarded_at = func.now()  # type: ignore[assignment]
    log.info("dead letter discarded id=%s task=%s task_id=%s", letter.id, letter.task_name, letter.task_id)
    return letter
