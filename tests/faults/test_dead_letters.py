"""Nothing lost, nothing doubled: dead letters, derived ids and the delivery limit, on real workers.

Real PostgreSQL, the test broker (Redis, or RabbitMQ when TEST_BROKER_URL is amqp://),
real `celery worker` subprocesses and the real `voicepipe` command line. Expected
figures are what the test sent, never computed by the code under test.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from models import DeadLetter, EventCounter, PipelineEvent
from tests.support.helpers import REPO_ROOT, Proc, is_amqp, service_env, wait_for

POISON_APP = "tests.support.poison_app"
# A recent closed hour: events must fall inside the retention and clock-skew bounds.
HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)


def event(n: int, *, with_id: bool = True, coach: str = "coach-1") -> dict[str, Any]:
    body: dict[str, Any] = {"event_type": "artifact_received", "organization_id": "org-dl", "coach_id": coach,
                            "occurred_at": (HOUR + timedelta(seconds=n)).isoformat()}
    if with_id:
        body["event_id"] = str(uuid.uuid4())
    return body


def cli(db_url: str, broker_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = service_env(db_url, broker_url, data_dir)
    return subprocess.run([sys.executable, "-m", "voicepipe.cli", *args], check=False, env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def recorded(session: Session) -> tuple[int, int, int]:
    """(event rows, distinct event ids, artifact_received counted in the counters)."""
    session.rollback()
    rows = int(session.scalar(select(func.count()).select_from(PipelineEvent)) or 0)
    distinct = int(session.scalar(select(func.count(func.distinct(PipelineEvent.id)))) or 0)
    counted = int(session.scalar(select(func.coalesce(func.sum(EventCounter.n_artifact_received), 0))) or 0)
    return rows, distinct, counted


def letters(session: Session) -> list[DeadLetter]:
    session.rollback()
    return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))


def test_locked_events_table_parks_every_message_and_replay_records_each_exactly_once(
    db_url: str, broker_url: str, client: Any, session: Session, start_worker: Callable[..., Proc],
    service_data_dir: Path,
) -> None:
    # The budget: one retry, each attempt waiting at most 300 ms for a lock.
    # Sent on `pipeline` as producers of earlier releases did; replayed on the task's route, `events`.
    start_worker(queues="pipeline,events", concurrency=4, VOICEPIPE_TASK_MAX_RETRIES="1",
                 VOICEPIPE_LOCK_TIMEOUT_MS="300")
    sent = [event(n, with_id=n % 2 == 0) for n in range(50)]  # half without event_id: derived from the task id
    holder_engine = create_engine(db_url)
    holder = holder_engine.connect()
    try:
        holder.execute(text("LOCK TABLE pipeline_events IN ACCESS EXCLUSIVE MODE"))  # held until rollback
        task_ids = [client.send_task("voicepipe.events.record", kwargs=e, queue="pipeline").id  # type: ignore[attr-defined]
                    for e in sent]
        wait_for(lambda: len(letters(session)) == 50, timeout=180, interval=0.5, what="50 dead letters")
        parked = letters(session)
        assert sorted(p.task_id for p in parked) == sorted(task_ids)
        for letter in parked:
            assert letter.task_name == "voicepipe.events.record"
            assert letter.queue == "events"
            assert letter.status == "parked"
            assert letter.reason == "retries_exhausted"
            assert letter.attempts == 2  # the first run and its one retry
            assert "lock timeout" in letter.error, letter.error
        assert sorted(json.dumps(p.kwargs, sort_keys=True) for p in parked) == sorted(
            json.dumps(e, sort_keys=True) for e in sent)
        # The lock holder sees the table as the workers left it: nothing written.
        assert holder.execute(text("SELECT count(*) FROM pipeline_events")).scalar() == 0
        assert holder.execute(text("SELECT coalesce(sum(n_artifact_received), 0) FROM event_counters")).scalar() == 0
        status = cli(db_url, broker_url, service_data_dir, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["dead_letters"] == 50
    finally:
        holder.rollback()
        holder.close()
        holder_engine.dispose()

    first = cli(db_url, broker_url, service_data_dir, "dead-letters", "replay", "--all")
    assert first.returncode == 0, first.stderr
    assert "50 dead letter(s) replayed" in first.stdout
    wait_for(lambda: recorded(session) == (50, 50, 50), timeout=120, interval=0.5, what="50 events recorded")
    ids = {str(i) for i in session.scalars(select(PipelineEvent.id))}
    assert {e["event_id"] for e in sent if "event_id" in e} <= ids
    assert all(p.status == "replayed" and p.replays == 1 for p in letters(session))

    second = cli(db_url, broker_url, service_data_dir, "dead-letters", "replay", "--all")
    assert second.returncode == 0, second.stderr
    assert "0 dead letter(s) replayed" in second.stdout
    # Re-sending one that already committed (by id) changes nothing either.
    again = cli(db_url, broker_url, service_data_dir, "dead-letters", "replay", "--id", str(letters(session)[1].id))
    assert again.returncode == 0, again.stderr
    marker = event(999)
    client.send_task("voicepipe.events.record", kwargs=marker, queue="pipeline")  # type: ignore[attr-defined]
    wait_for(lambda: recorded(session)[0] == 51, timeout=60, what="the marker event after the replays")
    assert recorded(session) == (51, 51, 51)
    status = cli(db_url, broker_url, service_data_dir, "status", "--json")
    assert json.loads(status.stdout)["dead_letters"] == 0


def test_a_replay_cut_short_by_the_broker_keeps_the_letters_it_sent_marked_and_the_rest_parked(
    db_url: str, broker_url: str, session: Session, start_worker: Callable[..., Proc], service_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`replay --all` of five letters, the broker unreachable from the third send on.

    The command (run in this process) publishes through its own Celery app; only that
    app's send_task is wrapped, to send from the third call on through the same
    configuration with the broker at a port where nothing listens: a real publish failure.
    """
    from celery import Celery
    from kombu.exceptions import OperationalError

    from voicepipe.cli import main
    from voicepipe.settings import reset_settings
    from worker.config import celery_config, result_backend_for
    from worker.deadletters import park

    bodies = [event(n) for n in range(5)]
    task_ids = [str(uuid.uuid4()) for _ in bodies]
    for task_id, body in zip(task_ids, bodies, strict=True):
        park(task_name="voicepipe.events.record", task_id=task_id, queue="pipeline", kwargs=body,
             reason="retries_exhausted", error="OperationalError: lock timeout", attempts=2)

    real_send_task = Celery.send_task
    published: list[str] = []  # task ids the real broker accepted
    with socket.socket() as closed, monkeypatch.context() as patch:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: a connection to it is refused
        port = closed.getsockname()[1]
        gone = f"amqp://guest:guest@127.0.0.1:{port}//" if is_amqp(broker_url) else f"redis://127.0.0.1:{port}/0"
        unreachable = Celery("unreachable-broker")
        unreachable.config_from_object(celery_config(gone, result_backend_for(broker_url, None)))

        def send_task(app: Celery, name: str, *args: Any, **kwargs: Any) -> Any:
            if len(published) == 2:
                return real_send_task(unreachable, name, *args, **kwargs)
            result = real_send_task(app, name, *args, **kwargs)
            published.append(kwargs["task_id"])
            return result

        patch.setenv("BROKER_URL", broker_url)
        reset_settings()
        patch.setattr(Celery, "send_task", send_task)
        try:
            with pytest.raises(OperationalError, match="Connection refused"):
                main(["dead-letters", "replay", "--all"])
        finally:
            unreachable.close()
    reset_settings()
    assert published == task_ids[:2]

    # The two sent are marked, each in its own transaction; the one that failed and the rest are not.
    assert [(p.task_id, p.status, p.replays, p.replayed_at is not None) for p in letters(session)] == [
        *[(t, "replayed", 1, True) for t in task_ids[:2]], *[(t, "parked", 0, False) for t in task_ids[2:]]]

    # A second run, the broker back, sends only those three; the worker records each of the five once.
    again = cli(db_url, broker_url, service_data_dir, "dead-letters", "replay", "--all")
    assert again.returncode == 0, again.stderr
    assert "3 dead letter(s) replayed" in again.stdout
    assert [f"task_id={t}" in again.stdout for t in task_ids] == [False, False, True, True, True]
    assert [(p.status, p.replays) for p in letters(session)] == [("replayed", 1)] * 5
    start_worker(queues="pipeline")
    wait_for(lambda: recorded(session) == (5, 5, 5), timeout=60, interval=0.5, what="the five events recorded")
    session.rollback()
    assert {str(i) for i in session.scalars(select(PipelineEvent.id))} == {b["event_id"] for b in bodies}


def test_same_message_without_ids_delivered_twice_records_once(
    db_url: str, broker_url: str, client: Any, session: Session, start_worker: Callable[..., Proc],
) -> None:
    worker = start_worker(queues="pipeline", concurrency=1)
    task_id, batch_id = str(uuid.uuid4()), str(uuid.uuid4())
    single = event(1, with_id=False)
    batch = {"events": [event(10 + i, with_id=False) for i in range(3)]}
    for _ in range(2):  # the same message twice: what a redelivery after commit-then-crash looks like
        client.send_task("voicepipe.events.record", kwargs=single, queue="pipeline", task_id=task_id)  # type: ignore[attr-defined]
        client.send_task("voicepipe.events.record_batch", kwargs=batch, queue="pipeline",  # type: ignore[attr-defined]
                         task_id=batch_id)
    wait_for(lambda: worker.log().count(f"[{batch_id}] succeeded") == 2 and worker.log().count(
        f"[{task_id}] succeeded") == 2, timeout=60, what="both deliveries of both messages ran")
    assert recorded(session) == (4, 4, 4)
    assert "duplicate event ignored" in worker.log()


def test_a_batch_above_the_limit_is_refused_by_name_and_never_parked(
    db_url: str, broker_url: str, client: Any, session: Session, start_worker: Callable[..., Proc],
) -> None:
    start_worker(queues="pipeline", VOICEPIPE_MAX_BATCH_SIZE="3")
    too_big = client.send_task("voicepipe.events.record_batch", queue="pipeline",  # type: ignore[attr-defined]
                               kwargs={"events": [event(n) for n in range(4)]})
    with pytest.raises(Exception) as excinfo:  # the producer sees the remote error by its name only
        too_big.get(timeout=60)
    assert type(excinfo.value).__name__ == "InvalidInput"
    assert "events: at most 3 items per batch" in str(excinfo.value)
    fits = [event(n) for n in range(10, 13)]
    client.send_task("voicepipe.events.record_batch", queue="pipeline", kwargs={"events": fits})  # type: ignore[attr-defined]
    wait_for(lambda: recorded(session)[0] == 3, timeout=60, what="the batch of three recorded")
    assert recorded(session) == (3, 3, 3)
    assert letters(session) == []


@pytest.mark.parametrize("queue", ["pipeline", "events"])  # one by one; the events worker's batches
def test_message_that_kills_its_worker_is_parked_after_the_delivery_limit_and_the_queue_flows(
    queue: str, db_url: str, broker_url: str, client: Any, session: Session, start_worker: Callable[..., Proc],
    service_data_dir: Path, tmp_path: Path,
) -> None:
    # On `events` the poison dies inside a batch with its neighbours: they all come back
    # redelivered and each runs alone, so the poison is counted and parked by itself.
    worker = _poison_worker(db_url, broker_url, service_data_dir, tmp_path, start_worker, queues=queue,
                            VOICEPIPE_DELIVERY_LIMIT="3")
    poison = event(0, coach="poison-pill")
    poison_task = client.send_task("voicepipe.events.record", kwargs=poison, queue=queue).id  # type: ignore[attr-defined]
    behind = [event(n) for n in range(1, 21)]
    for e in behind:
        client.send_task("voicepipe.events.record", kwargs=e, queue=queue)  # type: ignore[attr-defined]
    wait_for(lambda: len(letters(session)) == 1 and recorded(session)[0] == 20, timeout=120, interval=0.5,
             what="the poison parked and the 20 events behind it recorded")
    [letter] = letters(session)
    assert letter.task_id == poison_task
    assert letter.reason == "delivery_limit"
    assert letter.deliveries == 4  # three deliveries killed the process, the fourth was parked
    assert letter.kwargs == poison
    assert worker.log().count("WorkerLostError") >= 3
    session.rollback()
    ids = {str(i) for i in session.scalars(select(PipelineEvent.id))}
    assert ids == {e["event_id"] for e in behind}
    assert recorded(session) == (20, 20, 20)
    assert worker.alive()


@pytest.mark.parametrize("pill", ["slow-pill", "stubborn-pill"])
def test_message_past_its_time_limit_is_parked(
    pill: str, db_url: str, broker_url: str, client: Any, session: Session, start_worker: Callable[..., Proc],
    service_data_dir: Path, tmp_path: Path,
) -> None:
    """slow-pill: the soft limit is raised in the task; stubborn-pill: the hard limit kills the process."""
    _poison_worker(db_url, broker_url, service_data_dir, tmp_path, start_worker, VP_TEST_SHORT_LIMITS="1")
    slow = event(0, coach=pill)
    slow_task = client.send_task("voicepipe.events.record", kwargs=slow, queue="pipeline").id  # type: ignore[attr-defined]
    after = event(1)
    client.send_task("voicepipe.events.record", kwargs=after, queue="pipeline")  # type: ignore[attr-defined]
    wait_for(lambda: len(letters(session)) == 1 and recorded(session)[0] == 1, timeout=60, interval=0.5,
             what="the slow message parked and the next one recorded")
    [letter] = letters(session)
    assert (letter.task_id, letter.reason, letter.kwargs) == (slow_task, "time_limit", slow)
    assert ("SoftTimeLimitExceeded" if pill == "slow-pill" else "TimeLimitExceeded") in letter.error
    session.rollback()
    assert [str(i) for i in session.scalars(select(PipelineEvent.id))] == [after["event_id"]]


def test_a_blocked_task_fails_fast_below_its_soft_limit_as_transient_and_is_parked(
    db_url: str, broker_url: str, client: Any, session: Session, start_worker: Callable[..., Proc],
    service_data_dir: Path, tmp_path: Path,
) -> None:
    """Soft limit 2 s: statements and lock waits end at 1 s, a transient error, not a time limit.

    The 1 s is models/session.py's transaction_timeouts (the soft limit less a 5 s margin,
    never under 1 s); the lock timeout setting (60 s) is above it, so only the soft limit
    can bound the wait.
    """
    _poison_worker(db_url, broker_url, service_data_dir, tmp_path, start_worker, VP_TEST_SHORT_LIMITS="1",
                   VOICEPIPE_TASK_MAX_RETRIES="0", VOICEPIPE_LOCK_TIMEOUT_MS="60000")
    blocked = event(0)
    holder_engine = create_engine(db_url)
    holder = holder_engine.connect()
    try:
        holder.execute(text("LOCK TABLE pipeline_events IN ACCESS EXCLUSIVE MODE"))
        # record_batch: always the per-message path (single `record` messages may be batched
        # by the worker, worker/batching.py, under the batch job's own limits).
        task_id = client.send_task("voicepipe.events.record_batch", kwargs={"events": [blocked]},  # type: ignore[attr-defined]
                                   queue="pipeline").id
        # When the task's statement began waiting for the lock, as PostgreSQL saw it.
        blocked_since = wait_for(lambda: _lock_waiting_since(session), timeout=60, interval=0.02,
                                 what="the task's statement waiting for the lock")
        wait_for(lambda: len(letters(session)) == 1, timeout=60, interval=0.2, what="the blocked message parked")
    finally:
        holder.rollback()
        holder.close()
        holder_engine.dispose()
    [letter] = letters(session)
    # The statement waited its full 1 s timeout, then the message was parked: well below the
    # 2 s soft limit (and the 4 s hard one). Both instants are PostgreSQL's clock.
    waited = (letter.first_failed_at - blocked_since).total_seconds()
    assert 1.0 <= waited < 1.5, f"parked {waited:.3f} s after the statement began waiting"
    assert (letter.task_id, letter.reason, letter.attempts) == (task_id, "retries_exhausted", 1)
    assert "lock timeout" in letter.error or "statement timeout" in letter.error, letter.error


def _lock_waiting_since(session: Session) -> datetime | None:
    """The start of the one statement of this database waiting for a lock, if any."""
    session.rollback()  # pg_stat_activity is read once per transaction
    return session.scalar(text(
        "SELECT query_start FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"))


def _poison_worker(db_url: str, broker_url: str, data_dir: Path, tmp_path: Path,
                   start_worker: Callable[..., Proc], queues: str = "pipeline", **env: str) -> Proc:
    """A worker of the poison app (tests/support/poison_app.py), stopped by start_worker's teardown."""
    from tests.support.helpers import celery_cmd, spawn

    name = f"poison-{uuid.uuid4().hex[:6]}@test"
    args = celery_cmd("worker", "-Q", queues, "-c", "1", "-P", "prefork", "-n", name,
                      "--without-mingle", "--without-gossip", "-l", "INFO")
    args[args.index("-A") + 1] = POISON_APP
    proc = spawn(args, service_env(db_url, broker_url, data_dir, **env), tmp_path / "poison.log", name=name)
    _STARTED.append(proc)
    start_worker.wait_until_ready(proc)  # type: ignore[attr-defined]
    return proc


_STARTED: list[Proc] = []


@pytest.fixture(autouse=True)
def _stop_poison_workers() -> Any:
    yield
    while _STARTED:
        _STARTED.pop().stop()
