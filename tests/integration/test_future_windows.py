"""A window is aggregated only once it has closed: every entry point refuses an open or future one.

One message dated 2099 used to write snapshot rows that stayed the newest window for the
exporter, the alerts and the dashboard forever.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from celery import Celery
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.support.helpers import Proc, service_env
from voicepipe.migrate import alembic_config, upgrade

TABLES = ("metrics_snapshots", "aggregation_windows", "ai_usage_daily_aggregates")


def now_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def rows(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() or 0) for t in TABLES}


# Open windows are worked out when the test runs (an hour or a day may turn over during the run).
OPEN_HOUR, TODAY = "open hour", "today"


@pytest.mark.parametrize(("task", "kwargs"), [
    ("voicepipe.metrics.aggregate_hour", {"window_start": "2099-12-31T23:00:00Z"}),
    ("voicepipe.metrics.aggregate_hour", {"window_start": OPEN_HOUR}),
    ("voicepipe.metrics.aggregate_day", {"day": "2099-12-31"}),
    ("voicepipe.metrics.aggregate_day", {"day": TODAY}),
    ("voicepipe.usage.aggregate_day", {"day": "2099-12-31"}),
    ("voicepipe.usage.aggregate_day", {"day": TODAY}),
])
def test_a_task_for_a_window_that_has_not_closed_is_refused_and_writes_nothing(
    task: str, kwargs: dict[str, str], start_worker: Callable[..., Proc], client: Celery, engine: Engine,
) -> None:
    kwargs = {k: {OPEN_HOUR: now_hour().isoformat(), TODAY: datetime.now(UTC).date().isoformat()}.get(v, v)
              for k, v in kwargs.items()}
    start_worker(queues="metrics")
    result = client.send_task(task, kwargs=kwargs, queue="metrics", ignore_result=False)
    with pytest.raises(Exception) as refused:
        result.get(timeout=60)
    assert type(refused.value).__name__ == "InvalidInput"
    assert "has not closed yet" in str(refused.value)
    assert rows(engine) == dict.fromkeys(TABLES, 0)
    # The window before it, closed, is accepted by the same worker (the check is not a blanket refusal).
    closed = {"window_start": (now_hour() - timedelta(hours=1)).isoformat()} if "window_start" in kwargs else {
        "day": (datetime.now(UTC).date() - timedelta(days=1)).isoformat()}
    assert client.send_task(task, kwargs=closed, queue="metrics", ignore_result=False).get(timeout=60) is not None


def test_backfill_skips_days_that_have_not_closed(db_url: str, broker_url: str, engine: Engine, tmp_path: Path) -> None:
    today = datetime.now(UTC).date()
    done = subprocess.run(
        [sys.executable, "-m", "voicepipe.cli", "backfill", "--from", str(today - timedelta(days=1)),
         "--to", "2099-12-31"],
        env=service_env(db_url, broker_url, tmp_path), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "not closed yet, skipped" in done.stderr
    with engine.connect() as conn:
        latest = conn.execute(text("SELECT max(period_start) FROM aggregation_windows")).scalar()
    assert latest is not None and latest < datetime.combine(today, datetime.min.time(), UTC)


def test_the_migration_removes_rows_of_windows_that_had_not_closed_and_keeps_the_rest(
    db_url: str, engine: Engine
) -> None:
    command.downgrade(alembic_config(db_url), "0005")
    past, future = now_hour() - timedelta(hours=2), datetime(2099, 12, 31, 23, tzinfo=UTC)
    open_day = datetime.combine(datetime.now(UTC).date(), datetime.min.time(), UTC)
    with engine.begin() as conn:
        for kind, start, length in (("hourly", past, "1 hour"), ("hourly", future, "1 hour"),
                                    ("hourly", now_hour(), "1 hour"), ("daily", open_day, "1 day"),
                                    ("daily", open_day - timedelta(days=1), "1 day")):
            conn.execute(text("INSERT INTO metrics_snapshots (organization_id, period_type, period_start, period_end) "
                              f"VALUES ('org-1', :k, :s, :s + interval '{length}')"), {"k": kind, "s": start})
            conn.execute(text("INSERT INTO aggregation_windows (period_type, period_start, source_revision, "
                              "computed_at) VALUES (:k, :s, 1, now())"), {"k": kind, "s": start})
        for day in (open_day.date() - timedelta(days=1), open_day.date(), future.date()):
            conn.execute(text("INSERT INTO ai_usage_daily_aggregates (day, organization_id, total_cost, total_calls, "
                              "total_input_tokens, total_cached_tokens, total_output_tokens, cache_hit_rate) "
                              "VALUES (:d, 'org-1', 1, 1, 1, 0, 1, 0)"), {"d": day})
    upgrade(db_url)
    with engine.connect() as conn:
        kept = sorted((r[0], r[1]) for r in conn.execute(text(
            "SELECT period_type, period_start FROM metrics_snapshots")))
        windows = sorted((r[0], r[1]) for r in conn.execute(text(
            "SELECT period_type, period_start FROM aggregation_windows")))
        days = [r[0] for r in conn.execute(text("SELECT day FROM ai_usage_daily_aggregates ORDER BY day"))]
    assert kept == windows == [("daily", open_day - timedelta(days=1)), ("hourly", past)]
    assert days == [open_day.date() - timedelta(days=1)]
