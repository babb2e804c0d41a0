"""Retries through real worker processes: success, refusals, concurrency, fire-and-forget."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest
from celery import Celery
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from models import (
    Claim,
    EntityResolution,
    InsightDraft,
    PipelineEvent,
    RetryRefusal,
    RetryRequest,
    Transcript,
)
from tests.support.helpers import Proc, wait_for
from tests.support.pipeline import (
    FAST,
    add_artifact,
    add_user,
    artifact,
    count,
    event_types,
    events,
    ingest,
    row_ids,
    snapshot,
    status_of,
)


def failed_in_entity_resolution(start_worker: Callable[..., Proc], client: Celery, session: Session) -> uuid.UUID:
    """A real artifact that went through transcription and claims, then failed; its worker stopped."""
    broken = start_worker(queues="pipeline", VOICEPIPE_SIMULATOR_FAIL_STAGES="entity_resolution", **FAST)
    art_id = ingest(client)
    wait_for(lambda: status_of(session, art_id) == "failed", timeout=60, what="the artifact to fail")
    broken.stop()
    return art_id


def test_a_failed_artifact_retried_by_staff_completes_replacing_data_from_the_retried_stage_on(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    add_user(session, "staff-1")
    art_id = failed_in_entity_resolution(start_worker, client, session)
    transcripts, claims = row_ids(session, Transcript, art_id), row_ids(session, Claim, art_id)
    assert len(transcripts) == 1 and claims
    events_before = {e.id for e in events(session, art_id)}

    start_worker(queues="pipeline,retry", **FAST)
    result = client.send_task("voicepipe.retry.claims_extraction", queue="retry", kwargs={
        "artifact_id": str(art_id), "requested_by": "staff-1", "reason": "provider outage"})
    outcome = result.get(timeout=30)
    assert outcome["attempt"] == 1 and outcome["stage"] == "claims_extraction"
    assert outcome["status"] == "transcribed" and outcome["duplicate"] is False
    wait_for(lambda: status_of(session, art_id) == "completed", timeout=60, what="completion")

    art = artifact(session, art_id)
    assert art.metadata_["retryAttempt"] == 1
    assert (art.failed_stage, art.error_code, art.active_retry_attempt) == (None, None, None)
    # Earlier stage kept (same row), the retried stage and later ones replaced.
    assert row_ids(session, Transcript, art_id) == transcripts
    new_claims = row_ids(session, Claim, art_id)
    assert new_claims and not (new_claims & claims)
    assert count(session, EntityResolution, EntityResolution.artifact_id == art_id) >= 0
    assert count(session, InsightDraft, InsightDraft.artifact_id == art_id) >= 1

    after = [e for e in events(session, art_id) if e.id not in events_before]
    types = [e.event_type for e in after]
    assert types.index("retry_initiated") < types.index("claims_extraction_started") \
        < types.index("artifact_completed") < types.index("retry_succeeded") + 1
    assert types.count("retry_initiated") == types.count("retry_succeeded") == 1
    assert "retry_failed" not in types
    initiated = next(e for e in after if e.event_type == "retry_initiated")
    assert initiated.metadata_["retryAttempt"] == 1
    assert initiated.metadata_["requestedBy"] == "staff-1"
    assert initiated.metadata_["reason"] == "provider outage"
    assert "transcription_started" not in types  # the earlier stage did not run again
    succeeded = next(e for e in after if e.event_type == "retry_succeeded")
    assert succeeded.metadata_["retryAttempt"] == 1 and succeeded.occurred_at >= initiated.occurred_at

    session.rollback()
    (request,) = session.query(RetryRequest).filter(RetryRequest.artifact_id == art_id).all()
    assert (request.outcome, request.requested_by, request.attempt) == ("succeeded", "staff-1", 1)
    assert request.finished_at is not None


def test_refused_retries_change_no_row_and_name_the_reason(
    start_worker: Callable[..., Proc], client: Celery, session: Session, engine: Engine
) -> None:
    add_user(session, "staff-1")
    add_user(session, "coach-9", staff=False)
    failed = add_artifact(session, status="failed", failed_stage="claims_extraction")
    completed = add_artifact(session, status="completed", failed_stage=None)
    working = add_artifact(session, status="processing", current_stage="entity_resolution")
    exhausted = add_artifact(session, status="failed", retry_attempt=3)  # default maximum: 3
    worker = start_worker(queues="retry", **FAST)
    cases = [
        ("full_pipeline", failed, "coach-9", "PermissionDenied", "not platform staff"),
        ("full_pipeline", failed, "nobody", "PermissionDenied", "unknown"),
        ("full_pipeline", uuid.uuid4(), "staff-1", "ArtifactNotFound", "not found"),
        ("full_pipeline", completed, "staff-1", "RetryNotAllowed", "is completed"),
        ("transcription", working, "staff-1", "RetryNotAllowed", "made progress"),
        ("draft_generation", failed, "staff-1", "RetryNotAllowed", "failed in claims_extraction"),
        ("transcription", exhausted, "staff-1", "RetryLimitExceeded", "used 3 of its 3"),
        ("full_pipeline", "not-a-uuid", "staff-1", "InvalidInput", "artifact_id"),
    ]
    before = snapshot(engine)
    for stage, art_id, who, error, words in cases:
        result = client.send_task(f"voicepipe.retry.{stage}", queue="retry", kwargs={
            "artifact_id": str(art_id), "requested_by": who, "reason": "why not"})
        with pytest.raises(Exception) as excinfo:
            result.get(timeout=30)
        assert type(excinfo.value).__name__ == error, (stage, who)
        assert words in str(excinfo.value), str(excinfo.value)
        assert result.state == "FAILURE"
    assert snapshot(engine) == before
    log = worker.log()
    # Each refusal is logged with who asked and why, and none was retried.
    assert log.count("retry refused") == len(cases)
    assert "requested_by=coach-9 reason='why not'" in log and "refusal=PermissionDenied" in log
    assert "Retry in" not in log
    # And each is recorded (who, what, why, when) for `voicepipe retry-history`.
    session.rollback()
    recorded = session.execute(select(
        RetryRefusal.artifact_id, RetryRefusal.stage, RetryRefusal.requested_by, RetryRefusal.reason,
        RetryRefusal.refusal).order_by(RetryRefusal.id)).all()
    assert [tuple(r) for r in recorded] == [(str(a), st, who, "why not", err) for st, a, who, err, _ in cases]


def test_ten_concurrent_retries_let_exactly_one_through(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    add_user(session, "staff-1")
    art_id = failed_in_entity_resolution(start_worker, client, session)
    started_before = event_types(session, art_id).count("entity_resolution_started")
    worker = start_worker(queues="pipeline,retry", concurrency=4, **FAST)
    results = [
        client.send_task("voicepipe.retry.entity_resolution", queue="retry",
                         kwargs={"artifact_id": str(art_id), "requested_by": "staff-1", "reason": f"try {i}"})
        for i in range(10)
    ]
    accepted, refused = [], []
    for r in results:
        try:
            accepted.append(r.get(timeout=60))
        except Exception as exc:
            refused.append(type(exc).__name__)
    assert len(accepted) == 1 and accepted[0]["attempt"] == 1
    assert refused == ["RetryNotAllowed"] * 9
    wait_for(lambda: status_of(session, art_id) == "completed", timeout=60, what="completion")
    assert artifact(session, art_id).metadata_["retryAttempt"] == 1
    types = event_types(session, art_id)
    assert types.count("retry_initiated") == 1 and types.count("retry_succeeded") == 1
    assert types.count("entity_resolution_started") == started_before + 1
    # Exactly one stage task ran on the retry's worker, and one draft generation after it.
    log = worker.log()
    assert len(re.findall(r"Task voicepipe\.pipeline\.resolve_entities\[[\w-]+\] received", log)) == 1
    assert len(re.findall(r"Task voicepipe\.pipeline\.generate_drafts\[[\w-]+\] received", log)) == 1
    assert count(session, RetryRequest, RetryRequest.artifact_id == art_id) == 1


def test_the_retry_returns_before_the_stage_work_starts_or_finishes(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    add_user(session, "staff-1")
    art_id = add_artifact(session, status="failed", failed_stage="transcription")
    # Time scale 0.25: a ~20 s transcription takes ~5 s, far longer than the retry.
    start_worker(queues="pipeline,retry", concurrency=2, VOICEPIPE_SIMULATOR_TIME_SCALE="0.25")
    result = client.send_task("voicepipe.retry.full_pipeline", queue="retry",
                              kwargs={"artifact_id": str(art_id), "requested_by": "staff-1"})
    outcome = result.get(timeout=30)
    # The outcome arrived; the stage it queued has not finished (at most started).
    types = event_types(session, art_id)
    assert outcome["status"] == "received" and outcome["queued_task"] == "voicepipe.pipeline.transcribe"
    assert status_of(session, art_id) in ("received", "transcribing")
    assert "transcription_completed" not in types and "retry_succeeded" not in types
    wait_for(lambda: "transcription_completed" in event_types(session, art_id), timeout=60,
             what="the queued stage to run after the retry returned")


def test_a_repeated_request_id_is_a_no_op_returning_the_first_outcome(
    start_worker: Callable[..., Proc], client: Celery, session: Session, engine: Engine
) -> None:
    add_user(session, "staff-1")
    art_id = add_artifact(session, status="failed", failed_stage="transcription")
    start_worker(queues="retry", **FAST)  # no pipeline worker: the artifact stays as the retry left it
    kwargs = {"artifact_id": str(art_id), "requested_by": "staff-1", "request_id": "req-42"}
    first = client.send_task("voicepipe.retry.transcription", queue="retry", kwargs=kwargs).get(timeout=30)
    state = snapshot(engine)
    again = client.send_task("voicepipe.retry.transcription", queue="retry", kwargs=kwargs).get(timeout=30)
    assert snapshot(engine) == state
    assert again == {**first, "duplicate": True}
    assert count(session, PipelineEvent, PipelineEvent.event_type == "retry_initiated") == 1
