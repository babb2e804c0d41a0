"""beat_schedule.py: the contract's entries, on declared queues, firing at the right UTC minutes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from celery.schedules import crontab

from beat_schedule import BEAT_SCHEDULE
from worker import app
from worker.routes import QUEUES, TASK_MODULES, TASK_QUEUES

CONTRACT = {
    "aggregate-pipeline-hourly-metrics": "voicepipe.metrics.aggregate_hourly_due",
    "aggregate-pipeline-daily-metrics": "voicepipe.metrics.aggregate_daily_due",
    "aggregate-daily-ai-usage": "voicepipe.usage.aggregate_daily_due",
    "cleanup-old-data": "voicepipe.maintenance.cleanup",
    "requeue-stalled-artifacts": "voicepipe.maintenance.requeue_stalled",
    "evaluate-alerts": "voicepipe.alerts.evaluate",
}


def fires_at(schedule: crontab, minute: datetime) -> bool:
    """Whether the crontab is due at this exact UTC minute, given it last ran a minute before."""
    last_run = minute - timedelta(minutes=1)
    schedule = crontab(
        minute=schedule._orig_minute, hour=schedule._orig_hour,  # type: ignore[attr-defined]
        day_of_week=schedule._orig_day_of_week,  # type: ignore[attr-defined]
        day_of_month=schedule._orig_day_of_month,  # type: ignore[attr-defined]
        month_of_year=schedule._orig_month_of_year,  # type: ignore[attr-defined]
        nowfun=lambda: minute, app=app,
    )
    return bool(schedule.is_due(last_run).is_due)


def firing_minutes(name: str, day: datetime) -> list[tuple[int, int]]:
    schedule = BEAT_SCHEDULE[name]["schedule"]
    out = []
    for i in range(24 * 60):
        minute = day + timedelta(minutes=i)
        if fires_at(schedule, minute):
            out.append((minute.hour, minute.minute))
    return out


def test_entries_are_exactly_the_contract_and_name_registered_tasks_on_declared_queues() -> None:
    for module in TASK_MODULES:
        __import__(module)
    assert {k: v["task"] for k, v in BEAT_SCHEDULE.items()} == CONTRACT
    for name, entry in BEAT_SCHEDULE.items():
        assert entry["task"] in app.tasks, name
        assert isinstance(entry["schedule"], crontab), name
        assert entry["options"]["queue"] in QUEUES, name
        assert entry["options"]["queue"] == TASK_QUEUES[entry["task"]], name
        assert 0 < entry["options"]["expires"] <= 24 * 3600, name


DAY = datetime(2026, 3, 29, tzinfo=UTC)  # a European DST change day: UTC must not care


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("aggregate-pipeline-hourly-metrics", [(h, 30) for h in range(24)]),
        ("aggregate-pipeline-daily-metrics", [(1, 30)]),
        ("aggregate-daily-ai-usage", [(1, 30)]),
        ("cleanup-old-data", [(4, 30)]),
        ("requeue-stalled-artifacts", [(h, m) for h in range(24) for m in range(0, 60, 5)]),
        ("evaluate-alerts", [(h, m) for h in range(24) for m in range(0, 60, 5)]),
    ],
)
def test_each_entry_fires_exactly_at_its_utc_minutes(name: str, expected: list[tuple[int, int]]) -> None:
    assert firing_minutes(name, DAY) == expected


def test_the_hourly_entry_is_not_due_between_its_minutes() -> None:
    schedule = BEAT_SCHEDULE["aggregate-pipeline-hourly-metrics"]["schedule"]
    remaining = crontab(minute=schedule._orig_minute, app=app,  # type: ignore[attr-defined]
                        nowfun=lambda: datetime(2026, 3, 1, 10, 31, tzinfo=UTC))
    # Last run at 10:30: the next is due at 11:30, 59 minutes later.
    assert remaining.remaining_estimate(datetime(2026, 3, 1, 10, 30, tzinfo=UTC)) == timedelta(minutes=59)
