"""Retry steps 5 and 6 as committed, and who may be retried.

Most tests apply the retry with voicepipe.retry.service.request_retry in a session
of the test's own and commit; no worker runs, so what they read is the state the
retry's transaction left, before any stage could run. One goes through the retry
tasks on a real worker, on artifacts a real pipeline run left failed, with the
pipeline queue not consumed. The expected rows and
statuses are written here from the specification, not taken from the product's tables.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from models import Claim, EntityResolution, InsightDraft, PipelineEvent, Transcript
from tests.support.helpers import Proc, redis_client, wait_for
from tests.support.pipeline import (
    FAST,
    add_artifact,
    add_user,
    artifact,
    count,
    ingest,
    row_ids,
    snapshot,
    status_of,
)
from voicepipe.errors import RetryLimitExceeded, RetryNotAllowed, RetryRateLimited
from voicepipe.retry.service import request_retry
from voicepipe.settings import reset_settings

# Step 6: the status each retry kind resets the artifact to.
ENTRY_STATUS = {
    "full_pipeline": "received",
    "transcription": "transcribing",
    "claims_extraction": "transcribed",
    "entity_resolution": "processing",
    "draft_generation": "processing",
}
# Derived tables in pipeline order; a retry of a stage deletes its own and every later one.
DERIVED_IN_ORDER: tuple[tuple[str, Any], ...] = (
    ("transcription", Transcript),
    ("claims_extraction", Claim),
    ("entity_resolution", EntityResolution),
    ("draft_generation", InsightDraft),
)
FIRST_DELETED = {"full_pipeline": 0, "transcription": 0, "claims_extraction": 1,
                 "entity_resolution": 2, "draft_generation": 3}


@pytest.fixture
def env_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set VOICEPIPE_* variables for this test; settings are re-read now and after it."""
    reset_settings()
    yield monkeypatch
    monkeypatch.undo()
    reset_settings()


def add_derived_rows(session: Session, art_id: uuid.UUID) -> dict[str, set[uuid.UUID]]:
    """Rows of every derived table for the artifact (two of each but the one transcript)."""
    session.add(Transcript(artifact_id=art_id, text="we pressed high", word_count=3, confidence=0.9))
    for i in range(2):
        session.add(Claim(artifact_id=art_id, text=f"claim {i}", confidence=0.8))
        session.add(EntityResolution(artifact_id=art_id, mention=f"player {i}", resolved_entity_id=f"p{i}"))
        session.add(InsightDraft(artifact_id=art_id, content=f"draft {i}"))
    session.commit()
    return {stage: row_ids(session, model, art_id) for stage, model in DERIVED_IN_ORDER}


def retry(session: Session, stage: str, art_id: uuid.UUID, **kwargs: Any) -> None:
    """Apply one retry in the test's session and commit; the queued stage task is dropped."""
    request_retry(session, stage=stage, artifact_id=art_id, requested_by="staff-1", **kwargs)
    session.commit()
    # The stage task is sent by session_scope after commit; this session is not one,
    # so nothing is sent and no stage can run before the assertions.
    session.info.pop("after_commit", None)


@pytest.mark.parametrize("kind", list(ENTRY_STATUS))
def test_right_after_commit_a_retry_deleted_derived_rows_from_its_stage_on_and_reset_the_entry_status(
    session: Session, engine: Engine, kind: str
) -> None:
    add_user(session, "staff-1")
    # Failed in the last stage, so every retry kind is allowed, with rows of every stage.
    art_id = add_artifact(session, status="failed", failed_stage="draft_generation",
                          current_stage="draft_generation")
    before = add_derived_rows(session, art_id)
    assert all(before.values())

    retry(session, kind, art_id, reason="provider outage")

    # Read the committed state from a connection of its own.
    with Session(bind=engine) as reader:
        first_deleted = FIRST_DELETED[kind]
        for index, (stage, model) in enumerate(DERIVED_IN_ORDER):
            kept = row_ids(reader, model, art_id)
            if index < first_deleted:
                assert kept == before[stage], f"{kind}: {stage} rows must be kept with the same ids"
            else:
                assert kept == set(), f"{kind}: {stage} rows must be deleted"
        art = artifact(reader, art_id)
        assert art.status == ENTRY_STATUS[kind]
        assert (art.failed_stage, art.error_code, art.error_message) == (None, None, None)
        assert art.metadata_["retryAttempt"] == 1
        assert count(reader, PipelineEvent, PipelineEvent.artifact_id == art_id,
                     PipelineEvent.event_type == "retry_initiated") == 1



def test_through_the_retry_task_each_kind_resets_a_pipeline_built_artifact_and_only_queues_its_stage(
    start_worker: Callable[..., Proc], client: Celery, session: Session, broker_url: str
) -> None:
    add_user(session, "staff-1")
    # Five real artifacts that went through transcription, claims and entities, then failed.
    broken = start_worker(queues="pipeline", VOICEPIPE_SIMULATOR_FAIL_STAGES="draft_generation", **FAST)
    ids = {kind: ingest(client) for kind in ENTRY_STATUS}
    wait_for(lambda: all(status_of(session, a) == "failed" for a in ids.values()), timeout=90,
             what="the five artifacts to fail in draft_generation")
    broken.stop()
    before = {kind: {stage: row_ids(session, model, a) for stage, model in DERIVED_IN_ORDER}
              for kind, a in ids.items()}
    for rows in before.values():
        assert len(rows["transcription"]) == 1 and rows["claims_extraction"]
    queue = redis_client(broker_url)
    assert queue.llen("pipeline") == 0

    start_worker(queues="retry")  # the stage queue is not consumed: no stage can run
    for kind, art_id in ids.items():
        outcome = client.send_task(f"voicepipe.retry.{kind}", queue="retry", kwargs={
            "artifact_id": str(art_id), "requested_by": "staff-1", "reason": "provider outage"}).get(timeout=30)
        assert outcome["status"] == ENTRY_STATUS[kind]

    for kind, art_id in ids.items():
        for index, (stage, model) in enumerate(DERIVED_IN_ORDER):
            want = before[kind][stage] if index < FIRST_DELETED[kind] else set()
            assert row_ids(session, model, art_id) == want, (kind, stage)
        assert artifact(session, art_id).status == ENTRY_STATUS[kind], kind
    # Each retry queued its stage's task after its commit; none has run.
    assert queue.llen("pipeline") == len(ids)

def test_a_full_pipeline_retry_leaves_no_derived_row_of_the_artifact_and_keeps_other_artifacts_rows(
    session: Session, engine: Engine
) -> None:
    add_user(session, "staff-1")
    art_id = add_artifact(session, status="failed", failed_stage="entity_resolution")
    other = add_artifact(session, status="failed", failed_stage="draft_generation")
    add_derived_rows(session, art_id)
    others_rows = add_derived_rows(session, other)

    retry(session, "full_pipeline", art_id)

    with Session(bind=engine) as reader:
        for stage, model in DERIVED_IN_ORDER:
            assert count(reader, model, model.artifact_id == art_id) == 0, stage
            assert row_ids(reader, model, other) == others_rows[stage], stage
        assert artifact(reader, art_id).status == "received"
        assert artifact(reader, other).status == "failed"


def test_a_working_artifact_stalled_past_the_timeout_is_retryable_and_a_recent_one_is_refused(
    session: Session, engine: Engine, env_settings: pytest.MonkeyPatch
) -> None:
    env_settings.setenv("VOICEPIPE_STALL_TIMEOUT_SECONDS", "600")
    reset_settings()
    add_user(session, "staff-1")
    now = datetime.now(UTC)
    # 60 s on each side of the 600 s timeout: far more than the test takes to run.
    stalled = add_artifact(session, status="processing", current_stage="entity_resolution",
                           updated_at=now - timedelta(seconds=660))
    recent = add_artifact(session, status="processing", current_stage="entity_resolution",
                          updated_at=now - timedelta(seconds=540))
    add_derived_rows(session, stalled)
    add_derived_rows(session, recent)

    state = snapshot(engine)
    with pytest.raises(RetryNotAllowed, match="made progress"):
        request_retry(session, stage="entity_resolution", artifact_id=recent, requested_by="staff-1")
    session.rollback()
    assert snapshot(engine) == state  # a refusal changes nothing

    retry(session, "entity_resolution", stalled, reason="stuck")
    with Session(bind=engine) as reader:
        art = artifact(reader, stalled)
        assert (art.status, art.current_stage, art.metadata_["retryAttempt"]) == (
            "processing", "entity_resolution", 1)
        assert count(reader, EntityResolution, EntityResolution.artifact_id == stalled) == 0
        assert count(reader, Claim, Claim.artifact_id == stalled) == 2
        assert artifact(reader, recent).metadata_["retryAttempt"] == 0


@pytest.mark.parametrize("statuses", [("transcribing", "transcription"), ("received", "transcription"),
                                      ("transcribed", "claims_extraction")],
                         ids=["transcribing", "received", "transcribed"])
def test_every_working_status_is_retryable_once_stalled(
    session: Session, engine: Engine, env_settings: pytest.MonkeyPatch, statuses: tuple[str, str]
) -> None:
    status, stage = statuses
    env_settings.setenv("VOICEPIPE_STALL_TIMEOUT_SECONDS", "600")
    reset_settings()
    add_user(session, "staff-1")
    art_id = add_artifact(session, status=status, current_stage=stage,
                          updated_at=datetime.now(UTC) - timedelta(seconds=660))
    retry(session, stage, art_id)
    with Session(bind=engine) as reader:
        assert artifact(reader, art_id).status == ENTRY_STATUS[stage]


def test_the_retry_maximum_comes_from_its_variable_max_minus_one_accepted_max_refused(
    session: Session, engine: Engine, env_settings: pytest.MonkeyPatch
) -> None:
    env_settings.setenv("VOICEPIPE_MAX_RETRY_ATTEMPTS", "5")
    reset_settings()
    add_user(session, "staff-1")
    below = add_artifact(session, status="failed", failed_stage="transcription", retry_attempt=4)
    at_max = add_artifact(session, status="failed", failed_stage="transcription", retry_attempt=5)
    # 4 is also past the default maximum (3): accepted only because the variable says 5.
    retry(session, "transcription", below)
    with Session(bind=engine) as reader:
        art = artifact(reader, below)
        assert (art.status, art.metadata_["retryAttempt"]) == ("transcribing", 5)

    state = snapshot(engine)
    with pytest.raises(RetryLimitExceeded, match="5 of its 5"):
        request_retry(session, stage="transcription", artifact_id=at_max, requested_by="staff-1")
    session.rollback()
    assert snapshot(engine) == state
    assert artifact(session, at_max).metadata_["retryAttempt"] == 5


def test_without_the_variable_the_default_maximum_of_three_applies(
    session: Session, engine: Engine, env_settings: pytest.MonkeyPatch
) -> None:
    env_settings.delenv("VOICEPIPE_MAX_RETRY_ATTEMPTS", raising=False)
    reset_settings()
    add_user(session, "staff-1")
    below = add_artifact(session, status="failed", failed_stage="transcription", retry_attempt=2)
    at_max = add_artifact(session, status="failed", failed_stage="transcription", retry_attempt=3)
    retry(session, "transcription", below)
    assert artifact(session, below).metadata_["retryAttempt"] == 3
    with pytest.raises(RetryLimitExceeded):
        request_retry(session, stage="transcription", artifact_id=at_max, requested_by="staff-1")
    session.rollback()


def fail_again(session: Session, art_id: uuid.UUID) -> None:
    """The retried stage failed again: the artifact is failed at transcription, retryable."""
    session.execute(text("UPDATE artifacts SET status = 'failed', failed_stage = 'transcription', "
                         "active_retry_attempt = NULL WHERE id = :a"), {"a": art_id})
    session.commit()


def test_an_artifact_is_retried_at_most_the_hourly_limit_then_refused_until_the_hour_has_passed(
    session: Session, engine: Engine, env_settings: pytest.MonkeyPatch
) -> None:
    env_settings.setenv("VOICEPIPE_MAX_RETRY_ATTEMPTS", "5")
    env_settings.delenv("VOICEPIPE_MAX_RETRIES_PER_HOUR", raising=False)  # the default: 2
    start = datetime.now(UTC) - timedelta(hours=3)

    def at(offset: timedelta) -> None:
        env_settings.setenv("VOICEPIPE_FAKE_NOW", (start + offset).isoformat())
        reset_settings()

    at(timedelta(0))
    add_user(session, "staff-1")
    art_id = add_artifact(session, status="failed", failed_stage="transcription")
    other = add_artifact(session, status="failed", failed_stage="transcription")
    for minutes in (0, 20):
        at(timedelta(minutes=minutes))
        retry(session, "transcription", art_id)
        fail_again(session, art_id)
    at(timedelta(minutes=59))
    state = snapshot(engine)
    with pytest.raises(RetryRateLimited, match="retried 2 times in the last hour.*MAX_RETRIES_PER_HOUR allows"):
        request_retry(session, stage="transcription", artifact_id=art_id, requested_by="staff-1")
    session.rollback()
    assert snapshot(engine) == state  # refused: nothing changed
    retry(session, "transcription", other)  # the limit is per artifact
    # An hour after the first retry, one slot is free again.
    at(timedelta(minutes=60, seconds=1))
    retry(session, "transcription", art_id)
    assert artifact(session, art_id).metadata_["retryAttempt"] == 3
