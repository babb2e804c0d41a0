"""A pickled message is refused by the worker; the JSON message after it runs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Producer
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import PipelineEvent
from tests.support.helpers import RECENT_DAY, Proc, redis_client, wait_for

pytestmark = pytest.mark.slow


class RunsCodeWhenUnpickled:
    """What an attacker would send: unpickling it creates a folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def publish(broker_url: str, kwargs: dict[str, Any], serializer: str) -> str:
    """A raw Celery protocol-2 message for voicepipe.events.record on the pipeline queue."""
    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py", "task": "voicepipe.events.record", "id": task_id, "root_id": task_id,
        "parent_id": None, "group": None, "retries": 0, "eta": None, "expires": None,
        "timelimit": [None, None], "argsrepr": "()", "kwargsrepr": "...", "origin": "attacker",
        "ignore_result": True,
    }
    body = ((), kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    with Connection(broker_url) as conn:
        Producer(conn).publish(body, exchange="", routing_key="pipeline", serializer=serializer,
                               headers=headers, delivery_mode=2)
    return task_id


def events(session: Session) -> int:
    session.rollback()
    return int(session.scalar(select(func.count()).select_from(PipelineEvent)) or 0)


def test_a_pickled_message_is_refused_and_the_next_json_message_is_processed(
    start_worker: Callable[..., Proc], broker_url: str, session: Session, tmp_path: Path
) -> None:
    worker = start_worker(queues="pipeline")
    marker = tmp_path / "pickle-ran"
    pickled_id = str(uuid.uuid4())
    publish(broker_url, {"event_id": pickled_id, "event_type": "artifact_received",
                         "occurred_at": f"{RECENT_DAY}T10:00:00+00:00",
                         "metadata": {"x": RunsCodeWhenUnpickled(marker)}}, serializer="pickle")
    json_id = str(uuid.uuid4())
    publish(broker_url, {"event_id": json_id, "event_type": "artifact_received",
                         "occurred_at": f"{RECENT_DAY}T10:00:00+00:00"}, serializer="json")

    wait_for(lambda: events(session) == 1, timeout=30, what="the JSON message's event")
    recorded = session.scalars(select(PipelineEvent.id)).all()
    assert [str(i) for i in recorded] == [json_id]
    assert not marker.exists(), "the pickled payload was deserialized"
    log = worker.log()
    assert "Refusing to deserialize untrusted content of type pickle" in log
    assert worker.alive()
    # Refused, not parked: nothing waits in the queue to be redelivered.
    with redis_client(broker_url) as redis:
        assert redis.llen("pipeline") == 0
