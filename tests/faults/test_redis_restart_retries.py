"""kill -9 and restart Redis while a producer sends retries: no artifact stays stuck, no retry applies twice.

Our own redis-server (append-only, as in docker-compose.yml), a real worker on
every queue with the simulated processor (fast, and failing now and then so some
retried artifacts fail again), failed artifacts and a staff user. A producer thread
with the production configuration sends `voicepipe.retry.*` by name, two requests
per artifact with distinct request_ids, the second a few artifacts behind the
first; a send that raises is sent again with the same request_id, as a real
producer must. Redis is killed in the middle and started again on the same
append-only file.

What is in flight when Redis dies is recovered the designed ways: a stage message
whose publish failed after its retry committed is re-queued by the stall sweeper
(voicepipe.maintenance.requeue_stalled, with a short VOICEPIPE_STALL_TIMEOUT_SECONDS),
and a message the worker held unacknowledged comes back after the visibility
timeout (shortened here, see tests/support/short_visibility.py): the test waits until
none is left in Redis's unacknowledged set. A worker that exits on the connection loss
is started again, as its supervisor would.

Afterwards every artifact is completed or failed; every request whose send
returned was applied (one retry_requests row, one retry_initiated event) or refused
with a named error (the worker's log line for it); none was applied twice.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Artifact, PipelineEvent, RetryRequest
from tests.support.faults import SHORT_VISIBILITY_APP, production_producer, start_worker_proc
from tests.support.helpers import Proc, producer, wait_for
from tests.support.pipeline import FAST, add_artifact, add_user
from tests.support.redis_server import OwnRedis
from voicepipe.errors import REFUSALS

pytestmark = pytest.mark.slow

ARTIFACTS = 40
TERMINAL = {"completed", "failed"}
REFUSAL_NAMES = {cls.__name__ for cls in REFUSALS}



class RetryProducer(threading.Thread):
    """Sends each request until a send returns; remembers which requests were acknowledged."""

    def __init__(self, broker_url: str, requests: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.app = production_producer(broker_url)
        self.requests = requests
        self.accepted: dict[str, dict[str, Any]] = {}
        self.task_of: dict[str, str] = {}  # request_id -> the task id of the send that returned
        self.failures: list[str] = []
        self.sent = 0

    def run(self) -> None:
        try:
            for request in self.requests:
                while True:
                    try:
                        sent = self.app.send_task(
                            f"voicepipe.retry.{request['stage']}", queue="retry", ignore_result=True,
                            kwargs={k: v for k, v in request.items() if k != "stage"})
                        self.task_of[request["request_id"]] = sent.id
                        break
                    except Exception as exc:
                        self.failures.append(type(exc).__name__)
                        time.sleep(0.2)
                self.accepted[request["request_id"]] = request
                self.sent += 1
                time.sleep(0.05)
        finally:
            self.app.close()


def test_redis_killed_while_retries_are_sent_leaves_no_artifact_stuck_and_no_retry_doubled(
    own_redis: OwnRedis, db_url: str, session: Session, tmp_path: Path
) -> None:
    add_user(session, "staff-1")
    artifacts = [add_artifact(session, status="failed", failed_stage="transcription") for _ in range(ARTIFACTS)]
    requests: list[dict[str, Any]] = []
    for i, art in enumerate(artifacts):
        stage = "full_pipeline" if i % 2 else "transcription"
        requests.append({"stage": stage, "artifact_id": str(art), "requested_by": "staff-1",
                         "reason": "provider outage", "request_id": f"first-{i}-{uuid.uuid4().hex[:6]}"})
        if i >= 4:  # a second operator retries an artifact sent a moment ago
            requests.append({"stage": "full_pipeline", "artifact_id": str(artifacts[i - 4]), "requested_by": "staff-1",
                             "reason": "again", "request_id": f"second-{i - 4}-{uuid.uuid4().hex[:6]}"})

    def start_worker(n: int) -> Proc:
        return start_worker_proc(
            db_url, own_redis.url, tmp_path, f"retries-{n}", queues="retry,pipeline,metrics", concurrency=2,
            app=SHORT_VISIBILITY_APP, env={
                "VP_TEST_VISIBILITY_TIMEOUT_S": "8", "VOICEPIPE_STALL_TIMEOUT_SECONDS": "2",
                "VOICEPIPE_SIMULATOR_FAILURE_RATE": "0.1", "VOICEPIPE_SIMULATOR_SEED": "3", **FAST},
            wait=n == 0)  # a restart is not waited for: the loop below keeps polling

    workers: list[Proc] = [start_worker(0)]
    sender = RetryProducer(own_redis.url, requests)
    sweeper = producer(own_redis.url)
    sweep_failures: list[str] = []
    try:
        sender.start()
        wait_for(lambda: sender.sent >= len(requests) // 3, timeout=30, what="retries flowing")
        own_redis.kill()  # kill -9 with requests, stage messages and unacked messages in flight
        time.sleep(2)
        own_redis.start()  # same port, same append-only file
        sender.join(60)
        assert not sender.is_alive(), "the producer never got its requests through"

        def settled() -> bool:
            if not workers[-1].alive():
                # A worker may exit on the connection loss; its supervisor starts it again
                # (compose: restart: unless-stopped; docs/howto/survival.md).
                workers.append(start_worker(len(workers)))
            session.rollback()
            statuses = set(session.scalars(select(Artifact.status)))
            in_flight = session.scalar(select(RetryRequest.id).where(RetryRequest.outcome == "in_flight").limit(1))
            # Settled also means no message left in limbo: a message the worker had received but
            # not acknowledged when Redis died waits in Redis's unacknowledged set until the
            # visibility timeout (8 s here) puts it back on its queue, and is then run.
            broker = own_redis.client()
            limbo = broker.hlen("unacked") + broker.llen("retry")
            if statuses <= TERMINAL and in_flight is None and limbo == 0:
                return True
            # What beat does every five minutes: sweep for stalled artifacts.
            try:
                sweeper.send_task("voicepipe.maintenance.requeue_stalled", queue="metrics", ignore_result=True)
            except Exception as exc:
                sweep_failures.append(type(exc).__name__)
            return False

        try:
            wait_for(settled, timeout=120, interval=1.5, what="every artifact completed or failed")
        except AssertionError as exc:
            session.rollback()
            stuck = session.execute(select(Artifact.id, Artifact.status, Artifact.current_stage)
                                    .where(Artifact.status.not_in(TERMINAL))).all()
            raise AssertionError(f"{exc}\nstuck: {stuck}\nworker log:\n{workers[-1].log()[-5000:]}") from None
        time.sleep(3)  # a late redelivery would show up as a second application now
        log = "\n".join(w.log() for w in workers)
    finally:
        sweeper.close()
        workers[-1].stop()

    assert sender.failures, "the producer never saw Redis down: the fault was not injected"
    session.rollback()
    applied = session.execute(select(RetryRequest.request_id, RetryRequest.artifact_id, RetryRequest.outcome)).all()
    applied_ids = Counter(r.request_id for r in applied)
    assert all(n == 1 for n in applied_ids.values()), applied_ids
    assert set(applied_ids) <= set(sender.accepted), "a retry nobody sent was applied"
    refused: dict[str, set[str]] = {}
    for request_id, name in re.findall(r"retry refused .*? request_id=(\S+) refusal=(\w+)", log):
        refused.setdefault(request_id, set()).add(name)
    assert {n for names in refused.values() for n in names} <= REFUSAL_NAMES
    unanswered = [r for r in sender.accepted if r not in applied_ids and r not in refused]
    # kombu's Redis transport takes a message off the queue, then records it as
    # unacknowledged: a Redis crash between the two loses that one message, which the
    # worker never sees (docs/howto/survival.md). Anything else unanswered is a bug.
    seen = [r for r in unanswered if sender.task_of[r] in log]
    assert seen == [] and len(unanswered) <= 1, (
        f"{len(unanswered)} acknowledged retries neither applied nor refused: {unanswered[:5]}; "
        f"seen by the worker: {seen[:5]}"
    )
    assert refused, "no request was refused: the second requests did not meet the first"

    # One retry_initiated per applied request, and the attempt counter agrees.
    initiated = Counter(
        art for art in session.scalars(select(PipelineEvent.artifact_id)
                                       .where(PipelineEvent.event_type == "retry_initiated")))
    per_artifact = Counter(r.artifact_id for r in applied)
    assert initiated == per_artifact
    for row in session.scalars(select(Artifact)):
        assert row.status in TERMINAL, (row.id, row.status)
        assert row.metadata_["retryAttempt"] == per_artifact[row.id], row.id
    assert {r.outcome for r in applied} <= {"succeeded", "failed"}
    # Each applied retry is closed by exactly one retry_succeeded or retry_failed.
    closed = Counter(
        art for art in session.scalars(select(PipelineEvent.artifact_id).where(
            PipelineEvent.event_type.in_(("retry_succeeded", "retry_failed")))))
    assert closed == per_artifact
