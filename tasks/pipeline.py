"""The pipeline stage tasks: ingest, transcribe, extract_claims, resolve_entities, generate_drafts."""

from __future__ import annotations

import logging

from celery import current_task

from models.session import session_scope
from voicepipe.pipeline import stages
from worker.declare import public_task
from worker.ids import with_id

log = logging.getLogger(__name__)

# The simulated stages take ~20 s (transcription) at time scale 1.0 and a real
# provider's slow tail a few times that; 300 s covers both while staying far below
# the stall timeout (900 s), so a stage is never re-queued while its task may still run.
STAGE_TIME_LIMIT_S = 300


def _task_id() -> str | None:
    request = getattr(current_task, "request", None)
    return getattr(request, "id", None)


@public_task("voicepipe.pipeline.ingest", time_limit=60, parks=True)
def ingest(*, organization_id: str, coach_id: str | None, source_channel: str, media_ref: str | None = None,
           artifact_id: str | None = None) -> None:
    """Create an artifact for a voice note and queue its transcription."""
    args = {"organization_id": organization_id, "coach_id": coach_id, "source_channel": source_channel,
            "media_ref": media_ref, "artifact_id": artifact_id}
    # Without an artifact_id, the id comes from the task id: a redelivery creates no second artifact.
    args = with_id(args, "artifact_id", _task_id(), 0)
    with session_scope() as session:
        stages.ingest(session, **args)


def _stage(stage: str, artifact_id: str) -> str:
    # The task id marks the claim: a redelivery of this same message may resume the
    # stage, a duplicate message (another id) leaves it alone.
    return stages.run_stage(stage, artifact_id, run_id=_task_id())


@public_task("voicepipe.pipeline.transcribe", time_limit=STAGE_TIME_LIMIT_S, parks=True)
def transcribe(*, artifact_id: str) -> str:
    """Transcribe an artifact's voice note, then queue claims extraction."""
    return _stage("transcription", artifact_id)


@public_task("voicepipe.pipeline.extract_claims", time_limit=STAGE_TIME_LIMIT_S, parks=True)
def extract_claims(*, artifact_id: str) -> str:
    """Extract claims from an artifact's transcript, then queue entity resolution."""
    return _stage("claims_extraction", artifact_id)


@public_task("voicepipe.pipeline.resolve_entities", time_limit=STAGE_TIME_LIMIT_S, parks=True)
def resolve_entities(*, artifact_id: str) -> str:
    """Resolve the players and teams an artifact's claims mention, then queue drafts."""
    return _stage("entity_resolution", artifact_id)


@public_task("voicepipe.pipeline.generate_drafts", time_limit=STAGE_TIME_LIMIT_S, parks=True)
def generate_drafts(*, artifact_id: str) -> str:
    """Generate insight drafts for an artifact and complete it."""
    return _stage("draft_generation", artifact_id)
