"""Bulk repair: every artifact that failed at one stage in a time range, each retried on its own.

Nothing here changes an artifact: the selection is read, and each artifact gets its own
`voicepipe.retry.<stage>` message, exactly as a producer would send it, so every guard
(staff only, one retry in flight, the attempt limit), event and audit row is the retry
service's. Each message carries a request id derived from the bulk request and the
artifact: the same bulk request repeated (or run twice at once) asks for the same
retries, which the service accepts once and answers again with the first outcome.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.artifacts import Artifact
from voicepipe.clock import utcnow
from voicepipe.domain import STAGE_ORDER
from voicepipe.errors import InvalidInput
from voicepipe.validation import check_id, check_timestamp

# One bulk request retries at most this many artifacts: past it, narrow the range.
MAX_BULK = 10_000


@dataclass(frozen=True)
class BulkRequest:
    """Artifacts whose status is failed, at STAGE, last updated (failed) in [since, until)."""

    stage: str
    since: datetime
    until: datetime
    organization_id: str | None = None

    @classmethod
    def parse(cls, stage: Any, since: Any, until: Any = None, organization_id: Any = None) -> BulkRequest:
        if stage not in STAGE_ORDER:
            raise InvalidInput.field("failed_at", f"expected one of {', '.join(STAGE_ORDER)}, got {stage!r}")
        lo = check_timestamp(since, "since")
        hi = check_timestamp(until, "until") if until is not None else utcnow()
        if not lo < hi:
            raise InvalidInput.field("until", f"{hi.isoformat()} is not after since ({lo.isoformat()})")
        return cls(stage, lo, hi, check_id(organization_id, "organization", optional=True))

    def request_id(self, requested_by: str, artifact_id: uuid.UUID) -> str:
        """The idempotency key of this request's retry of one artifact (the same for a repeat)."""
        key = "|".join((self.stage, self.since.isoformat(), self.until.isoformat(), self.organization_id or "",
                        requested_by, str(artifact_id)))
        return "bulk-" + hashlib.sha256(key.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class FailedArtifact:
    id: uuid.UUID
    organization_id: str
    failed_at: datetime
    error_code: str | None


def select_failed(session: Session, request: BulkRequest) -> list[FailedArtifact]:
    """The artifacts the request would retry, oldest failure first (InvalidInput past MAX_BULK)."""
    query = (
        select(Artifact.id, Artifact.organization_id, Artifact.updated_at, Artifact.error_code)
        .where(Artifact.status == "failed", Artifact.failed_stage == request.stage,
               Artifact.updated_at >= request.since, Artifact.updated_at < request.until)
        .order_by(Artifact.updated_at, Artifact.id)
        .limit(MAX_BULK + 1)
    )
    if request.organization_id is not None:
        query = query.where(Artifact.organization_id == request.organization_id)
    rows = [FailedArtifact(*row) for row in session.execute(query).all()]
    if len(rows) > MAX_BULK:
        raise InvalidInput.field(
            "since", f"more than {MAX_BULK} artifacts failed at {request.stage} in this range: narrow it")
    return rows
