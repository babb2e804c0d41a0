"""Refused retry requests, recorded (who, what, why, when) for `voicepipe retry-history`.

A refusal changes nothing in the retry's own transaction (it is rolled back); the
record is written afterwards in a transaction of its own (tasks/retry.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.security import RetryRefusal

MAX_ID = 255
MAX_TEXT = 2000


def _text(value: Any, limit: int) -> str | None:
    """What was asked, as text, cut to fit: a refused request may be malformed in any way."""
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    # PostgreSQL text holds neither NUL nor lone surrogates: keep what can be stored.
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")[:limit]


def record_refusal(
    session: Session, *, stage: str, kwargs: dict[str, Any], error: Exception
) -> RetryRefusal:
    row = RetryRefusal(
        artifact_id=_text(kwargs.get("artifact_id"), MAX_ID) or "",
        stage=stage,
        requested_by=_text(kwargs.get("requested_by"), MAX_ID),
        reason=_text(kwargs.get("reason"), MAX_TEXT),
        request_id=_text(kwargs.get("request_id"), MAX_ID),
        refusal=type(error).__name__,
        message=_text(str(error), MAX_TEXT) or "",
    )
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class Refusal:
    stage: str
    requested_by: str | None
    refused_at: datetime
    reason: str | None
    request_id: str | None
    refusal: str
    message: str

    def to_json(self) -> dict[str, Any]:
        """The shape of a retry-history entry, with outcome "refused" and why."""
        return {
            "attempt": None,
            "stage": self.stage,
            "requested_by": self.requested_by,
            "requested_at": self.refused_at.isoformat(),
            "reason": self.reason,
            "outcome": "refused",
            "finished_at": self.refused_at.isoformat(),
            "request_id": self.request_id,
            "retry_id": None,
            "refusal": f"{self.refusal}: {self.message}",
        }


def refusals_for(session: Session, artifact_id: str) -> list[Refusal]:
    """The artifact's refused retry requests, oldest first (by the id as it was asked)."""
    rows = session.execute(
        select(RetryRefusal).where(RetryRefusal.artifact_id == artifact_id.strip())
        .order_by(RetryRefusal.refused_at, RetryRefusal.id)
    ).scalars()
    return [Refusal(r.stage, r.requested_by, r.refused_at, r.reason, r.request_id, r.refusal, r.message)
            for r in rows]
