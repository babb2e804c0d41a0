"""The recording tasks through a real worker process and a real broker."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import AiUsageLog, EventCounter, Organization, PipelineEvent, User
from tests.support.helpers import RECENT_DAY, Proc, wait_for


def count(session: Session, model: type) -> int:
    session.rollback()  # see other transactions' commits
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_a_producer_with_only_celery_records_events_usage_and_directory_rows(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    start_worker(queues="pipeline", VOICEPIPE_DIRECTORY_SECRET="test-directory-secret")
    event_id = str(uuid.uuid4())
    event = {"event_id": event_id, "event_type": "artifact_received", "organization_id": "org-1",
             "occurred_at": f"{RECENT_DAY}T10:00:00+00:00"}
    for _ in range(3):  # duplicate deliveries of one event
        client.send_task("voicepipe.events.record", kwargs=event, queue="pipeline")
    client.send_task("voicepipe.events.record_batch", queue="pipeline", kwargs={"events": [
        {"event_type": "artifact_completed", "organization_id": "org-1", "duration_ms": 5000,
         "occurred_at": f"{RECENT_DAY}T10:30:00Z"}]})
    client.send_task("voicepipe.usage.record", queue="pipeline", kwargs={
        "organization_id": "org-1", "operation": "parent_summary", "model": "m",
        "input_tokens": 100, "cached_tokens": 40, "output_tokens": 10, "cost": 0.002,
        "occurred_at": f"{RECENT_DAY}T10:00:00Z"})
    client.send_task("voicepipe.directory.upsert_organization", kwargs={"id": "org-1", "name": "Club"},
                     queue="pipeline")
    # Signed as the platform's directory sync signs it (docs/howto/security.md): HMAC-SHA256 hex of the
    # canonical JSON of the other arguments and the task's name, with a fresh issue time and a nonce.
    issued, nonce = datetime.now(UTC).isoformat(), "n0nce-" + uuid.uuid4().hex
    user = {"id": "u1", "email": "a@b.c", "is_platform_staff": True, "issued_at": issued, "nonce": nonce}
    canonical = ('{"email":"a@b.c","id":"u1","is_platform_staff":true,"issued_at":"' + issued + '","nonce":"'
                 + nonce + '","task":"voicepipe.directory.upsert_user"}')
    signature = hmac.new(b"test-directory-secret", canonical.encode(), hashlib.sha256).hexdigest()
    client.send_task("voicepipe.directory.upsert_user", queue="pipeline", kwargs={**user, "signature": signature})

    wait_for(lambda: count(session, PipelineEvent) == 2 and count(session, AiUsageLog) == 1
             and count(session, User) == 1 and count(session, Organization) == 1, what="rows")
    (counter,) = session.execute(select(EventCounter)).scalars()
    assert (counter.n_artifact_received, counter.n_artifact_completed) == (1, 1)
    assert counter.end_to_end_latency_sum == 5000.0
    assert session.get(User, "u1").is_platform_staff is True  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"event_type": "artifact_exploded"}, "event_type"),
        ({"event_type": "artifact_received", "occurred_at": f"{RECENT_DAY}T10:00:00"}, "occurred_at"),
        ({"event_type": "transcription_completed", "duration_ms": -5}, "duration_ms"),
        ({"event_type": "artifact_received", "colour": "red"}, "colour"),
    ],
)
def test_a_malformed_event_task_fails_with_invalid_input_and_is_not_retried(
    start_worker: Callable[..., Proc], client: Celery, session: Session, kwargs: dict, named: str
) -> None:
    worker = start_worker(queues="pipeline")
    result = client.send_task("voicepipe.events.record", kwargs=kwargs, queue="pipeline")
    with pytest.raises(Exception) as excinfo:
        result.get(timeout=30)
    assert type(excinfo.value).__name__ == "InvalidInput"
    assert named in str(excinfo.value)
    assert result.state == "FAILURE"
    assert count(session, PipelineEvent) == 0 and count(session, EventCounter) == 0
    assert "Retry in" not in worker.log()
