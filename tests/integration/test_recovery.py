"""The stall sweeper: lost stage messages are re-queued, hopeless artifacts failed, no double handling."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from celery import Celery
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from models import Artifact, PipelineEvent, RetryRequest
from tests.support.helpers import Proc, redis_client, wait_for
from tests.support.pipeline import (
    FAST,
    add_artifact,
    add_user,
    artifact,
    event_types,
    events,
    status_of,
)
from voicepipe.pipeline.processor import ClaimsResult, Cost, ExtractedClaim, StageInput
from voicepipe.pipeline.recovery import requeue_stalled
from voicepipe.pipeline.stages import claim_stage, finish_stage
from voicepipe.retry.service import request_retry

LATER = timedelta(hours=1)  # past the default 900 s stall timeout


def test_a_stage_message_dropped_after_a_retry_commits_is_recovered_by_the_sweeper(
    start_worker: Callable[..., Proc], client: Celery, session: Session, broker_url: str
) -> None:
    add_user(session, "staff-1")
    art_id = add_artifact(session, status="failed", failed_stage="transcription")
    retry_worker = start_worker(queues="retry", **FAST)
    outcome = client.send_task("voicepipe.retry.full_pipeline", queue="retry", kwargs={
        "artifact_id": str(art_id), "requested_by": "staff-1"}).get(timeout=30)
    assert outcome["attempt"] == 1
    retry_worker.stop()
    # The retry committed and queued its stage; the message is lost (a broker restart).
    broker = redis_client(broker_url)
    assert broker.llen("pipeline") == 1
    broker.delete("pipeline")
    assert status_of(session, art_id) == "received"

    worker = start_worker(queues="pipeline,metrics", VOICEPIPE_STALL_TIMEOUT_SECONDS="1", **FAST)
    time.sleep(1.5)  # the artifact has now made no progress for longer than the stall timeout
    assert status_of(session, art_id) == "received"  # nothing else would ever move it
    report = client.send_task("voicepipe.maintenance.requeue_stalled", queue="metrics").get(timeout=30)
    assert report["failed"] == []
    assert [(r["artifact_id"], r["stage"], r["requeue_count"]) for r in report["requeued"]] == [
        (str(art_id), "transcription", 1)]

    wait_for(lambda: status_of(session, art_id) == "completed", timeout=60, what="recovered completion")
    types = event_types(session, art_id)
    assert types.count("retry_succeeded") == 1 and "retry_failed" not in types
    (requeued,) = [e for e in events(session, art_id) if e.metadata_.get("requeued")]
    assert requeued.event_type == "artifact_status_changed" and requeued.metadata_["requeueCount"] == 1
    assert artifact(session, art_id).requeue_count == 0  # progress resets the count
    assert "stall sweep done requeued=1 failed=0" in worker.log()


def test_after_max_requeues_a_stalled_artifact_fails_as_stalled_closing_its_retry(
    session: Session, db_url: str
) -> None:
    add_user(session, "staff-1")
    art_id = add_artifact(session, status="failed", failed_stage="claims_extraction")
    request_retry(session, stage="claims_extraction", artifact_id=art_id, requested_by="staff-1")
    session.commit()  # plain session: the queued message is never sent, as if lost
    now = datetime.now(UTC)
    for n in range(1, 4):  # default VOICEPIPE_MAX_REQUEUES: 3
        now += LATER
        report = requeue_stalled(session, now)
        session.commit()
        assert [r["requeue_count"] for r in report.requeued] == [n] and report.failed == []
        art = artifact(session, art_id)
        assert (art.status, art.current_stage, art.requeue_count) == ("transcribed", "claims_extraction", n)
    now += LATER
    report = requeue_stalled(session, now)
    session.commit()
    assert report.requeued == [] and [f["artifact_id"] for f in report.failed] == [str(art_id)]
    art = artifact(session, art_id)
    assert (art.status, art.failed_stage, art.error_code) == ("failed", "claims_extraction", "STALLED")
    assert art.active_retry_attempt is None
    failed_event = session.scalars(select(PipelineEvent).where(
        PipelineEvent.artifact_id == art_id, PipelineEvent.event_type == "artifact_failed")).one()
    assert failed_event.error_code == "STALLED" and failed_event.stage == "claims_extraction"
    assert event_types(session, art_id).count("retry_failed") == 1
    assert session.scalars(select(RetryRequest.outcome)).one() == "failed"
    # A failed artifact is no longer the sweeper's business.
    assert requeue_stalled(session, now + LATER).to_json() == {"requeued": [], "failed": []}


def test_two_sweepers_never_handle_one_artifact_and_fresh_work_is_left_alone(
    session: Session, engine: Engine
) -> None:
    stalled = add_artifact(session, status="processing", current_stage="entity_resolution",
                           updated_at=datetime.now(UTC) - LATER)
    busy = add_artifact(session, status="transcribing", current_stage="transcription")
    with engine.connect() as other:  # another sweeper, mid-transaction on the stalled row
        other.execute(text("SELECT 1 FROM artifacts WHERE id = :id FOR UPDATE"), {"id": stalled})
        assert requeue_stalled(session, datetime.now(UTC)).to_json() == {"requeued": [], "failed": []}
        session.rollback()
        other.rollback()
    report = requeue_stalled(session, datetime.now(UTC))
    session.commit()
    assert [r["artifact_id"] for r in report.requeued] == [str(stalled)]
    assert artifact(session, busy).requeue_count == 0


def test_a_run_overtaken_by_the_sweeper_discards_its_result(session: Session) -> None:
    art_id = add_artifact(session, status="transcribed", current_stage="claims_extraction",
                          updated_at=datetime.now(UTC) - LATER)
    claimed = claim_stage(session, art_id, "claims_extraction", "run-old")
    session.commit()
    assert claimed is not None and claimed.missing_input == "no transcript"
    # A duplicate message finds the stage taken.
    assert claim_stage(session, art_id, "claims_extraction", "run-dup") is None
    session.rollback()
    requeue_stalled(session, datetime.now(UTC) + LATER)
    session.commit()
    assert claim_stage(session, art_id, "claims_extraction", "run-new") is not None
    session.commit()
    item: StageInput = claimed.item
    result = ClaimsResult([ExtractedClaim("Sam pressed well.", 0.9)], 0.9, Cost("gpt-4o-mini", 0.001))
    assert finish_stage(session, claimed, "run-old", result, 12.0) == "discarded"
    session.commit()
    art = session.get(Artifact, item.artifact_id, populate_existing=True)
    assert art is not None and (art.status, art.stage_task_id) == ("processing", "run-new")
    assert "claims_extracted" not in event_types(session, art_id)
