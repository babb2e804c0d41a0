"""Broker faults on the test broker (Redis or RabbitMQ, from TEST_BROKER_URL): zero lost, zero doubled.

- a worker killed with -9 while it holds messages (running and prefetched): runs on
  both brokers (Redis: the short-visibility app brings them back; RabbitMQ: at once);
- RabbitMQ restarted (`rabbitmqctl stop_app` / `start_app`) while producers send:
  RabbitMQ only (marked `rabbitmq`; Redis has its own restart test, test_redis_restart.py).

Producers behave as docs/producers.md tells them to: every event carries its own event_id,
and a send that raised is sent again with the same id until one returns.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from tests.faults.test_dead_letters import recorded
from tests.faults.test_redis_restart import Producer, Supervisor
from tests.support.faults import (
    SHORT_VISIBILITY_APP,
    lock_waiters,
    production_producer,
    start_worker_proc,
)
from tests.support.helpers import RECENT, is_amqp, rabbitmqctl, service_env, wait_for

pytestmark = pytest.mark.slow


def test_worker_killed_holding_messages_loses_and_doubles_nothing(
    db_url: str, broker_url: str, session: Session, tmp_path: Path
) -> None:
    app = "worker" if is_amqp(broker_url) else SHORT_VISIBILITY_APP
    # Tasks wait on the held lock instead of failing fast, so the worker dies holding them.
    env = {"VOICEPIPE_LOCK_TIMEOUT_MS": "120000", "VP_TEST_VISIBILITY_TIMEOUT_S": "3"}
    first = start_worker_proc(db_url, broker_url, tmp_path, "held", queues="pipeline", concurrency=2, app=app,
                              env=env)
    hour = RECENT + timedelta(hours=5)
    sent = []
    for n in range(30):
        body: dict[str, Any] = {"event_type": "artifact_received", "organization_id": f"org-{n % 3}",
                                "occurred_at": (hour + timedelta(seconds=n)).isoformat()}
        if n % 2 == 0:
            body["event_id"] = str(uuid.uuid4())
        sent.append(body)
    client = production_producer(broker_url)
    holder_engine = create_engine(db_url)
    holder = holder_engine.connect()
    try:
        holder.execute(text("LOCK TABLE pipeline_events IN ACCESS EXCLUSIVE MODE"))
        for body in sent:
            client.send_task("voicepipe.events.record", kwargs=body, queue="pipeline", ignore_result=True)
        wait_for(lambda: len(lock_waiters(holder_engine, "pipeline_events")) >= 2, timeout=60,
                 what="two tasks blocked inside their transactions")
        first.kill()  # kill -9 the whole worker: main process and pool, messages unacknowledged
        first.popen.wait(10)
    finally:
        holder.rollback()
        holder.close()
        holder_engine.dispose()
        client.close()
    second = start_worker_proc(db_url, broker_url, tmp_path, "after", queues="pipeline", concurrency=2, app=app,
                               env=env)
    try:
        wait_for(lambda: recorded(session)[0] >= 30, timeout=120, interval=0.5, what="all 30 events recorded")
        time.sleep(3)  # a late redelivery would show up as a double count now
        assert recorded(session) == (30, 30, 30)
        assert "received" in first.log()  # the killed worker did hold messages
    finally:
        second.stop()


@pytest.mark.rabbitmq
def test_rabbitmq_restarted_under_producers_loses_and_doubles_nothing(
    db_url: str, broker_url: str, session: Session, tmp_path: Path
) -> None:
    supervisor = Supervisor(service_env(db_url, broker_url, tmp_path / "data"), tmp_path)
    producer = Producer(broker_url)
    try:
        wait_for(lambda: "ready." in supervisor.current.log(), timeout=60, what="worker ready")
        supervisor.start()
        producer.start()
        wait_for(lambda: recorded(session)[0] >= 60, timeout=60, what="events flowing")
        rabbitmqctl("stop_app")  # every connection cut; durable queues and persistent messages on disk
        time.sleep(3)
        rabbitmqctl("start_app")
        acknowledged_at_restart = len(producer.acknowledged)
        wait_for(lambda: len(producer.acknowledged) >= acknowledged_at_restart + 60, timeout=120,
                 what="producer acknowledged again after the restart")
        producer.stopping.set()
        producer.join(30)
        assert not producer.is_alive()
        wait_for(lambda: producer.acknowledged <= {i for i in _ids(session)}, timeout=120, interval=0.5,
                 what=f"all {len(producer.acknowledged)} acknowledged events recorded")
        time.sleep(3)  # anything redelivered late would show up as a double count now
        rows, distinct, counted = recorded(session)
        ids = _ids(session)
    finally:
        producer.stopping.set()
        supervisor.stop()
        _ensure_rabbitmq_running()
    print(f"acknowledged={len(producer.acknowledged)} recorded={rows} send failures={len(producer.failures)} "
          f"worker runs={len(supervisor.runs)}")
    assert producer.failures, "the producer never saw RabbitMQ down: the fault was not injected"
    assert producer.acknowledged <= ids, "an acknowledged event was lost"
    # Events whose send raised may still have reached the broker; their re-send has the same id.
    assert ids <= set(producer.task_of), "an event nobody sent was recorded"
    assert rows == distinct == counted, "an event was recorded or counted twice"


def _ids(session: Session) -> set[str]:
    from sqlalchemy import select

    from models import PipelineEvent

    session.rollback()
    return {str(i) for i in session.scalars(select(PipelineEvent.id))}


def _ensure_rabbitmq_running() -> None:
    rabbitmqctl("start_app")  # a no-op when it runs; leaves the machine's RabbitMQ up whatever failed
