"""Two beat processes side by side over six simulated hours: one row per window, equal to a recount.

Both beats run the whole time, emitting every schedule entry every second
(VOICEPIPE_BEAT_INTERVAL_SECONDS=1), so every due window is sent over and over, by
both. The clock advances an hour at a time: for each simulated hour a worker (two
pool processes, so duplicate window tasks can run at once) is started with
VOICEPIPE_FAKE_NOW at :31 past it, runs until nothing is due, and is stopped. Events
keep arriving between the hours: the next (still open) hour's, and a late one for
the hour computed just before, which makes that window stale again.

tests/integration/test_metrics_worker.py has two beats over the real clock's last
four hours; this adds the advancing clock, live and late events, and the recount.
"""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from tests.support.faults import (
    HOUR,
    duplicates,
    expected_hours,
    start_beat,
    start_worker_proc,
    this_hour,
    window_events,
    window_fresh,
    window_mismatch,
)
from tests.support.helpers import Proc, wait_for
from tests.support.redis_server import OwnRedis
from voicepipe.events.recording import record_events
from voicepipe.metrics.due import due_hours

pytestmark = pytest.mark.slow

SIMULATED_HOURS = 6
HORIZON_HOURS = 3
EMITTED = "Sending due task aggregate-pipeline-hourly-metrics"



def test_two_beats_over_six_simulated_hours_leave_one_row_per_window(
    own_redis: OwnRedis, db_url: str, session: Session, tmp_path: Path
) -> None:
    base = this_hour() - 12 * HOUR
    hours = [base + i * HOUR for i in range(SIMULATED_HOURS)]
    rng = random.Random(21)
    orgs: list[str | None] = ["north", "south", "east", "west", None]
    events: list[dict[str, Any]] = []

    def arrive(batch: list[dict[str, Any]]) -> None:
        record_events(session, batch)
        session.commit()
        events.extend(batch)

    env = {"VOICEPIPE_HOURLY_HORIZON_HOURS": str(HORIZON_HOURS), "VOICEPIPE_DAILY_HORIZON_DAYS": "1"}
    beats = [start_beat(db_url, own_redis.url, tmp_path, f"beat{i}", VOICEPIPE_BEAT_INTERVAL_SECONDS="1", **env)
             for i in range(2)]
    worker: Proc | None = None
    runs: list[int] = []  # aggregate_hour runs per simulated hour
    try:
        arrive(window_events(rng, hours[0], orgs, 200))
        for k, hour in enumerate(hours):
            now = hour + HOUR + timedelta(minutes=31)
            emitted_before = [b.log().count(EMITTED) for b in beats]
            worker = start_worker_proc(db_url, own_redis.url, tmp_path, f"hour{k}", concurrency=2,
                                       env={"VOICEPIPE_FAKE_NOW": now.isoformat(), **env})

            def settled(now: datetime = now, hour: datetime = hour, worker: Proc = worker) -> bool:
                assert worker.alive(), worker.log()[-3000:]
                session.rollback()
                return not due_hours(session, now, HORIZON_HOURS) and all(
                    window_fresh(session, h) for h in hours if hour - 2 * HOUR <= h <= hour)

            wait_for(settled, timeout=60, interval=0.3, what=f"simulated hour {k}: nothing due at {now}")
            # Both beats kept emitting while this hour's worker ran.
            def beats_emitted(before: list[int] = emitted_before) -> bool:
                return all(b.log().count(EMITTED) >= n + 2 for b, n in zip(beats, before, strict=True))

            wait_for(beats_emitted, timeout=30, what="both beats emitting during this hour")
            worker.stop()
            runs.append(len(re.findall(r"aggregate_hour\[[^]]+\] succeeded", worker.log())))
            worker = None
            if k + 1 < SIMULATED_HOURS:
                # The next hour's events, and a late one for the hour just computed.
                arrive(window_events(rng, hours[k + 1], orgs, 200))
                arrive(window_events(rng, hour, ["north"], 1))
    finally:
        if worker is not None:
            worker.stop()
        for beat in beats:
            beat.stop()

    assert all(b.log().count(EMITTED) >= 2 * SIMULATED_HOURS for b in beats), "the beats did not both emit"
    # 13 window computations were needed (3 in the first hour's horizon, then each new hour
    # and the one its late event made stale); more ran: the same window was sent and run again.
    assert sum(runs) > HORIZON_HOURS + 2 * (SIMULATED_HOURS - 1), runs
    want = expected_hours(events)
    for hour in hours:
        assert window_mismatch(session, hour, want[hour]) is None, runs
    assert duplicates(session) == []
