"""An event about one organization's artifact, credited to another organization, is refused by name.

Through real workers: a single-event message on the batching `events` worker, the same
message run alone on a `pipeline` worker, and a batch holding one such event among good ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import EventCounter, PipelineEvent
from tests.support.helpers import RECENT, Proc
from tests.support.pipeline import add_artifact

HOUR = RECENT + timedelta(hours=13)


def event(artifact_id: uuid.UUID, organization_id: str, n: int = 0) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "event_type": "artifact_received", "artifact_id": str(artifact_id),
            "organization_id": organization_id, "occurred_at": (HOUR + timedelta(seconds=n)).isoformat()}


def stored(session: Session) -> tuple[int, dict[str | None, int]]:
    session.rollback()
    n = int(session.scalar(select(func.count()).select_from(PipelineEvent)) or 0)
    counted = dict(session.execute(select(EventCounter.organization_id, EventCounter.n_artifact_received)).all())
    return n, {k: v for k, v in counted.items() if v}


def refused(result: Any) -> str:
    with pytest.raises(Exception) as excinfo:
        result.get(timeout=60)
    assert type(excinfo.value).__name__ == "InvalidInput"
    return str(excinfo.value)


@pytest.mark.parametrize("queues", ["events", "pipeline"])
def test_a_single_event_for_another_organizations_artifact_is_refused(
    queues: str, start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    art = add_artifact(session, organization_id="org-a")
    start_worker(queues=queues)  # `events`: the batched path; `pipeline`: the message runs alone
    squatted = client.send_task("voicepipe.events.record", kwargs=event(art, "org-b"), queue=queues,
                                ignore_result=False)
    assert "organization_id: artifact" in refused(squatted)
    assert stored(session) == (0, {})
    own = client.send_task("voicepipe.events.record", kwargs=event(art, "org-a"), queue=queues, ignore_result=False)
    assert own.get(timeout=60) is True
    assert stored(session) == (1, {"org-a": 1})


def test_a_batch_with_one_foreign_event_is_refused_whole(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    art_a, art_b = add_artifact(session, organization_id="org-a"), add_artifact(session, organization_id="org-b")
    start_worker(queues="pipeline")
    batch = [event(art_a, "org-a", 1), event(art_b, "org-b", 2), event(art_b, "org-a", 3), event(art_a, "org-a", 4)]
    message = refused(client.send_task("voicepipe.events.record_batch", kwargs={"events": batch}, queue="pipeline",
                                       ignore_result=False))
    assert message.startswith("events[2].organization_id: artifact"), message
    assert stored(session) == (0, {})
