"""Celery beat entries (UTC). Beat only emits; the wrapper tasks work out their
target windows when they execute, so a late, missed or doubled emission cannot
freeze a wrong window into a message.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    # Every hour at minute 30: aggregate every closed hour that is due.
    "aggregate-pipeline-hourly-metrics": {
        "task": "voicepipe.metrics.aggregate_hourly_due",
        "schedule": crontab(minute="30"),
        # An emission not started within the hour is superseded by the next one.
        "options": {"queue": "metrics", "expires": 55 * 60},
    },
    # Daily at 01:30 UTC: aggregate yesterday (and any due day) from hourly snapshots.
    "aggregate-pipeline-daily-metrics": {
        "task": "voicepipe.metrics.aggregate_daily_due",
        "schedule": crontab(minute="30", hour="1"),
        "options": {"queue": "metrics", "expires": 23 * 3600},
    },
    # Daily at 01:30 UTC: roll up yesterday's AI usage (and any due day).
    "aggregate-daily-ai-usage": {
        "task": "voicepipe.usage.aggregate_daily_due",
        "schedule": crontab(minute="30", hour="1"),
        "options": {"queue": "metrics", "expires": 23 * 3600},
    },
    # Daily at 04:30 UTC: delete rows past their retention, in bounded batches.
    "cleanup-old-data": {
        "task": "voicepipe.maintenance.cleanup",
        "schedule": crontab(minute="30", hour="4"),
        "options": {"queue": "metrics", "expires": 23 * 3600},
    },
    # Every 5 minutes: re-queue (or fail) artifacts whose stage stalled.
    "requeue-stalled-artifacts": {
        "task": "voicepipe.maintenance.requeue_stalled",
        "schedule": crontab(minute="*/5"),
        "options": {"queue": "metrics", "expires": 4 * 60},
    },
    # Every 5 minutes: evaluate the health checks into deduplicated alerts.
    "evaluate-alerts": {
        "task": "voicepipe.alerts.evaluate",
        "schedule": crontab(minute="*/5"),
        "options": {"queue": "metrics", "expires": 4 * 60},
    },
}
