"""Dead letters: write messages a task gave up on, parked for operators to replay or discard."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Identity, Index, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base

PARKED = "parked"
REPLAYED = "replayed"
DISCARDED = "discarded"


class DeadLetter(Base):
    """One parked message, keyed by its Celery task id (a re-parked replay updates its row).

    A replay re-sends the kwargs under the same task id, so ids derived from it
    (worker/ids.py) come out the same and a message whose first attempt did commit
    changes nothing.
    """

    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_status", "status"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(255), unique=True)
    task_name: Mapped[str] = mapped_column(String(255))
    queue: Mapped[str] = mapped_column(String(64))
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # Why it was parked: retries_exhausted, time_limit, delivery_limit or failed (an unexpected error).
    reason: Mapped[str] = mapped_column(String(32))
    error: Mapped[str] = mapped_column(Text)
    # Runs of the task that ended in an error (transient retries + 1), and broker deliveries seen.
    attempts: Mapped[int] = mapped_column(Integer)
    deliveries: Mapped[int] = mapped_column(Integer, server_default="1")
    # How many times this message has been parked (a failed replay parks it again).
    times_parked: Mapped[int] = mapped_column(Integer, server_default="1")
    status: Mapped[str] = mapped_column(String(16), server_default=PARKED)
    first_failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replays: Mapped[int] = mapped_column(Integer, server_default="0")
    discarded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TaskDelivery(Base):
    """Deliveries of one message (task id, retry number) seen redelivered; internal bookkeeping.

    A row exists only once the broker has redelivered the message (a worker lost it),
    so the common path writes nothing here.
    """

    __tablename__ = "task_deliveries"

    task_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    retries: Mapped[int] = mapped_column(Integer, primary_key=True)
    deliveries: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
