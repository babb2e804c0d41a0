"""The stall sweeper: nothing stays stuck in a working status.

An artifact is stalled when it is in a working status (received, transcribing,
transcribed, processing) and has made no progress (updated_at: a stage started or
finished) for the stall timeout: its stage message was lost (broker restart, crash
between commit and publish, a purged queue) or its worker died. The sweeper re-queues the stage (after
its commit), releasing any claim so the fresh message can take it, and counts the
re-queue (requeued_at; a re-queue is not progress, so updated_at keeps the time of
the last real step, and a stalled artifact stays retryable by staff); the next
re-queue waits a full stall timeout after the previous one. After
VOICEPIPE_MAX_REQUEUES re-queues without progress it fails the artifact with
error_code STALLED. Rows are taken with SKIP LOCKED, so two sweepers
(or a sweeper and a stage finishing) never handle one artifact twice.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from models.artifacts import Artifact, Claim, EntityResolution
from voicepipe.domain import WORKING_STATUSES
from voicepipe.events.recording import record_events
from voicepipe.pipeline.stages import STAGE_TASKS, fail_artifact, status_event
from voicepipe.settings import get_settings
from worker.dispatch import send_after_commit

log = logging.getLogger(__name__)

# Artifacts handled per run; the next run (every 5 minutes) takes the rest.
BATCH = 500


@dataclass
class SweepReport:
    requeued: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"requeued": self.requeued, "failed": self.failed}


def requeue_stalled(session: Session, now: datetime, *, limit: int = BATCH) -> SweepReport:
    """Re-queue or fail every artifact without progress past the stall timeout."""
    settings = get_settings()
    cutoff = now - timedelta(seconds=settings.stall_timeout_seconds)
    stalled = session.execute(
        select(Artifact)
        .where(
            Artifact.status.in_(WORKING_STATUSES),
            Artifact.updated_at < cutoff,
            # A re-queued stage gets a full stall timeout to start before the next re-queue.
            or_(Artifact.requeued_at.is_(None), Artifact.requeued_at < cutoff),
        )
        .order_by(Artifact.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).scalars().all()
    report = SweepReport()
    for art in stalled:
        stage = art.current_stage or _infer_stage(session, art)
        idle_s = round((now - art.updated_at).total_seconds(), 1)
        if art.requeue_count >= settings.max_requeues:
            message = (f"no progress in {stage} for {idle_s:.0f}s after {art.requeue_count} re-queues "
                       f"(status {art.status})")
            fail_artifact(session, art, stage=stage, code="STALLED", message=message, now=now,
                          key=f"stalled|{uuid.uuid4()}")
            report.failed.append({"artifact_id": str(art.id), "stage": stage, "idle_s": idle_s})
            log.warning("stalled artifact failed artifact_id=%s organization_id=%s stage=%s idle_s=%s",
                        art.id, art.organization_id, stage, idle_s)
            continue
        count = art.requeue_count + 1
        # Recorded as a status change to the same status, marked as a re-queue: the
        # event log shows what the sweeper did without inventing a 28th event type.
        record_events(session, [status_event(art, art.status, stage, f"requeue|{uuid.uuid4()}", now,
                                             requeued=True, requeueCount=count, idleSeconds=idle_s)],
                      now=now)
        art.requeue_count = count
        art.current_stage = stage
        art.stage_task_id = None  # the old run, if alive, finds its claim gone and discards
        # Not updated_at: a re-queue is not progress. The stall clock that retries and
        # staff read keeps running from the artifact's last real step.
        art.requeued_at = now
        send_after_commit(session, STAGE_TASKS[stage], artifact_id=str(art.id))
        report.requeued.append({"artifact_id": str(art.id), "stage": stage, "requeue_count": count,
                                "idle_s": idle_s})
        log.warning("stalled artifact re-queued artifact_id=%s organization_id=%s stage=%s "
                    "requeue_count=%d idle_s=%s", art.id, art.organization_id, stage, count, idle_s)
    return report


def _infer_stage(session: Session, art: Artifact) -> str:
    """The stage of an artifact that does not record it (rows older than current_stage)."""
    if art.status in ("received", "transcribing"):
        return "transcription"
    if art.status == "transcribed":
        return "claims_extraction"
    if session.scalar(select(EntityResolution.id).where(EntityResolution.artifact_id == art.id).limit(1)):
        return "draft_generation"
    if session.scalar(select(Claim.id).where(Claim.artifact_id == art.id).limit(1)):
        return "entity_resolution"
    return "claims_extraction"
