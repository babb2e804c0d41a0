"""The metrics tasks through real worker and beat processes and a real broker."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from celery import Celery
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from models import AggregationWindow, MetricsSnapshot
from tests.support.helpers import Proc, celery_cmd, data_began, redis_client, service_env, spawn, wait_for
from tests.support.metrics import random_event
from voicepipe.events.recording import record_events
from voicepipe.metrics.daily import aggregate_day
from voicepipe.metrics.due import due_days, due_hours
from voicepipe.metrics.hourly import aggregate_hour

HOUR = timedelta(hours=1)


def this_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def computed_hours(session: Session) -> list[datetime]:
    session.rollback()  # see the worker's commits
    rows = session.execute(
        select(AggregationWindow.period_start).where(
            AggregationWindow.period_type == "hourly", AggregationWindow.source_revision.is_not(None)
        ).order_by(AggregationWindow.period_start)
    ).scalars()
    return [r.astimezone(UTC) for r in rows]


def duplicates(session: Session) -> list[object]:
    session.rollback()
    return list(session.execute(text(
        "SELECT organization_id, period_type, period_start, count(*) FROM metrics_snapshots "
        "GROUP BY 1, 2, 3 HAVING count(*) > 1"
    )).all())


def test_thirty_hours_ahead_one_wrapper_run_fills_all_thirty_hours_and_picks_up_a_late_event(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    t = this_hour() - 40 * HOUR + timedelta(minutes=30)
    data_began(session, t - 100 * HOUR)  # before every window below: each one is missing until computed
    # Everything is up to date at t ...
    for day in {(t - 30 * HOUR).date(), (t - 2 * HOUR).date()}:
        if datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1) <= t:
            aggregate_day(session, day)
    for hour in due_hours(session, t, 72):
        aggregate_hour(session, hour)
    session.commit()
    assert due_hours(session, t, 72) == []
    # ... then a late event arrives for an hour of a day that is already computed.
    old_day = (t - 30 * HOUR).date()
    late_hour = datetime(old_day.year, old_day.month, old_day.day, 9, tzinfo=UTC)
    record_events(session, [{"event_type": "artifact_received", "organization_id": "late",
                             "occurred_at": (late_hour + timedelta(minutes=10)).isoformat()}])
    session.commit()
    before = set(computed_hours(session))

    later = t + 30 * HOUR
    start_worker(queues="metrics", VOICEPIPE_FAKE_NOW=later.isoformat())
    client.send_task("voicepipe.metrics.aggregate_hourly_due", queue="metrics")

    def settled() -> bool:
        session.rollback()
        return not due_hours(session, later, 72) and late_hour.date() not in due_days(session, later, 7)

    wait_for(settled, timeout=60, what="all due windows computed")
    new = sorted(set(computed_hours(session)) - before)
    assert new == [t.replace(minute=0) + i * HOUR for i in range(30)]
    snaps = {(r.organization_id, r.period_type, r.period_start.astimezone(UTC)): r
             for r in session.execute(select(MetricsSnapshot)).scalars()}
    assert snaps[("late", "hourly", late_hour)].artifacts_received == 1
    assert snaps[(None, "hourly", late_hour)].artifacts_received == 1
    day_start = late_hour.replace(hour=0)
    assert snaps[("late", "daily", day_start)].artifacts_received == 1
    assert snaps[(None, "daily", day_start)].artifacts_received == 1
    assert duplicates(session) == []


def test_the_wrapper_targets_windows_from_when_it_executes_not_when_it_was_sent(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    data_began(session, this_hour() - 40 * HOUR)
    # Sent now, with no worker running ...
    client.send_task("voicepipe.metrics.aggregate_hourly_due", queue="metrics")
    # ... executed by a worker whose clock says it is 20 hours earlier.
    executes_at = this_hour() - 20 * HOUR + timedelta(minutes=31)
    start_worker(queues="metrics", VOICEPIPE_FAKE_NOW=executes_at.isoformat(),
                 VOICEPIPE_HOURLY_HORIZON_HOURS="6")
    expected = [executes_at.replace(minute=0) - i * HOUR for i in range(6, 0, -1)]
    wait_for(lambda: computed_hours(session) == expected, timeout=60, what=f"hours {expected}")


def test_a_failing_window_is_a_visible_failure_counted_and_picked_up_by_the_next_run(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    hour = this_hour() - 3 * HOUR
    record_events(session, [{"event_type": "artifact_received", "organization_id": "o",
                             "occurred_at": hour.isoformat()}])
    # A corrupt counter row (a sketch bucket far past any duration: slot 65535 of end-to-end,
    # whose value overflows a float) makes the hour fail.
    session.execute(text(f"UPDATE event_counters SET latency_sketch = ARRAY[{((4 << 16 | 65535) << 40) | 1}]"))
    session.commit()
    start_worker(queues="metrics", VOICEPIPE_HOURLY_HORIZON_HOURS="4", VOICEPIPE_DAILY_HORIZON_DAYS="1")
    result = client.send_task("voicepipe.metrics.aggregate_hour", kwargs={"window_start": hour.isoformat()},
                              queue="metrics")
    result.get(timeout=30, propagate=False)
    assert result.state == "FAILURE" and "OverflowError" in repr(result.result)
    session.rollback()
    window = session.get(AggregationWindow, ("hourly", hour))
    assert window is not None and window.failures == 1 and window.source_revision is None
    assert "OverflowError" in (window.last_error or "")

    bad = client.send_task("voicepipe.metrics.aggregate_hour", kwargs={"window_start": "2026-01-01T10:30:00+00:00"},
                           queue="metrics")
    bad.get(timeout=30, propagate=False)
    assert bad.state == "FAILURE" and "InvalidInput" in repr(bad.result) and "start of an hour" in str(bad.result)

    # Repaired: the next wrapper run sends the window again, it succeeds and its failures clear.
    session.execute(text("UPDATE event_counters SET latency_sketch = '{}'"))
    session.commit()
    client.send_task("voicepipe.metrics.aggregate_hourly_due", queue="metrics")

    def repaired() -> bool:
        session.rollback()
        w = session.get(AggregationWindow, ("hourly", hour))
        session.expire_all()
        return w is not None and w.source_revision is not None and w.failures == 0

    wait_for(repaired, timeout=30, what="the failed window to be recomputed")
    assert session.scalar(select(MetricsSnapshot.artifacts_received).where(
        MetricsSnapshot.organization_id == "o")) == 1


def test_two_beats_side_by_side_and_two_workers_produce_no_duplicate(
    start_worker: Callable[..., Proc], db_url: str, broker_url: str, service_data_dir: Path,
    tmp_path: Path, session: Session,
) -> None:
    rng = random.Random(11)
    record_events(session, [random_event(rng, this_hour() - 4 * HOUR, 4, ["a", "b", None]) for _ in range(300)])
    session.commit()
    env = {"VOICEPIPE_BEAT_INTERVAL_SECONDS": "1", "VOICEPIPE_HOURLY_HORIZON_HOURS": "4",
           "VOICEPIPE_DAILY_HORIZON_DAYS": "1"}
    workers = [start_worker(queues="metrics", wait=False, **env) for _ in range(2)]
    for w in workers:
        start_worker.wait_until_ready(w)  # type: ignore[attr-defined]
    beats = [
        spawn(celery_cmd("beat", "-s", str(tmp_path / f"beat{i}-schedule"), "-l", "INFO"),
              service_env(db_url, broker_url, service_data_dir, **env), tmp_path / f"beat{i}.log",
              name=f"beat{i}")
        for i in range(2)
    ]
    try:
        wait_for(lambda: all("Sending due task aggregate-pipeline-hourly-metrics" in b.log() for b in beats)
                 and len(computed_hours(session)) >= 4, timeout=60, what="both beats emitting")
        wait_for(lambda: sum(b.log().count("aggregate-pipeline-hourly-metrics") for b in beats) >= 8,
                 timeout=30, what="several emissions")
    finally:
        for b in beats:
            b.stop()
    redis = redis_client(broker_url)
    wait_for(lambda: redis.llen("metrics") == 0, timeout=60, what="the metrics queue to drain")
    now = datetime.now(UTC)

    def nothing_due() -> bool:
        session.rollback()
        return not due_hours(session, now, 4)

    wait_for(nothing_due, timeout=30, what="no due hour")
    assert duplicates(session) == []
    platform_hours = [r.astimezone(UTC) for r in session.execute(select(MetricsSnapshot.period_start).where(
        MetricsSnapshot.organization_id.is_(None), MetricsSnapshot.period_type == "hourly")).scalars()]
    # One platform row per computed hour: the 4 recent ones, plus yesterday's from the daily run.
    assert sorted(platform_hours) == computed_hours(session)
    assert {this_hour() - i * HOUR for i in range(1, 5)} <= set(platform_hours)
