"""retry_history and the retry service's bookkeeping, called directly on a session."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from models import Artifact
from tests.integration.pipeline_support import add_artifact, add_user, artifact, event_types
from voicepipe.errors import ArtifactNotFound, RetryNotAllowed
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
