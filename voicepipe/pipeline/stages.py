"""The pipeline stages: how an artifact moves from received to completed (or failed).

Each stage runs in two short transactions around the processor's work, so no row
lock is held while a model is busy for seconds:

1. claim: lock the artifact, check it waits for this stage and nobody else holds it
   (a duplicate or stale message is a no-op), mark it taken by this task id, record
   ``<stage>_started``, load the stage's inputs;
2. the processor works, its duration measured;
3. finish: lock again, check the claim is still ours (a retry or the stall sweeper
   may have taken the artifact meanwhile; then the result is discarded), write the
   derived rows, record the completed / failed events, move the status on, and queue
   the next stage after the commit.

Event ids are derived from (artifact, stage, task id), so a redelivered message
(same task id) that runs a stage again cannot record its events twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import delete, select
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.artifacts import (
    Artifact,
    Claim,
    EntityResolution,
    InsightDraft,
    RetryRequest,
    Transcript,
)
from models.session import session_scope
from voicepipe.clock import utcnow
from voicepipe.domain import PIPELINE, STAGE_ORDER
from voicepipe.errors import ArtifactNotFound
from voicepipe.events.recording import record_events
from voicepipe.pipeline.processor import (
    ClaimsInput,
    ClaimsResult,
    DraftsInput,
    DraftsResult,
    EntitiesInput,
    EntitiesResult,
    Processor,
    StageFailure,
    StageInput,
    TranscriptionResult,
    get_processor,
)
from voicepipe.validation import check_id, check_text, check_uuid
from worker.dispatch import send_after_commit

log = logging.getLogger(__name__)

# The stages a processor runs, in order (ingestion and confirmation have no AI work),
# and what each needs, from the one table of stages (voicepipe/domain.py).
STAGE_TASKS: dict[str, str] = {s.name: s.task for s in PIPELINE}
CLAIMABLE: dict[str, tuple[str, ...]] = {s.name: s.claimable for s in PIPELINE}
WORKING_STATUS: dict[str, str] = {s.name: s.working for s in PIPELINE}
DONE_STATUS: dict[str, str] = {s.name: s.done for s in PIPELINE}
NEXT_STAGE: dict[str, str | None] = dict(zip(STAGE_ORDER, (*STAGE_ORDER[1:], None), strict=True))
STARTED_EVENT: dict[str, str] = {s.name: s.started_event for s in PIPELINE}
FAILED_EVENT: dict[str, str] = {s.name: s.failed_event for s in PIPELINE}
# Derived rows of each stage; a retry deletes its stage's and every later stage's.
_MODELS: dict[str, type[Any]] = {m.__tablename__: m for m in (Transcript, Claim, EntityResolution, InsightDraft)}
DERIVED: dict[str, type[Any]] = {s.name: _MODELS[s.derived_table] for s in PIPELINE}
_namespaces: dict[str, uuid.UUID] = {}


def _event_namespace() -> uuid.UUID:
    """This deployment's namespace of event ids (migration 0008), read once per database."""
    from models.session import get_engine

    engine = get_engine()
    key = engine.url.render_as_string(hide_password=True)
    namespace = _namespaces.get(key)
    if namespace is None:
        with engine.connect() as conn:
            value = conn.execute(sql_text("SELECT value FROM deployment_secrets WHERE name = 'event_id_namespace'")
                                 ).scalar_one()
        namespace = _namespaces[key] = uuid.UUID(value)
    return namespace


def event_id(*parts: object) -> str:
    """A stable event id for one logical occurrence (duplicates become no-ops); unknowable to producers."""
    return str(uuid.uuid5(_event_namespace(), "|".join(str(p) for p in parts)))


def lock_artifact(session: Session, artifact_id: uuid.UUID, *, skip_locked: bool = False) -> Artifact | None:
    """SELECT ... FOR UPDATE of one artifact, refreshed from the database."""
    stmt = (
        select(Artifact)
        .where(Artifact.id == artifact_id)
        .with_for_update(skip_locked=skip_locked)
        .execution_options(populate_existing=True)
    )
    return session.execute(stmt).scalar_one_or_none()


def base_event(art: Artifact, event_type: str, stage: str | None, **fields: Any) -> dict[str, Any]:
    """An event about art, with the metadata every pipeline event carries."""
    metadata = {
        "sourceChannel": art.source_channel,
        "retryAttempt": int((art.metadata_ or {}).get("retryAttempt", 0)),
        **fields.pop("metadata", {}),
    }
    event: dict[str, Any] = {
        "event_type": event_type,
        "artifact_id": str(art.id),
        "organization_id": art.organization_id,
        "coach_id": art.coach_id,
        "stage": stage,
        "metadata": metadata,
    }
    event.update(fields)
    return event


def status_event(
    art: Artifact, new_status: str, stage: str | None, key: str, now: datetime, **extra: Any
) -> dict[str, Any]:
    return base_event(
        art, "artifact_status_changed", stage, event_id=event_id(art.id, "status", key), occurred_at=now,
        metadata={"fromStatus": art.status, "toStatus": new_status, **extra},
    )


def set_status(art: Artifact, status: str, now: datetime) -> None:
    art.status = status
    art.updated_at = now


# -- ingestion ---------------------------------------------------------------


@dataclass(frozen=True)
class Ingested:
    artifact_id: uuid.UUID
    created: bool


def ingest(
    session: Session,
    *,
    organization_id: Any,
    coach_id: Any,
    source_channel: Any,
    media_ref: Any = None,
    artifact_id: Any = None,
) -> Ingested:
    """Create the artifact (status received), record artifact_received, queue transcription.

    A repeated artifact_id is a no-op, so a producer may resend an ingest safely.
    """
    org = check_id(organization_id, "organization_id")
    coach = check_id(coach_id, "coach_id", optional=True)
    channel = check_id(source_channel, "source_channel")
    media = check_text(media_ref, "media_ref", max_len=2000, optional=True)
    art_id = check_uuid(artifact_id, "artifact_id", optional=True) or uuid.uuid4()
    now = utcnow()
    inserted = session.execute(
        pg_insert(Artifact)
        .values(
            id=art_id, organization_id=org, coach_id=coach, source_channel=channel, media_ref=media,
            status="received", current_stage="transcription", metadata_={"retryAttempt": 0},
            created_at=now, updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[Artifact.id])
        .returning(Artifact.id)
    ).scalar_one_or_none()
    if inserted is None:
        log.info("ingest repeated, nothing to do artifact_id=%s", art_id)
        return Ingested(art_id, created=False)
    art = session.get(Artifact, art_id)
    assert art is not None
    record_events(session, [base_event(art, "artifact_received", "ingestion",
                                       event_id=event_id(art_id, "received"), occurred_at=now)])
    send_after_commit(session, STAGE_TASKS["transcription"], artifact_id=str(art_id))
    log.info("artifact received artifact_id=%s organization_id=%s source_channel=%s", art_id, org, channel)
    return Ingested(art_id, created=True)


# -- claim -------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    stage: str
    item: StageInput
    data: ClaimsInput | EntitiesInput | DraftsInput | None
    missing_input: str | None = None


def claim_stage(session: Session, artifact_id: uuid.UUID, stage: str, run_id: str) -> Claimed | None:
    """Take the artifact for this stage run, or None when the message is stale or a duplicate."""
    art = lock_artifact(session, artifact_id)
    if art is None:
        raise ArtifactNotFound(f"artifact {artifact_id} not found")
    if art.current_stage != stage or art.status not in CLAIMABLE[stage]:
        log.info("stage message ignored: artifact is elsewhere artifact_id=%s stage=%s status=%s "
                 "current_stage=%s", artifact_id, stage, art.status, art.current_stage)
        return None
    if art.stage_task_id not in (None, run_id):
        log.info("stage message ignored: stage already taken artifact_id=%s stage=%s by_task=%s",
                 artifact_id, stage, art.stage_task_id)
        return None
    now = utcnow()
    events = []
    working = WORKING_STATUS[stage]
    if art.status != working:
        events.append(status_event(art, working, stage, f"{stage}|{run_id}|start", now))
    art.status = working
    art.stage_task_id = run_id
    art.updated_at = now
    events.append(base_event(art, STARTED_EVENT[stage], stage,
                             event_id=event_id(art.id, stage, run_id, "started"), occurred_at=now))
    record_events(session, events)
    item = StageInput(
        artifact_id=art.id, organization_id=art.organization_id, coach_id=art.coach_id,
        source_channel=art.source_channel, media_ref=art.media_ref,
        attempt=int((art.metadata_ or {}).get("retryAttempt", 0)),
    )
    data, missing = _load_inputs(session, art.id, stage)
    return Claimed(stage, item, data, missing)


def _load_inputs(
    session: Session, artifact_id: uuid.UUID, stage: str
) -> tuple[ClaimsInput | EntitiesInput | DraftsInput | None, str | None]:
    if stage == "transcription":
        return None, None
    if stage == "claims_extraction":
        text = session.scalar(
            select(Transcript.text).where(Transcript.artifact_id == artifact_id)
            .order_by(Transcript.created_at.desc()).limit(1)
        )
        return (ClaimsInput(text), None) if text is not None else (None, "no transcript")
    claims = list(session.scalars(
        select(Claim.text).where(Claim.artifact_id == artifact_id).order_by(Claim.created_at, Claim.id)
    ))
    if stage == "entity_resolution":
        return EntitiesInput(claims), None
    entities = [
        (m, e) for m, e in session.execute(
            select(EntityResolution.mention, EntityResolution.resolved_entity_id)
            .where(EntityResolution.artifact_id == artifact_id).order_by(EntityResolution.mention)
        )
    ]
    return DraftsInput(claims, entities), None


# -- the work ----------------------------------------------------------------

StageResult = TranscriptionResult | ClaimsResult | EntitiesResult | DraftsResult


def do_work(processor: Processor, claimed: Claimed) -> StageResult:
    """Call the processor for the claimed stage (no session, no lock held)."""
    if claimed.missing_input is not None:
        raise StageFailure("MISSING_INPUT", f"{claimed.stage} cannot run: {claimed.missing_input}")
    if claimed.stage == "transcription":
        return processor.transcribe(claimed.item)
    if claimed.stage == "claims_extraction":
        assert isinstance(claimed.data, ClaimsInput)
        return processor.extract_claims(claimed.item, claimed.data)
    if claimed.stage == "entity_resolution":
        assert isinstance(claimed.data, EntitiesInput)
        return processor.resolve_entities(claimed.item, claimed.data)
    assert isinstance(claimed.data, DraftsInput)
    return processor.generate_drafts(claimed.item, claimed.data)


# -- finish ------------------------------------------------------------------


def finish_stage(
    session: Session,
    claimed: Claimed,
    run_id: str,
    outcome: StageResult | StageFailure,
    duration_ms: float,
) -> str:
    """Write the stage's outcome if the claim is still ours; returns what happened."""
    stage = claimed.stage
    art = lock_artifact(session, claimed.item.artifact_id)
    if art is None:
        log.warning("stage result discarded: artifact deleted artifact_id=%s stage=%s",
                    claimed.item.artifact_id, stage)
        return "discarded"
    if art.stage_task_id != run_id or art.current_stage != stage or art.status != WORKING_STATUS[stage]:
        log.warning("stage result discarded: artifact was taken over (retry or stall sweeper) "
                    "artifact_id=%s stage=%s status=%s by_task=%s", art.id, stage, art.status,
                    art.stage_task_id)
        return "discarded"
    now = utcnow()
    duration_ms = round(max(0.0, duration_ms), 3)
    if isinstance(outcome, StageFailure):
        metadata: dict[str, Any] = {"aiCost": outcome.ai_cost}
        if outcome.ai_model:
            metadata["aiModel"] = outcome.ai_model
        failed = base_event(
            art, FAILED_EVENT[stage], stage, event_id=event_id(art.id, stage, run_id, "failed"),
            occurred_at=now, duration_ms=duration_ms, error_code=outcome.code,
            error_message=outcome.message, metadata=metadata,
        )
        fail_artifact(session, art, stage=stage, code=outcome.code, message=outcome.message,
                      now=now, key=f"{stage}|{run_id}", first_events=[failed])
        log.info("stage failed artifact_id=%s stage=%s error_code=%s duration_ms=%.1f",
                 art.id, stage, outcome.code, duration_ms)
        return "failed"
    events = [_write_results(session, art, stage, outcome, run_id, now, duration_ms)]
    next_stage = NEXT_STAGE[stage]
    done = DONE_STATUS[stage]
    if done != art.status:
        events.append(status_event(art, done, stage, f"{stage}|{run_id}|done", now))
    art.requeue_count = 0
    art.stage_task_id = None
    art.current_stage = next_stage
    set_status(art, done, now)
    if next_stage is None:
        events.extend(_complete(session, art, now, run_id))
    record_events(session, events)
    if next_stage is not None:
        send_after_commit(session, STAGE_TASKS[next_stage], artifact_id=str(art.id))
    log.info("stage completed artifact_id=%s stage=%s duration_ms=%.1f next=%s",
             art.id, stage, duration_ms, next_stage or "none (completed)")
    return "completed"


def _write_results(
    session: Session, art: Artifact, stage: str, result: StageResult, run_id: str,
    now: datetime, duration_ms: float,
) -> dict[str, Any]:
    """Replace the stage's derived rows and return its completed event."""
    session.execute(delete(DERIVED[stage]).where(DERIVED[stage].artifact_id == art.id))
    common = {"event_id": event_id(art.id, stage, run_id, "completed"), "occurred_at": now,
              "duration_ms": duration_ms}
    cost = {"aiModel": result.cost.ai_model, "aiCost": result.cost.ai_cost,
            "confidenceScore": result.confidence}
    if isinstance(result, TranscriptionResult):
        session.add(Transcript(artifact_id=art.id, text=result.text, word_count=result.word_count,
                               confidence=result.confidence, duration_seconds=result.audio_seconds,
                               created_at=now))
        return base_event(art, "transcription_completed", stage, **common, metadata={
            **cost, "transcriptDuration": result.audio_seconds, "transcriptWordCount": result.word_count})
    if isinstance(result, ClaimsResult):
        session.add_all(Claim(artifact_id=art.id, text=c.text, confidence=c.confidence, created_at=now)
                        for c in result.claims)
        return base_event(art, "claims_extracted", stage, **common,
                          metadata={**cost, "claimCount": len(result.claims)})
    if isinstance(result, EntitiesResult):
        session.add_all(
            EntityResolution(artifact_id=art.id, mention=e.mention, resolved_entity_id=e.resolved_entity_id,
                             needs_disambiguation=e.resolved_entity_id is None, created_at=now)
            for e in result.entities
        )
        # Both are entity-resolution outcomes; which one says whether a
        # coach must pick between candidates.
        event_type = "entity_needs_disambiguation" if result.disambiguation_count else "entity_resolution_completed"
        return base_event(art, event_type, stage, **common, metadata={
            **cost, "entityCount": len(result.entities), "disambiguationCount": result.disambiguation_count,
            "autoResolvedCount": result.auto_resolved_count})
    session.add_all(InsightDraft(artifact_id=art.id, content=d, created_at=now) for d in result.drafts)
    return base_event(art, "drafts_generated", stage, **common,
                      metadata={**cost, "draftCount": len(result.drafts)})


def _complete(session: Session, art: Artifact, now: datetime, run_id: str) -> list[dict[str, Any]]:
    """artifact_completed with its end-to-end latency, and the retry's success if one was pending."""
    end_to_end = max(0.0, (now - art.created_at).total_seconds() * 1000.0)
    events = [base_event(art, "artifact_completed", None,
                         event_id=event_id(art.id, "completed", run_id), occurred_at=now,
                         duration_ms=round(end_to_end, 3))]
    events.extend(close_retry(session, art, succeeded=True, now=now))
    return events


def close_retry(session: Session, art: Artifact, *, succeeded: bool, now: datetime) -> list[dict[str, Any]]:
    """Settle the retry in flight (if any): its request's outcome and retry_succeeded / retry_failed."""
    attempt = art.active_retry_attempt
    if attempt is None:
        return []
    request = session.execute(
        select(RetryRequest).where(RetryRequest.artifact_id == art.id, RetryRequest.attempt == attempt)
        .order_by(RetryRequest.created_at.desc()).limit(1)
    ).scalar_one_or_none()
    stage = None
    if request is not None:
        request.outcome = "succeeded" if succeeded else "failed"
        request.finished_at = now
        stage = request.stage
    art.active_retry_attempt = None
    metadata: dict[str, Any] = {"retryAttempt": attempt, "retryStage": stage}
    if request is not None:
        metadata["requestedBy"] = request.requested_by
    event_type = "retry_succeeded" if succeeded else "retry_failed"
    fields: dict[str, Any] = {"event_id": event_id(art.id, "retry-outcome", attempt), "occurred_at": now,
                              "metadata": metadata}
    if not succeeded:
        fields["error_code"] = art.error_code
        fields["error_message"] = art.error_message
    return [base_event(art, event_type, stage if stage in STAGE_ORDER else None, **fields)]


def fail_artifact(
    session: Session,
    art: Artifact,
    *,
    stage: str,
    code: str,
    message: str,
    now: datetime,
    key: str,
    first_events: list[dict[str, Any]] | None = None,
) -> None:
    """Mark art failed in stage: artifact_failed (and retry_failed if a retry was pending)."""
    events = list(first_events or [])
    events.append(status_event(art, "failed", stage, f"{key}|failed", now))
    art.failed_stage = stage
    art.error_code = code
    art.error_message = message
    art.stage_task_id = None
    art.current_stage = None
    art.requeue_count = 0
    set_status(art, "failed", now)
    events.append(base_event(art, "artifact_failed", stage, event_id=event_id(art.id, key, "artifact_failed"),
                             occurred_at=now, error_code=code, error_message=message))
    events.extend(close_retry(session, art, succeeded=False, now=now))
    record_events(session, events, now=now)


# -- one stage run, end to end ---------------------------------------------------


def run_stage(
    stage: str, artifact_id: Any, *, run_id: str | None = None, processor: Processor | None = None
) -> str:
    """Claim, work, finish: each database step its own short transaction (see module doc).

    Returns "skipped" (stale or duplicate message), "completed", "failed" or "discarded".
    """
    art_id = check_uuid(artifact_id, "artifact_id")
    assert art_id is not None
    run_id = run_id or str(uuid.uuid4())
    with session_scope() as session:
        claimed = claim_stage(session, art_id, stage, run_id)
    if claimed is None:
        return "skipped"
    processor = processor or get_processor()
    started = time.monotonic()
    outcome: StageResult | StageFailure
    try:
        outcome = do_work(processor, claimed)
    except StageFailure as failure:
        outcome = failure
    except SoftTimeLimitExceeded:
        outcome = StageFailure("STAGE_TIMEOUT", f"{stage} exceeded the task's soft time limit")
    except Exception as exc:
        log.exception("processor raised artifact_id=%s stage=%s", art_id, stage)
        outcome = StageFailure("PROCESSOR_ERROR", f"{type(exc).__name__}: {exc}"[:2000])
    duration_ms = (time.monotonic() - started) * 1000.0
    with session_scope() as session:
        return finish_stage(session, claimed, run_id, outcome, duration_ms)
