"""The daily wrapper through a real worker, on a fixed clock with a 3-day horizon.

Events cover six closed days; the run at 01:30 must write daily rows for exactly
the three days of the horizon (the older days keep their events and counters but
get no snapshot of any kind), each row equal to a recount from the raw events
(tests/support/metrics.py), never to figures the product computed.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from datetime import UTC, date, timedelta

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import AggregationWindow, MetricsSnapshot
from tests.support.helpers import Proc, redis_client, wait_for
from tests.support.metrics import (
    assert_row_matches,
    expected,
    group_events,
    midnight,
    random_event,
    recent_day,
)
from voicepipe.events.recording import record_events

HORIZON_DAYS = 3
ORGS: list[str | None] = ["north", "south", "east", None]
DAY_TASK = re.compile(r"Task voicepipe\.metrics\.aggregate_day\[[\w-]+\] succeeded")


def computed_days(session: Session) -> list[date]:
    session.rollback()  # see the worker's commits
    rows = session.scalars(select(AggregationWindow.period_start).where(
        AggregationWindow.period_type == "daily", AggregationWindow.source_revision.is_not(None)))
    return sorted(r.astimezone(UTC).date() for r in rows)


def test_the_daily_wrapper_writes_exactly_the_days_of_its_horizon_each_equal_to_a_recount(
    start_worker: Callable[..., Proc], client: Celery, session: Session, broker_url: str
) -> None:
    today = recent_day(0)
    now = midnight(today) + timedelta(hours=1, minutes=30)  # the daily run's minute
    rng = random.Random(9)
    events = []
    for days_ago in range(6, 0, -1):  # six closed days: three inside the horizon, three older
        events += [random_event(rng, midnight(today - timedelta(days=days_ago)), 24, ORGS) for _ in range(400)]
    for i in range(0, len(events), 1000):
        record_events(session, events[i:i + 1000])
        session.commit()
    horizon = [today - timedelta(days=d) for d in range(HORIZON_DAYS, 0, -1)]

    worker = start_worker(queues="metrics", VOICEPIPE_FAKE_NOW=now.isoformat(),
                          VOICEPIPE_DAILY_HORIZON_DAYS=str(HORIZON_DAYS))
    client.send_task("voicepipe.metrics.aggregate_daily_due", queue="metrics")

    def idle() -> bool:
        """The wrapper ran, every day task it sent ran, and nothing is left in the queue."""
        assert worker.alive(), worker.log()[-3000:]
        log = worker.log()
        received = len(re.findall(r"Task voicepipe\.metrics\.aggregate_day\[[\w-]+\] received", log))
        finished = len(DAY_TASK.findall(log)) + len(re.findall(r"aggregate_day\[[\w-]+\] raised", log))
        wrapper_done = re.search(r"Task voicepipe\.metrics\.aggregate_daily_due\[[\w-]+\] succeeded", log)
        return bool(wrapper_done) and received == finished and redis_client(broker_url).llen("metrics") == 0

    wait_for(lambda: set(horizon) <= set(computed_days(session)) and idle(), timeout=120,
             what="the days of the horizon to be aggregated and the worker to be idle")
    time.sleep(1)  # a last look: nothing else arrives
    assert idle()
    assert computed_days(session) == horizon
    # One day task per day of the horizon: none for the older days.
    assert len(DAY_TASK.findall(worker.log())) == HORIZON_DAYS

    session.rollback()
    rows = list(session.scalars(select(MetricsSnapshot)))
    daily = [r for r in rows if r.period_type == "daily"]
    assert sorted({r.period_start.astimezone(UTC).date() for r in daily}) == horizon
    # Days older than the horizon have events, yet no snapshot of any kind was written for them.
    oldest = midnight(horizon[0])
    assert [r for r in rows if r.period_start < oldest] == []

    _, want = group_events(events)
    for day in horizon:
        got = {r.organization_id: r for r in daily if r.period_start == midnight(day)}
        wanted = {org: evs for (org, d), evs in want.items() if d == day}
        assert set(got) == set(wanted), day
        for org, evs in wanted.items():
            assert_row_matches(got[org], expected(evs), f"{day} {org}")
            assert got[org].period_end == midnight(day) + timedelta(days=1)
