"""retry_history and the retry service's bookkeeping, called directly on a session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from models import Artifact
from tests.support.pipeline import add_artifact, add_user, artifact, event_types, snapshot
from voicepipe.errors import ArtifactNotFound, InvalidInput, RetryNotAllowed
from voicepipe.pipeline.stages import fail_artifact
from voicepipe.retry.history import retry_history
from voicepipe.retry.service import request_retry


def test_history_lists_every_attempt_with_who_when_why_and_how_it_ended(session: Session) -> None:
    add_user(session, "staff-1")
    add_user(session, "staff-2")
    art_id = add_artifact(session, status="failed", failed_stage="entity_resolution")
    assert retry_history(session, art_id) == []

    first = request_retry(session, stage="entity_resolution", artifact_id=str(art_id),
                          requested_by="staff-1", reason="timeout")
    session.commit()
    # While it is in flight, a second retry is refused.
    with pytest.raises(RetryNotAllowed, match="attempt 1 in flight"):
        request_retry(session, stage="full_pipeline", artifact_id=art_id, requested_by="staff-2")
    session.rollback()
    art = session.get(Artifact, art_id, with_for_update=True)
    assert art is not None and art.status == "processing"
    fail_artifact(session, art, stage="entity_resolution", code="PROVIDER_ERROR", message="503",
                  now=datetime.now(UTC), key="t1")
    session.commit()
    second = request_retry(session, stage="full_pipeline", artifact_id=art_id, requested_by="staff-2")
    session.commit()

    history = retry_history(session, art_id)
    assert [(h.attempt, h.stage, h.requested_by, h.reason, h.outcome) for h in history] == [
        (1, "entity_resolution", "staff-1", "timeout", "failed"),
        (2, "full_pipeline", "staff-2", None, "in_flight"),
    ]
    assert history[0].finished_at is not None and history[1].finished_at is None
    assert history[0].requested_at <= history[1].requested_at
    assert (first.attempt, second.attempt, second.status) == (1, 2, "received")
    assert history[1].to_json()["retry_id"] == str(second.retry_id)
    art = artifact(session, art_id)
    assert (art.status, art.current_stage, art.metadata_["retryAttempt"]) == ("received", "transcription", 2)
    types = event_types(session, art_id)
    assert types.count("retry_initiated") == 2 and types.count("retry_failed") == 1


def test_history_of_an_unknown_artifact_is_a_named_error(session: Session) -> None:
    with pytest.raises(ArtifactNotFound):
        retry_history(session, "00000000-0000-0000-0000-000000000001")


def test_a_request_id_repeated_after_its_artifact_failed_again_returns_its_outcome_and_changes_nothing(
    session: Session, engine: Engine
) -> None:
    add_user(session, "staff-1")
    art_id = add_artifact(session, status="failed", failed_stage="transcription")
    first = request_retry(session, stage="transcription", artifact_id=art_id, requested_by="staff-1",
                          request_id="req-7")
    session.commit()
    session.info.pop("after_commit", None)  # a plain session: nothing is sent
    # The retried stage fails again: the artifact may be retried, but not by that request.
    art = session.get(Artifact, art_id, with_for_update=True)
    assert art is not None
    fail_artifact(session, art, stage="transcription", code="PROVIDER_ERROR", message="503",
                  now=datetime.now(UTC), key="t1")
    session.commit()
    state = snapshot(engine)

    again = request_retry(session, stage="transcription", artifact_id=art_id, requested_by="staff-1",
                          request_id="req-7")
    session.commit()
    assert snapshot(engine) == state
    # The first retry's attempt and id, its outcome as it stands now (failed again).
    assert (again.retry_id, again.attempt, again.stage, again.status, again.outcome, again.duplicate) == (
        first.retry_id, 1, "transcription", "transcribing", "failed", True)
    # The same id for another stage of that artifact is refused by name.
    with pytest.raises(InvalidInput, match="request_id"):
        request_retry(session, stage="full_pipeline", artifact_id=art_id, requested_by="staff-1",
                      request_id="req-7")
    session.rollback()
    assert snapshot(engine) == state


def test_counters_after_retries_equal_the_stored_events_even_when_an_event_id_was_already_stored(
    session: Session,
) -> None:
    add_user(session, "staff-1")
    # Stalled in transcription: a transcription retry keeps its status (retry_initiated alone).
    art_id = add_artifact(session, status="transcribing", current_stage="transcription",
                          updated_at=datetime.now(UTC) - timedelta(hours=1))
    request_retry(session, stage="transcription", artifact_id=art_id, requested_by="staff-1")
    session.commit()
    # Failed again, its attempt count reset by hand: the next retry is attempt 1 again, whose
    # retry_initiated is already stored (a no-op) while its status change is new.
    session.execute(text("UPDATE artifacts SET status = 'failed', failed_stage = 'transcription', "
                         "active_retry_attempt = NULL, metadata = '{\"retryAttempt\": 0}' WHERE id = :id"),
                    {"id": art_id})
    session.commit()
    request_retry(session, stage="transcription", artifact_id=art_id, requested_by="staff-1")
    session.commit()
    session.info.pop("after_commit", None)

    stored = session.execute(text(
        "SELECT date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', event_type, count(*) "
        "FROM pipeline_events "
        "WHERE organization_id = 'org-1' GROUP BY 1, 2")).all()
    assert sorted((t, n) for _, t, n in stored) == [("artifact_status_changed", 1), ("retry_initiated", 1)]
    counters = session.execute(text(
        "SELECT hour_start, n_retry_initiated, n_artifact_status_changed FROM event_counters "
        "WHERE organization_id = 'org-1'")).all()
    want: dict[Any, dict[str, int]] = {}
    for hour, event_type, n in stored:
        want.setdefault(hour, {"retry_initiated": 0, "artifact_status_changed": 0})[event_type] += n
    assert {hour: {"retry_initiated": r, "artifact_status_changed": s} for hour, r, s in counters} == want
