"""Single-event messages on the broker path: nothing lost or counted twice around the batches.

Real workers on the test broker (Redis or RabbitMQ), the `events` queue consumed by a worker
of its own, as deployed. Every expected figure is counted here from what was sent.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery import Celery
from kombu import Connection as KombuConnection
from kombu import Producer as KombuProducer
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from models import EventCounter, PipelineEvent
from tests.support.faults import (
    SHORT_VISIBILITY_APP,
    lock_waiters,
    pool_children,
    production_producer,
    redis_lengths,
    start_worker_proc,
)
from tests.support.helpers import RECENT, Proc, is_amqp, rabbitmqctl, wait_for
from tests.support.pipeline import FAST, ingest, status_of
from tests.support.redis_server import OwnRedis
from voicepipe.observability.queues import queue_depths
from worker.batching import MAX_HELD_PER_PROCESS

pytestmark = pytest.mark.slow

HOUR = RECENT + timedelta(hours=11)
RECORDED = re.compile(r"batch recorded task=voicepipe\.events\.record size=(\d+)")
HANDED_BACK = re.compile(r"handed back task=voicepipe\.events\.record size=(\d+)")
LOST = re.compile(r"Connection to broker lost")
DISPATCHED = re.compile(r"batch dispatched task=voicepipe\.events\.record size=(\d+) buffered=(\d+)")


def event(n: int) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "event_type": "artifact_received", "organization_id": f"org-{n % 7}",
            "occurred_at": (HOUR + timedelta(seconds=n % 3600)).isoformat()}


def stored(session: Session) -> tuple[set[str], int]:
    """(event ids stored, artifact_received counted in the counters)."""
    session.rollback()
    ids = {str(i) for i in session.scalars(select(PipelineEvent.id))}
    counted = int(session.scalar(select(func.coalesce(func.sum(EventCounter.n_artifact_received), 0))) or 0)
    return ids, counted


def deliveries_counted(session: Session) -> int:
    session.rollback()
    return int(session.scalar(text("SELECT count(*) FROM task_deliveries")) or 0)


def send(client: Celery, bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        client.send_task("voicepipe.events.record", kwargs=body, queue="events", ignore_result=True)


def queue_before_the_worker(broker_url: str, bodies: list[dict[str, Any]]) -> None:
    """Queued with the production configuration before any worker starts: it finds them all at once."""
    client = production_producer(broker_url)
    try:
        send(client, bodies)
    finally:
        client.close()


def publish_undecodable(broker_url: str, task_id: str) -> None:
    """A task message whose body no consumer can decode, on the `events` queue."""
    with KombuConnection(broker_url) as conn:
        KombuProducer(conn.default_channel).publish(
            b"\xff{not json", routing_key="events", exchange="", content_type="application/json",
            content_encoding="utf-8", headers={"task": "voicepipe.events.record", "id": task_id, "lang": "py"})


def inspected(client: Celery, names: list[str], what: str) -> dict[str, Any]:
    """`what` (stats, reserved) of each named worker, asked again until every one has answered:
    a reply can miss a 3 s window on a loaded machine."""
    def ask() -> dict[str, Any] | None:
        with client.connection_for_read() as connection:  # closed here, not left to the collector
            replies = getattr(client.control.inspect(destination=names, timeout=3, connection=connection), what)()
        return replies if replies and set(names) <= set(replies) else None

    return dict(wait_for(ask, timeout=60, interval=0.5, what=f"{what} of {names}"))


def test_an_undecodable_message_among_a_thousand_good_ones_loses_none(
    broker_url: str, client: Celery, session: Session, start_worker: Callable[..., Proc]
) -> None:
    good = [event(n) for n in range(1000)]
    bad = str(uuid.uuid4())
    send(client, good[:300])
    publish_undecodable(broker_url, bad)
    send(client, good[300:])
    worker = start_worker(queues="events")

    want = {e["event_id"] for e in good}
    wait_for(lambda: stored(session)[0] == want, timeout=120, interval=0.5, what="the 1,000 good events")
    assert stored(session)[1] == 1000
    assert worker.alive(), worker.log()[-3000:]
    wait_for(lambda: queue_depths(broker_url, ["events"])["events"] == 0
             and (is_amqp(broker_url) or redis_lengths(broker_url)[1] == 0),
             timeout=30, what="nothing left queued or held")
    assert "UndecodableMessage" in worker.log()  # the bad one, refused by name and parked
    session.rollback()
    (letter,) = session.execute(text("SELECT task_id, reason, kwargs FROM dead_letters")).all()
    assert (letter.task_id, letter.reason) == (bad, "undecodable")
    assert base64.b64decode(letter.kwargs["undecodable_body"]) == b"\xff{not json"
    assert sum(int(s) for s in RECORDED.findall(worker.log())) == 1000  # all good ones in batches


def test_held_events_leave_other_workers_and_tasks_their_own_reservations(
    broker_url: str, client: Celery, session: Session, start_worker: Callable[..., Proc],
) -> None:
    # The events path blocked: the events worker's pool process frozen inside its first batch.
    events_worker = start_worker(queues="events")
    pipeline_worker = start_worker(queues="pipeline,metrics,retry", concurrency=2, **FAST)
    send(client, [event(n) for n in range(1)])
    wait_for(lambda: stored(session)[1] == 1, timeout=30, what="the events worker's first event")
    (pool,) = pool_children(events_worker)
    os.kill(pool, signal.SIGSTOP)
    try:
        singles = [event(n) for n in range(1, 301)]
        send(client, singles)
        wait_for(lambda: queue_depths(broker_url, ["events"])["events"] == 0, timeout=30,
                 what="the events worker holding every single-event message")
        # Meanwhile stage tasks (artifacts through the whole simulated pipeline) and batches flow.
        artifacts = [ingest(client) for _ in range(5)]
        batch = [event(n) for n in range(1000, 1050)]
        client.send_task("voicepipe.events.record_batch", queue="pipeline", kwargs={"events": batch})
        wait_for(lambda: all(status_of(session, a) == "completed" for a in artifacts), timeout=90,
                 interval=0.5, what="the five artifacts completed beside the held events")
        wait_for(lambda: {e["event_id"] for e in batch} <= stored(session)[0], timeout=30,
                 what="the record_batch written beside the held events")
        names = [events_worker.name, pipeline_worker.name]
        reserved = inspected(client, names, "reserved")
        stats = inspected(client, names, "stats")
        print("reserved per worker:", {k: len(v) for k, v in reserved.items()})
        print("prefetch per worker:", {k: v["prefetch_count"] for k, v in stats.items()})
        # The pipeline worker keeps one message per process, whatever the events worker holds;
        # the events worker holds nothing but single events.
        assert stats[pipeline_worker.name]["prefetch_count"] == 2
        assert len(reserved.get(pipeline_worker.name, [])) <= 2
        held = reserved.get(events_worker.name, [])
        assert held and {t["name"] for t in held} == {"voicepipe.events.record"}
        assert stats[events_worker.name]["prefetch_count"] > 300  # raised for what it holds
        assert stored(session)[1] < 301  # none of the 300 written while the pool is frozen
    finally:
        os.kill(pool, signal.SIGCONT)
    wait_for(lambda: {e["event_id"] for e in singles} <= stored(session)[0], timeout=60,
             what="the held events recorded once the pool runs again")


def test_a_worker_of_several_queues_runs_single_events_one_by_one_at_its_own_prefetch(
    client: Celery, session: Session, start_worker: Callable[..., Proc],
) -> None:
    worker = start_worker(queues="pipeline,events")
    singles = [event(n) for n in range(50)]
    send(client, singles)
    wait_for(lambda: stored(session)[1] == 50, timeout=60, what="the 50 single events")
    stats = inspected(client, [worker.name], "stats")
    assert stats[worker.name]["prefetch_count"] == 1  # never raised: it also takes pipeline tasks
    assert "batch dispatched" not in worker.log()  # each ran as its own task


def test_sigterm_hands_back_buffered_events_to_be_batched_again_uncounted(
    broker_url: str, db_url: str, session: Session, tmp_path: Path, locked_events: Connection
) -> None:
    n = 2000
    bodies = [event(i) for i in range(n)]
    queue_before_the_worker(broker_url, bodies)
    env = {"VOICEPIPE_LOCK_TIMEOUT_MS": "120000"}
    first = start_worker_proc(db_url, broker_url, tmp_path, "deployed", queues="events", concurrency=2, env=env)
    engine = create_engine(db_url)
    try:
        wait_for(lambda: len(lock_waiters(engine, "pipeline_events")) == 2, timeout=60,
                 what="two batches blocked on the lock")
        wait_for(lambda: queue_depths(broker_url, ["events"])["events"] == 0, timeout=30,
                 what="the rest of the messages held in the worker")
        in_flight = sum(int(size) for size, _ in DISPATCHED.findall(first.log()))
        os.kill(first.popen.pid, signal.SIGTERM)  # a deploy (`docker stop`): warm shutdown of the main process
        wait_for(lambda: HANDED_BACK.search(first.log()), timeout=30, what="the buffered messages handed back")
        handed_back = sum(int(s) for s in HANDED_BACK.findall(first.log()))
        assert handed_back >= n // 2 and handed_back + in_flight == n, (handed_back, in_flight)
        locked_events.rollback()  # the two batches in progress finish and are acknowledged
        first.popen.wait(60)
    finally:
        engine.dispose()
    assert stored(session)[1] == in_flight
    second = start_worker_proc(db_url, broker_url, tmp_path, "next", queues="events", concurrency=2)
    try:
        # Well within the visibility timeout (20 minutes): nothing waited for it.
        wait_for(lambda: stored(session)[1] >= n, timeout=120, interval=0.5, what=f"all {n} events recorded")
        time.sleep(1)
        ids, counted = stored(session)
        assert ids == {e["event_id"] for e in bodies} and counted == n
        assert deliveries_counted(session) == 0  # no message was counted as redelivered
        assert "redelivered message" not in second.log()
        assert sum(int(s) for s in RECORDED.findall(second.log())) == handed_back  # in batches
    finally:
        second.stop()


@contextmanager
def a_blocked_worker(broker_url: str, db_url: str, tmp_path: Path, name: str, n: int
                     ) -> Iterator[tuple[list[dict[str, Any]], Proc]]:
    """N single events queued before a -c 1 events worker starts, its first batch blocked on
    the lock (locked_events); (the events, the worker). Stopped on exit."""
    bodies = [event(i) for i in range(n)]
    queue_before_the_worker(broker_url, bodies)
    worker = start_worker_proc(db_url, broker_url, tmp_path, name, queues="events", concurrency=1,
                               env={"VOICEPIPE_LOCK_TIMEOUT_MS": "120000"})
    engine = create_engine(db_url)
    try:
        wait_for(lambda: lock_waiters(engine, "pipeline_events"), timeout=60, what="a batch blocked on the lock")
        yield bodies, worker
    finally:
        engine.dispose()
        worker.stop()


def test_an_events_worker_holds_at_most_its_bound_and_leaves_the_rest_queued(
    broker_url: str, db_url: str, session: Session, tmp_path: Path, locked_events: Connection
) -> None:
    # A worker raises its prefetch for the messages it holds, up to MAX_HELD_PER_PROCESS per
    # pool process on top of Celery's own window (one, -c 1): past that, what a killed worker
    # would leave to redelivery and what it keeps in memory stop growing, and the rest of
    # the queue stays on the broker for the other workers.
    bound = MAX_HELD_PER_PROCESS + 1
    n = bound + 600

    def queued() -> int:
        return int(queue_depths(broker_url, ["events"])["events"] or 0)

    with a_blocked_worker(broker_url, db_url, tmp_path, "bounded", n) as (bodies, worker):
        wait_for(lambda: queued() <= n - bound, timeout=60, interval=0.5, what=f"the worker holding {bound}")
        # Still taking messages past its bound, it would have taken more a few seconds on.
        time.sleep(3)
        assert queued() == n - bound, (queued(), n - bound)
        locked_events.rollback()
        wait_for(lambda: stored(session)[1] >= n, timeout=120, interval=0.5, what=f"all {n} events recorded")
        time.sleep(1)
        ids, counted = stored(session)
        assert ids == {e["event_id"] for e in bodies} and counted == n
        assert "redelivered message" not in worker.log()


def held_through_a_connection_loss(broker_url: str, db_url: str, session: Session, tmp_path: Path,
                                   locked_events: Connection, cut: Callable[[], object],
                                   back: Callable[[], None]) -> str:
    """1,000 events held by an events worker, a batch inside its transaction, when the broker
    connection is cut; the worker's log once every event is recorded and nothing is held."""
    n = 1000
    with a_blocked_worker(broker_url, db_url, tmp_path, "held", n) as (bodies, worker):
        wait_for(lambda: queue_depths(broker_url, ["events"])["events"] == 0, timeout=30, what="every message held")
        cut()
        wait_for(lambda: LOST.search(worker.log()), timeout=30, what="the worker to see the connection lost")
        locked_events.rollback()  # the batch commits while the connection is gone: it cannot be acknowledged
        wait_for(lambda: stored(session)[1] > 0, timeout=30, what="the blocked batch committed")
        before_loss = dispatched(LOST.split(worker.log(), 1)[0])
        assert 0 < before_loss < n  # a batch inside its transaction and the rest buffered
        back()
        # Well within Redis's visibility timeout (20 minutes): what the worker held came back at
        # once. Within a minute, however the waits are stretched.
        wait_for(lambda: stored(session)[1] >= n, timeout=60, interval=0.5, what=f"all {n} events recorded",
                 scale=False)
        time.sleep(2)
        ids, counted = stored(session)
        assert ids == {e["event_id"] for e in bodies} and counted == n
        assert worker.alive(), worker.log()[-3000:]
        wait_for(lambda: (queue_depths(broker_url, ["events"])["events"] == 0 if is_amqp(broker_url)
                          else redis_lengths(broker_url) == (0, 0)), timeout=30, what="nothing left held or queued")
        log = worker.log()
        # Batched again, not run one by one (a transaction each, a delivery counted).
        assert "redelivered message" not in log
        return log


def dispatched(log: str) -> int:
    return sum(int(size) for size, _ in DISPATCHED.findall(log))


def test_redis_restart_with_a_batch_in_flight_records_every_event_once_within_a_minute(
    own_redis: OwnRedis, db_url: str, session: Session, tmp_path: Path, locked_events: Connection
) -> None:
    # kill -9 with a batch in its transaction and the rest buffered
    log = held_through_a_connection_loss(own_redis.url, db_url, session, tmp_path, locked_events,
                                         cut=own_redis.kill, back=own_redis.start)
    assert "restored 1000 messages held across a connection loss" in log
    assert dispatched(log.split("messages held across a connection loss", 1)[1]) == 1000


@pytest.mark.rabbitmq
def test_rabbitmq_connection_cut_with_a_batch_in_flight_records_every_event_once_in_batches(
    broker_url: str, db_url: str, session: Session, tmp_path: Path, locked_events: Connection
) -> None:
    vhost = urlsplit(broker_url).path.lstrip("/")
    # RabbitMQ requeues what the connection held as it closes it.
    log = held_through_a_connection_loss(
        broker_url, db_url, session, tmp_path, locked_events,
        cut=lambda: rabbitmqctl("close_all_connections", "--vhost", vhost, "a connection loss"), back=lambda: None)
    assert dispatched(log.rsplit("Connected to ", 1)[1]) == 1000


def test_messages_of_a_failed_batch_stay_unacknowledged_until_each_has_run_alone(
    broker_url: str, db_url: str, session: Session, tmp_path: Path, locked_events: Connection
) -> None:
    # The batch fails on the held lock (300 ms), so each message runs alone, failing the same
    # way; the worker is killed while they do. Those not yet run must come back, not be lost.
    n = 30
    bodies = [event(i) for i in range(n)]
    queue_before_the_worker(broker_url, bodies)
    app = "worker" if is_amqp(broker_url) else SHORT_VISIBILITY_APP
    env = {"VOICEPIPE_LOCK_TIMEOUT_MS": "300", "VOICEPIPE_RECORD_FLUSH_MS": "1000", "VP_TEST_VISIBILITY_TIMEOUT_S": "3"}
    first = start_worker_proc(db_url, broker_url, tmp_path, "failing", queues="events", app=app, env=env)
    wait_for(lambda: "each message runs alone" in first.log(), timeout=60, what="the batch to fail")
    first.kill()  # kill -9, worker and pool, while the messages run alone one by one
    first.popen.wait(10)
    assert locked_events.execute(text("SELECT count(*) FROM pipeline_events")).scalar() == 0  # the lock's view
    locked_events.rollback()
    second = start_worker_proc(db_url, broker_url, tmp_path, "after", queues="events", app=app, env=env)
    try:
        wait_for(lambda: stored(session)[1] >= n, timeout=90, interval=0.5, what=f"all {n} events recorded")
        time.sleep(4)  # a late redelivery (visibility timeout 3 s) would show up as a double now
        assert stored(session) == ({e["event_id"] for e in bodies}, n)
    finally:
        second.stop()


def test_a_message_revoked_while_buffered_is_not_recorded(
    broker_url: str, client: Celery, session: Session, start_worker: Callable[..., Proc],
    locked_events: Connection, db_url: str,
) -> None:
    worker = start_worker(queues="events", VOICEPIPE_LOCK_TIMEOUT_MS="120000")
    engine = create_engine(db_url)
    try:
        send(client, [event(0)])  # the batch that waits on the lock
        wait_for(lambda: lock_waiters(engine, "pipeline_events"), timeout=60, what="a batch blocked on the lock")
        buffered = [event(i) for i in range(1, 21)]
        sent = [client.send_task("voicepipe.events.record", kwargs=b, queue="events") for b in buffered]
        wait_for(lambda: queue_depths(broker_url, ["events"])["events"] == 0, timeout=30, what="all buffered")
        client.control.revoke(sent[5].id)
        wait_for(lambda: sent[5].id in str((client.control.inspect(destination=[worker.name], timeout=2)
                                            .revoked() or {}).get(worker.name, [])), timeout=30,
                 what="the worker knows the revocation")
    finally:
        engine.dispose()
    locked_events.rollback()
    want = {e["event_id"] for i, e in enumerate(buffered) if i != 5}
    wait_for(lambda: len(stored(session)[0]) == 20, timeout=60, what="the 19 buffered and the first recorded")
    time.sleep(1)
    ids = stored(session)[0]
    assert want <= ids and buffered[5]["event_id"] not in ids
    assert f"Discarding revoked task: voicepipe.events.record[{sent[5].id}]" in worker.log()
