"""kill -9 and restart Redis while a task runs: the worker keeps consuming, the task's message comes back.

Our own redis-server (append-only), a real worker with two processes and the poison
app (tests/support/poison_app.py), whose `slow-pill` event keeps its record_batch task
running for a minute. Redis is killed while that task runs and started again.

On reconnecting, Celery cancels the running task (worker_cancel_long_running_tasks_on_connection_loss)
and answers its message through the lost connection's channel; kombu 5.7's Redis channel
has no connection then and raises an AttributeError that stopped the worker. The worker
must instead stay up and record a new event sent after the restart, and the slow task's
message must come back on its queue (handed back through the new connection).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import PipelineEvent
from tests.support.faults import redis_lengths, start_worker_proc
from tests.support.helpers import RECENT, producer, wait_for
from tests.support.redis_server import OwnRedis

pytestmark = pytest.mark.slow


def _event(coach: str | None = None) -> dict[str, str]:
    event = {"event_id": str(uuid.uuid4()), "event_type": "artifact_received", "organization_id": "org-slow",
             "occurred_at": RECENT.isoformat()}
    if coach:
        event["coach_id"] = coach
    return event


def test_redis_killed_while_a_task_runs_leaves_the_worker_consuming(
    own_redis: OwnRedis, db_url: str, session: Session, tmp_path: Path
) -> None:
    worker = start_worker_proc(db_url, own_redis.url, tmp_path, "running", queues="pipeline", concurrency=2,
                               app="tests.support.poison_app")
    try:
        sender = producer(own_redis.url)
        sender.send_task("voicepipe.events.record_batch", kwargs={"events": [_event("slow-pill")]},
                         queue="pipeline", ignore_result=True)
        wait_for(lambda: "voicepipe.events.record_batch" in worker.log()
                 and redis_lengths(own_redis.url, "pipeline") == (0, 1),
                 timeout=30, what="the slow task running, its message unacknowledged")
        own_redis.kill()
        time.sleep(2)
        own_redis.start()  # same port, same append-only file
        wait_for(lambda: worker.log().count("Connected to redis") >= 2 or not worker.alive(), timeout=60,
                 what="the worker reconnected")
        time.sleep(3)  # the cancelled task's answer comes back from the pool meanwhile
        fresh = _event()

        def recorded() -> bool:
            assert worker.alive() and "Unrecoverable error" not in worker.log(), worker.log()[-4000:]
            try:
                sender.send_task("voicepipe.events.record_batch", kwargs={"events": [fresh]}, queue="pipeline",
                                 ignore_result=True)
            except Exception:  # the producer's connection to the restarted Redis: sent again next time
                return False
            session.rollback()
            return bool(session.scalar(select(func.count()).where(PipelineEvent.id == uuid.UUID(fresh["event_id"]))))

        wait_for(recorded, timeout=60, interval=3, what="an event sent after the restart recorded")
        assert "Unrecoverable error" not in worker.log(), worker.log()[-4000:]
        # The slow task's message was handed back, not lost: it is queued or running again.
        assert sum(redis_lengths(own_redis.url, "pipeline")) >= 1
    finally:
        worker.stop()
