"""One retry of one artifact, by platform staff, in one transaction (domain.md "Retry operations").

Everything is validated before anything changes, with the artifact row locked
(SELECT ... FOR UPDATE): of concurrent retries of one artifact the first to take
the lock proceeds, and the others then find a retry in flight and are refused. The
stage's task is queued only after the commit (fire-and-forget); the caller never
waits for the stage. Whether the retry worked is recorded by the stage that
completes (retry_succeeded) or fails (retry_failed) the artifact.
"""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import TextClause, func, select, text
from sqlalchemy.orm import Session

from models.artifacts import Artifact, RetryRequest
from models.directory import User
from voicepipe.clock import utcnow
from voicepipe.domain import WORKING_STATUSES
from voicepipe.errors import (
    ArtifactNotFound,
    InvalidInput,
    PermissionDenied,
    RetryLimitExceeded,
    RetryNotAllowed,
)
from voicepipe.events.recording import record_events
from voicepipe.pipeline.dispatch import send_after_commit
from voicepipe.pipeline.stages import (
    DERIVED,
    STAGE_ORDER,
    STAGE_TASKS,
    base_event,
    event_id,
    lock_artifact,
    status_event,
)
from voicepipe.settings import get_settings
from voicepipe.validation import check_id, check_text, check_uuid

log = logging.getLogger(__name__)

FULL = "full_pipeline"
RETRY_STAGES: tuple[str, ...] = (*STAGE_ORDER, FULL)
# Step 6: the status each retry resets the artifact to.
ENTRY_STATUS: dict[str, str] = {
    FULL: "received",
    "transcription": "transcribing",
    "claims_extraction": "transcribed",
    "entity_resolution": "processing",
    "draft_generation": "processing",
}
MAX_REASON = 2000
# pg_advisory_xact_lock(int4, int4) namespace of retry request ids (hashtext of the id).
_REQUEST_LOCK_NAMESPACE = 0x76700004


@dataclass(frozen=True)
class RetryOutcome:
    """An accepted retry (or, with duplicate=True, the one a repeated request_id already made)."""

    retry_id: uuid.UUID
    request_id: str | None
    artifact_id: uuid.UUID
    stage: str
    attempt: int
    requested_by: str
    reason: str | None
    status: str  # the status the artifact was reset to
    queued_task: str
    outcome: str  # in_flight, succeeded or failed (for a duplicate: as it stands now)
    duplicate: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "retry_id": str(self.retry_id),
            "request_id": self.request_id,
            "artifact_id": str(self.artifact_id),
            "stage": self.stage,
            "attempt": self.attempt,
            "requested_by": self.requested_by,
            "reason": self.reason,
            "status": self.status,
            "queued_task": self.queued_task,
            "outcome": self.outcome,
            "duplicate": self.duplicate,
        }


def first_stage(stage: str) -> str:
    """The pipeline stage a retry starts from (the full pipeline starts at transcription)."""
    return STAGE_ORDER[0] if stage == FULL else stage


def request_retry(
    session: Session,
    *,
    stage: Any,
    artifact_id: Any,
    requested_by: Any,
    reason: Any = None,
    request_id: Any = None,
) -> RetryOutcome:
    """Validate and apply one retry (steps 1-6); the stage task is queued after commit.

    Raises InvalidInput, PermissionDenied, ArtifactNotFound, RetryNotAllowed or
    RetryLimitExceeded before changing anything.
    """
    # Arguments first: nothing is read or locked for a malformed request.
    if not isinstance(stage, str) or stage not in RETRY_STAGES:
        raise InvalidInput.field("stage", f"unknown retry stage {str(stage)[:64]!r} "
                                          f"(one of {', '.join(RETRY_STAGES)})")
    art_id = check_uuid(artifact_id, "artifact_id")
    user_id = check_id(requested_by, "requested_by")
    why = check_text(reason, "reason", max_len=MAX_REASON, optional=True)
    req_id = check_id(request_id, "request_id", optional=True)
    assert art_id is not None and user_id is not None

    # 1. Staff status is read now, from the users table, never trusted from the message.
    user = session.get(User, user_id, populate_existing=True)
    if user is None:
        raise PermissionDenied(f"user {user_id} is unknown; only platform staff may retry artifacts")
    if not user.is_platform_staff:
        raise PermissionDenied(f"user {user_id} is not platform staff; only platform staff may retry artifacts")

    if req_id is not None:
        # One request id is handled by one transaction at a time, whichever artifact it
        # names: a second use waits here, then finds the first one's row (below) and
        # is refused by name, instead of failing on the unique index at commit.
        session.execute(select(func.pg_advisory_xact_lock(_REQUEST_LOCK_NAMESPACE, func.hashtext(req_id))))

    # 2. The artifact, locked for the rest of the transaction.
    art = lock_artifact(session, art_id)
    if art is None:
        raise ArtifactNotFound(f"artifact {art_id} not found")

    if req_id is not None:
        # Read under the request id's lock: a concurrent request with the same id has
        # either committed (seen here) or not started its checks yet.
        done = session.execute(select(RetryRequest).where(RetryRequest.request_id == req_id)).scalar_one_or_none()
        if done is not None:
            if done.artifact_id != art_id or done.stage != stage:
                raise InvalidInput.field(
                    "request_id", f"{req_id} was already used for a {done.stage} retry of artifact {done.artifact_id}"
                )
            log.info("retry request repeated, returning its outcome request_id=%s artifact_id=%s", req_id, art_id)
            return _outcome(done, duplicate=True)

    settings = get_settings()
    now = utcnow()
    _check_retryable(art, stage, now, settings.stall_timeout_seconds)

    # 3. The attempt number, bounded.
    used = int((art.metadata_ or {}).get("retryAttempt", 0))
    attempt = used + 1
    if attempt > settings.max_retry_attempts:
        raise RetryLimitExceeded(
            f"artifact {art_id} has used {used} of its {settings.max_retry_attempts} retry attempts"
        )

    # Validated: from here on the retry is applied.
    entry = ENTRY_STATUS[stage]
    art.metadata_ = {**(art.metadata_ or {}), "retryAttempt": attempt}
    request = RetryRequest(
        request_id=req_id, artifact_id=art_id, stage=stage, requested_by=user_id, reason=why,
        attempt=attempt, outcome="in_flight", created_at=now,
    )
    session.add(request)

    # 4. retry_initiated, and the status change of step 6.
    stage_column = None if stage == FULL else stage
    events = [
        base_event(art, "retry_initiated", stage_column, event_id=event_id(art_id, "retry", attempt),
                   occurred_at=now, metadata={"retryAttempt": attempt, "requestedBy": user_id,
                                              "reason": why, "retryStage": stage}),
    ]
    if art.status != entry:
        events.append(status_event(art, entry, stage_column, f"retry|{attempt}", now, retryAttempt=attempt))

    # 5. Derived data from the retried stage on (full pipeline: all of it), in one
    # statement (a data-modifying CTE per table): one round trip instead of four.
    start = STAGE_ORDER.index(first_stage(stage))
    session.execute(_delete_derived_sql(STAGE_ORDER[start:]), {"artifact_id": art_id})

    # 6. Back to the stage's entry status, waiting for its (fresh) task.
    art.status = entry
    art.current_stage = first_stage(stage)
    art.stage_task_id = None
    art.failed_stage = None
    art.error_code = None
    art.error_message = None
    art.requeue_count = 0
    art.requeued_at = None
    art.active_retry_attempt = attempt
    art.updated_at = now
    record_events(session, events)
    session.flush()

    task = STAGE_TASKS[first_stage(stage)]
    send_after_commit(session, task, artifact_id=str(art_id))
    log.info("retry accepted artifact_id=%s stage=%s attempt=%d requested_by=%s reason=%r request_id=%s",
             art_id, stage, attempt, user_id, why, req_id)
    return _outcome(request, duplicate=False)


@functools.cache
def _delete_derived_sql(stages: tuple[str, ...]) -> TextClause:
    tables = [DERIVED[stage].__tablename__ for stage in stages]
    ctes = ", ".join(f"d{i} AS (DELETE FROM {t} WHERE artifact_id = :artifact_id)" for i, t in enumerate(tables))
    return text(f"WITH {ctes} SELECT 1")


def _check_retryable(art: Artifact, stage: str, now: Any, stall_timeout_s: int) -> None:
    if art.active_retry_attempt is not None:
        raise RetryNotAllowed(
            f"artifact {art.id} already has retry attempt {art.active_retry_attempt} in flight "
            f"(status {art.status}); wait until it completes or fails"
        )
    if art.status == "failed":
        reached = art.failed_stage
        where = f"failed in {reached or 'an unknown stage'}"
    elif art.status in WORKING_STATUSES:
        idle = (now - art.updated_at).total_seconds()
        if idle < stall_timeout_s:
            raise RetryNotAllowed(
                f"artifact {art.id} is {art.status} and made progress {idle:.0f}s ago; it can be "
                f"retried once it fails or stalls for {stall_timeout_s}s"
            )
        reached = art.current_stage
        where = f"is stuck in {reached or 'an unknown stage'}"
    else:
        raise RetryNotAllowed(
            f"artifact {art.id} is {art.status}; only failed or stalled artifacts can be retried"
        )
    if stage == FULL:
        return
    if reached not in STAGE_ORDER or STAGE_ORDER.index(stage) > STAGE_ORDER.index(reached):
        raise RetryNotAllowed(
            f"artifact {art.id} {where}; retrying {stage} needs every earlier stage's output "
            f"(retry {reached if reached in STAGE_ORDER else FULL} or an earlier stage, or {FULL})"
        )


def _outcome(request: RetryRequest, *, duplicate: bool) -> RetryOutcome:
    return RetryOutcome(
        retry_id=request.id,
        request_id=request.request_id,
        artifact_id=request.artifact_id,
        stage=request.stage,
        attempt=request.attempt,
        requested_by=request.requested_by,
        reason=request.reason,
        status=ENTRY_STATUS[request.stage],
        queued_task=STAGE_TASKS[first_stage(request.stage)],
        outcome=request.outcome,
        duplicate=duplicate,
    )
