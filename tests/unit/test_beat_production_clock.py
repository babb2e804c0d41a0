"""Beat as production runs it, on a clock the test moves minute by minute.

The app is configured exactly as `celery -A worker beat` configures it
(worker._configure, with VOICEPIPE_BEAT_INTERVAL_SECONDS unset, so the crontabs of
beat_schedule.py), and the scheduler is the production one (beat_scheduler,
voicepipe.observability.health:HeartbeatScheduler, celery's PersistentScheduler with its shelve
file). Only two things are the test's: the clock (app.now, which celery's crontab
and ScheduleEntry read) and the last step of a send, which is recorded instead of
published. The expected firing minutes are written out here, not computed by celery.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.schedules import crontab
from celery.utils.imports import symbol_by_name

from beat_schedule import BEAT_SCHEDULE
from voicepipe.settings import reset_settings

MINUTE = timedelta(minutes=1)
# Saturday 22:00 UTC to Monday 05:00 UTC, over the night Europe moves its clocks
# (2026-03-29 01:00 UTC): the schedule is UTC and must not notice.
START = datetime(2026, 3, 28, 22, 0, tzinfo=UTC)
END = datetime(2026, 3, 30, 5, 0, tzinfo=UTC)
DAY2 = datetime(2026, 3, 29, tzinfo=UTC)
DAY3 = datetime(2026, 3, 30, tzinfo=UTC)


@dataclass(frozen=True)
class Firing:
    at: datetime
    task: str
    options: dict[str, Any]


@pytest.fixture
def production_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """A Celery app configured by worker._configure from a production-like environment."""
    for name in ("VOICEPIPE_BEAT_INTERVAL_SECONDS", "VOICEPIPE_FAKE_NOW", "RESULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BROKER_URL", "redis://127.0.0.1:6379/10")  # never connected to here
    monkeypatch.setenv("VOICEPIPE_DATA_DIR", str(tmp_path / "data"))
    reset_settings()
    from worker import _configure

    app = Celery("voicepipe-beat-under-test")
    _configure(app)
    assert app.conf.beat_schedule is BEAT_SCHEDULE  # no interval override: the crontabs as written
    # celery sets `schedule.app` on the crontabs it is given: keep the module's objects untouched.
    app.conf.beat_schedule = copy.deepcopy(BEAT_SCHEDULE)
    yield app
    monkeypatch.undo()
    reset_settings()


def run_beat(app: Celery, schedule_file: Path, start: datetime, end: datetime) -> list[Firing]:
    """Tick the production scheduler at every minute from start to end; what it sent, when."""
    clock = [start]
    app.now = lambda: clock[0]  # type: ignore[method-assign]
    fired: list[Firing] = []
    production = symbol_by_name(app.conf.beat_scheduler)
    # voicepipe's tasks are shared (app.task's default): once another test imported them, this
    # app's registry would hold them and the scheduler would publish through them for real
    # instead of by name. Empty, every send goes through send_task below, whatever ran before.
    app.tasks.clear()

    class RecordingScheduler(production):  # type: ignore[misc,valid-type]
        producer = None  # no broker connection: sends are recorded below

        def send_task(self, name: str, *args: Any, producer: Any = None, **options: Any) -> None:
            fired.append(Firing(clock[0], name, options))

    scheduler = RecordingScheduler(app, schedule_filename=str(schedule_file), lazy=False)
    try:
        while clock[0] <= end:
            # Like beat's loop: tick until nothing more is due now (tick sends one entry a call).
            for _ in range(100):
                if scheduler.tick() > 0:
                    break
            else:
                raise AssertionError(f"beat kept sending at {clock[0].isoformat()}")
            clock[0] += MINUTE
    finally:
        scheduler.close()
    return fired


def every(first: datetime, last: datetime, step: timedelta) -> list[datetime]:
    out = []
    while first <= last:
        out.append(first)
        first += step
    return out


def test_production_beat_fires_hourly_at_half_past_and_the_daily_tasks_at_0130_utc_across_midnight(
    production_app: Celery, tmp_path: Path
) -> None:
    fired = run_beat(production_app, tmp_path / "beat-schedule", START, END)
    times: dict[str, list[datetime]] = defaultdict(list)
    for firing in fired:
        times[firing.task].append(firing.at)

    hourly = every(START + timedelta(minutes=30), END, timedelta(hours=1))
    assert times["voicepipe.metrics.aggregate_hourly_due"] == hourly
    # The night from 22:00 to 03:00 across the day boundary, exactly:
    assert [t for t in hourly if t <= DAY2 + timedelta(hours=3)] == [
        datetime(2026, 3, 28, 22, 30, tzinfo=UTC), datetime(2026, 3, 28, 23, 30, tzinfo=UTC),
        datetime(2026, 3, 29, 0, 30, tzinfo=UTC), datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
        datetime(2026, 3, 29, 2, 30, tzinfo=UTC),
    ]
    daily = [DAY2 + timedelta(hours=1, minutes=30), DAY3 + timedelta(hours=1, minutes=30)]
    assert times["voicepipe.metrics.aggregate_daily_due"] == daily
    assert times["voicepipe.usage.aggregate_daily_due"] == daily
    assert times["voicepipe.maintenance.cleanup"] == [DAY2 + timedelta(hours=4, minutes=30),
                                                       DAY3 + timedelta(hours=4, minutes=30)]
    assert times["voicepipe.maintenance.requeue_stalled"] == every(
        START + timedelta(minutes=5), END, timedelta(minutes=5))
    assert times["voicepipe.alerts.evaluate"] == every(START + timedelta(minutes=5), END, timedelta(minutes=5))
    # Nothing else is sent (no default entry beside the contract's five).
    assert set(times) == {entry["task"] for entry in BEAT_SCHEDULE.values()}


def test_every_entry_expires_before_its_next_firing_and_goes_to_its_queue(
    production_app: Celery, tmp_path: Path
) -> None:
    fired = run_beat(production_app, tmp_path / "beat-schedule", START, END)
    by_task: dict[str, list[Firing]] = defaultdict(list)
    for firing in fired:
        by_task[firing.task].append(firing)
    for name, entry in BEAT_SCHEDULE.items():
        firings = by_task[entry["task"]]
        assert len(firings) >= 2, name
        gaps = {(b.at - a.at).total_seconds() for a, b in pairwise(firings)}
        for firing in firings:
            # What beat actually put on the message, not only what the file says.
            expires = firing.options["expires"]
            assert 0 < expires < min(gaps), (name, expires, sorted(gaps))
            assert firing.options["queue"] == entry["options"]["queue"], name
        assert isinstance(entry["schedule"], crontab), name
