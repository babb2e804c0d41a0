"""Artifacts through the stage tasks of a real worker, with the simulated processor."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from celery import Celery
from sqlalchemy.orm import Session

from models import Claim, EntityResolution, EventCounter, InsightDraft, PipelineEvent, Transcript
from tests.support.helpers import Proc, wait_for
from tests.support.pipeline import (
    FAST,
    artifact,
    count,
    event_types,
    events,
    ingest,
    status_of,
)

HAPPY_PATH = [
    "artifact_received",
    "artifact_status_changed", "transcription_started", "transcription_completed", "artifact_status_changed",
    "artifact_status_changed", "claims_extraction_started", "claims_extracted",
    "entity_resolution_started", "ENTITY_OUTCOME",
    "draft_generation_started", "drafts_generated", "artifact_status_changed", "artifact_completed",
]


def test_an_ingested_voice_note_is_transcribed_processed_and_completed_with_real_durations_and_costs(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    start_worker(queues="pipeline", **FAST)
    art_id = ingest(client, media_ref="s3://notes/1.ogg")

    wait_for(lambda: status_of_or_none(session, art_id) == "completed", timeout=60, what="completed")
    art = artifact(session, art_id)
    assert (art.current_stage, art.stage_task_id, art.failed_stage) == (None, None, None)
    assert art.metadata_["retryAttempt"] == 0

    evs = events(session, art_id)
    # occurred_at can tie within a stage's transaction; compare as ordered by the pipeline.
    types = [e.event_type for e in sorted(evs, key=lambda e: (e.occurred_at, HAPPY_ORDER(e)))]
    outcome = next(t for t in types if t in ("entity_resolution_completed", "entity_needs_disambiguation"))
    assert types == [outcome if t == "ENTITY_OUTCOME" else t for t in HAPPY_PATH]
    by_type = {e.event_type: e for e in evs}
    for name in ("transcription_completed", "claims_extracted", outcome, "drafts_generated"):
        e = by_type[name]
        # Time scale 0.001 sleeps milliseconds; the measured duration is positive and small.
        assert e.duration_ms is not None and 0 < e.duration_ms < 5000, name
        assert e.metadata_["aiCost"] > 0 and e.metadata_["aiModel"], name
        assert e.metadata_["sourceChannel"] == "whatsapp_audio" and e.metadata_["retryAttempt"] == 0
        assert e.organization_id == "org-1" and e.coach_id == "coach-1"
    # End to end is received -> completed, computed independently from the rows.
    received = by_type["artifact_received"].occurred_at
    completed = by_type["artifact_completed"]
    expected = (completed.occurred_at - received) / timedelta(milliseconds=1)
    assert abs(completed.duration_ms - expected) < 1.0  # type: ignore[operator]
    assert completed.duration_ms >= sum(by_type[n].duration_ms or 0.0 for n in (  # type: ignore[operator]
        "transcription_completed", "claims_extracted", outcome, "drafts_generated"))

    # Derived rows match the counts the events report.
    fresh_art = art_id
    assert count(session, Transcript, Transcript.artifact_id == fresh_art) == 1
    assert count(session, Claim, Claim.artifact_id == fresh_art) == by_type["claims_extracted"].metadata_["claimCount"]
    assert count(session, EntityResolution, EntityResolution.artifact_id == fresh_art) == \
        by_type[outcome].metadata_["entityCount"]
    assert count(session, InsightDraft, InsightDraft.artifact_id == fresh_art) == \
        by_type["drafts_generated"].metadata_["draftCount"]
    transcript_event = by_type["transcription_completed"].metadata_
    assert transcript_event["transcriptWordCount"] > 0 and 0 < transcript_event["confidenceScore"] <= 1

    # Counters were written with the events (record_events): one completion in org-1.
    session.rollback()
    counters = session.query(EventCounter).filter(EventCounter.organization_id == "org-1").all()
    assert sum(c.n_artifact_completed for c in counters) == 1
    assert sum(c.n_transcription_completed for c in counters) == 1


def status_of_or_none(session: Session, art_id: object) -> str | None:
    session.rollback()
    from models import Artifact

    art = session.get(Artifact, art_id, populate_existing=True)
    return art.status if art else None


_ORDER = {t: i for i, t in enumerate(HAPPY_PATH)}


def HAPPY_ORDER(e: PipelineEvent) -> int:
    if e.event_type == "artifact_status_changed":
        # Status changes sort beside the stage event they accompany.
        to = e.metadata_["toStatus"]
        return {"transcribing": 1, "transcribed": 4, "processing": 5, "completed": 12}[to]
    if e.event_type in ("entity_resolution_completed", "entity_needs_disambiguation"):
        return _ORDER["ENTITY_OUTCOME"]
    return _ORDER[e.event_type]


def test_duplicate_and_stale_stage_messages_change_nothing(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    worker = start_worker(queues="pipeline", **FAST)
    art_id = ingest(client)
    wait_for(lambda: status_of_or_none(session, art_id) == "completed", timeout=60, what="completed")
    before = event_types(session, art_id)
    # A repeated ingest and late copies of every stage message.
    ingest(client, art_id)
    results = [client.send_task(name, kwargs={"artifact_id": str(art_id)}, queue="pipeline")
               for name in ("voicepipe.pipeline.transcribe", "voicepipe.pipeline.extract_claims",
                            "voicepipe.pipeline.resolve_entities", "voicepipe.pipeline.generate_drafts")]
    # Stage tasks keep no results; the worker's log says how each one ended.
    for r in results:
        done = f"[{r.id}] succeeded"
        wait_for(lambda done=done: done in worker.log(), what=f"task {r.id}")  # type: ignore[misc]
        assert worker.log().split(done)[1].splitlines()[0].endswith("'skipped'")
    assert event_types(session, art_id) == before
    assert status_of(session, art_id) == "completed"


def test_a_stage_that_always_fails_fails_the_artifact_naming_stage_and_error(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    start_worker(queues="pipeline", VOICEPIPE_SIMULATOR_FAIL_STAGES="entity_resolution", **FAST)
    art_id = ingest(client)
    wait_for(lambda: status_of_or_none(session, art_id) == "failed", timeout=60, what="failed")
    art = artifact(session, art_id)
    assert (art.failed_stage, art.error_code) == ("entity_resolution", "SIMULATED_FAILURE")
    assert "VOICEPIPE_SIMULATOR_FAIL_STAGES" in (art.error_message or "")
    by_type = {e.event_type: e for e in events(session, art_id)}
    failed = by_type["entity_resolution_failed"]
    assert failed.error_code == "SIMULATED_FAILURE" and failed.duration_ms is not None
    assert by_type["artifact_failed"].stage == "entity_resolution"
    assert "artifact_completed" not in by_type and "draft_generation_started" not in by_type
    # Earlier stages' rows stay for a later retry of the failed stage.
    assert count(session, Transcript, Transcript.artifact_id == art_id) == 1
    assert count(session, Claim, Claim.artifact_id == art_id) >= 1
    assert count(session, EntityResolution, EntityResolution.artifact_id == art_id) == 0
