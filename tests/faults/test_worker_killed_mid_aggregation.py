"""kill -9 a worker in the middle of aggregating a window, three times: the window ends complete and single.

Each round adds events (and organizations) to one hour, sends aggregate_hour, and
stops the task at a chosen point inside its transaction by holding a lock from a
test connection; the worker waiting there is killed with SIGKILL, then the message
must be delivered again and the window recomputed:

1. waiting for the window's advisory lock (nothing written yet); the whole worker
   group is killed and a new worker started: the message comes back from Redis's
   `unacked` hash once older than the visibility timeout (late acks);
2. half way through the snapshot upsert (an organization's row is locked); only the
   pool process is killed: its parent rejects the message back onto the queue
   (task_reject_on_worker_lost) and a new pool process runs it;
3. at the very end, every snapshot row written, waiting on the aggregation_windows
   row; the whole group is killed, a new worker started.

The killed transaction never commits: the window afterwards holds exactly one row
per organization plus one platform row, equal to a recount of the raw events.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.support.faults import (
    HOUR,
    SHORT_VISIBILITY_APP,
    duplicates,
    expected_hours,
    lock_waiters,
    pool_children,
    start_worker_proc,
    this_hour,
    wait_ready,
    window_events,
    window_fresh,
    window_mismatch,
)
from tests.support.helpers import Proc, producer, wait_for
from tests.support.redis_server import OwnRedis
from voicepipe.events.recording import record_events

pytestmark = pytest.mark.slow

VISIBILITY_S = "4"
# Lock namespace and key of aggregate_hour's advisory lock (voicepipe/metrics/bookkeeping.py).
HOURLY_LOCK_NAMESPACE = 0x76700001



def hold_advisory_lock(conn: object, hour: datetime) -> None:
    conn.execute(text("SELECT pg_advisory_xact_lock(:ns, :n)"),  # type: ignore[attr-defined]
                 {"ns": HOURLY_LOCK_NAMESPACE, "n": int(hour.timestamp()) // 3600})


def hold_snapshot_row(conn: object, hour: datetime, org: str) -> None:
    locked = conn.execute(text(  # type: ignore[attr-defined]
        "SELECT 1 FROM metrics_snapshots WHERE period_type = 'hourly' AND period_start = :h "
        "AND organization_id = :o FOR UPDATE"), {"h": hour, "o": org}).all()
    assert locked, "the row to lock must exist (written by the previous round)"


def hold_window_row(conn: object, hour: datetime) -> None:
    locked = conn.execute(text(  # type: ignore[attr-defined]
        "SELECT 1 FROM aggregation_windows WHERE period_type = 'hourly' AND period_start = :h FOR UPDATE"),
        {"h": hour}).all()
    assert locked


def test_a_worker_killed_mid_window_three_times_leaves_the_window_complete_and_single(
    own_redis: OwnRedis, db_url: str, engine: Engine, session: Session, tmp_path: Path
) -> None:
    hour = this_hour() - 3 * HOUR
    rng = random.Random(5)
    events: list[dict[str, object]] = []
    client: Celery = producer(own_redis.url)
    workers: list[Proc] = []

    def new_worker(name: str) -> Proc:
        proc = start_worker_proc(db_url, own_redis.url, tmp_path, name, app=SHORT_VISIBILITY_APP,
                                 env={"VP_TEST_VISIBILITY_TIMEOUT_S": VISIBILITY_S})
        workers.append(proc)
        return proc

    def add_events(orgs: list[str | None], n: int) -> None:
        batch = window_events(rng, hour, orgs, n)
        record_events(session, batch)
        session.commit()
        events.extend(batch)

    def run_round(hold: Callable[[object], None], waits_in: str, kill: str) -> None:
        worker = workers[-1]
        with engine.connect() as holder:
            hold(holder)
            task_id = client.send_task("voicepipe.metrics.aggregate_hour", queue="metrics",
                                       kwargs={"window_start": hour.isoformat()}).id
            wait_for(lambda: lock_waiters(engine, waits_in), timeout=30,
                     what=f"the task to wait inside its transaction on {waits_in}")
            if kill == "group":
                worker.kill(signal.SIGKILL)
                worker.popen.wait(10)
            else:
                (child,) = pool_children(worker)
                os.kill(child, signal.SIGKILL)
            holder.rollback()  # release: the dead worker's backend finds its client gone and rolls back
        if kill == "group":
            survivor = new_worker(f"after-{len(workers)}")
        else:
            survivor = worker
            wait_for(lambda: "WorkerLostError" in worker.log(), timeout=30, what="the parent to see its child die")
        want = expected_hours(events)[hour]
        wait_for(lambda: window_fresh(session, hour) and window_mismatch(session, hour, want) is None,
                 timeout=60, interval=0.3,
                 what=f"the window recomputed after kill ({kill}); {window_mismatch(session, hour, want)}")
        # The same message ran again (no new send): redelivered, then acknowledged.
        wait_for(lambda: f"aggregate_hour[{task_id}] succeeded" in survivor.log(), timeout=30,
                 what=f"task {task_id} to succeed on the surviving worker")
        assert window_mismatch(session, hour, want) is None
        assert duplicates(session) == []

    try:
        new_worker("first")
        # Round 1: 120 organizations plus events without one; killed before writing anything.
        orgs: list[str | None] = [f"org-{i:03d}" for i in range(120)]
        add_events([*orgs, None], 2000)
        run_round(lambda c: hold_advisory_lock(c, hour), "pg_advisory_xact_lock", kill="group")

        # Round 2: more events, 30 new organizations; the pool process dies mid-upsert.
        orgs += [f"org-{i:03d}" for i in range(120, 150)]
        add_events([*orgs, None], 800)
        run_round(lambda c: hold_snapshot_row(c, hour, "org-060"), "metrics_snapshots", kill="child")

        # Round 3: more again; killed with every snapshot row written, before the bookkeeping.
        orgs += [f"org-{i:03d}" for i in range(150, 170)]
        add_events([*orgs, None], 800)
        run_round(lambda c: hold_window_row(c, hour), "aggregation_windows", kill="group")

        # The window ends as one recount of every event: 170 organizations and the platform.
        want = expected_hours(events)[hour]
        assert len(want) == 171
        assert window_mismatch(session, hour, want) is None
        # Nothing left to redeliver.
        redis = own_redis.client()
        wait_ready(workers[-1], own_redis.url)
        assert redis.llen("metrics") == 0 and redis.hlen("unacked") == 0
    finally:
        client.close()
        for proc in workers:
            proc.stop()
