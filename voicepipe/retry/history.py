"""An artifact's retry history: every accepted attempt, who asked, when, why, and how it ended."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.artifacts import Artifact, RetryRequest
from voicepipe.errors import ArtifactNotFound
from voicepipe.validation import check_uuid


@dataclass(frozen=True)
class RetryAttempt:
    attempt: int
    stage: str
    requested_by: str
    requested_at: datetime
    reason: str | None
    outcome: str  # in_flight, succeeded, failed
    finished_at: datetime | None
    request_id: str | None
    retry_id: uuid.UUID

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "stage": self.stage,
            "requested_by": self.requested_by,
            "requested_at": self.requested_at.isoformat(),
            "reason": self.reason,
            "outcome": self.outcome,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "request_id": self.request_id,
            "retry_id": str(self.retry_id),
        }


def retry_history(session: Session, artifact_id: Any) -> list[RetryAttempt]:
    """The artifact's accepted retries, oldest first (refused requests change nothing, so are absent)."""
    art_id = check_uuid(artifact_id, "artifact_id")
    if session.get(Artifact, art_id) is None:
        raise ArtifactNotFound(f"artifact {art_id} not found")
    rows = session.execute(
        select(RetryRequest).where(RetryRequest.artifact_id == art_id)
        .order_by(RetryRequest.attempt, RetryRequest.created_at)
    ).scalars()
    return [
        RetryAttempt(
            attempt=r.attempt, stage=r.stage, requested_by=r.requested_by, requested_at=r.created_at,
            reason=r.reason, outcome=r.outcome, finished_at=r.finished_at, request_id=r.request_id,
            retry_id=r.id,
        )
        for r in rows
    ]
