"""`voicepipe backfill` and `voicepipe status` end to end, in a subprocess."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from models import AiUsageDailyAggregate
from tests.support.helpers import REPO_ROOT, data_began, producer, redis_client, service_env
from tests.support.metrics import midnight, random_event, recent_day
from voicepipe.events.recording import record_events
from voicepipe.usage.recording import record_usage


def voicepipe(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicepipe.cli", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def snapshot_state(session: Session) -> list[Any]:
    session.rollback()
    return sorted(
        (tuple(r) for r in session.execute(text(
            "SELECT organization_id, period_type, period_start, artifacts_received, total_ai_cost, computed_at "
            "FROM metrics_snapshots")).all()),
        key=repr,
    )


def test_backfill_fills_days_with_a_progress_bar_and_rerunning_changes_nothing(
    session: Session, db_url: str, broker_url: str, service_data_dir: Path
) -> None:
    first = recent_day(4)
    rng = random.Random(8)
    record_events(session, [random_event(rng, midnight(first), 48, ["x", "y", None]) for _ in range(400)])
    record_usage(session, [{"organization_id": "x", "operation": "op", "model": "m", "input_tokens": 10,
                            "cached_tokens": 5, "output_tokens": 1, "cost": 0.01,
                            "occurred_at": (midnight(first) + timedelta(hours=1)).isoformat()}])
    session.commit()
    env = service_env(db_url, broker_url, service_data_dir)
    last = first + timedelta(days=1)
    run = voicepipe(["backfill", "--from", first.isoformat(), "--to", last.isoformat()], env)
    assert run.returncode == 0, run.stderr
    assert "backfill" in run.stderr and "2/2" in run.stderr  # tqdm's bar
    assert "2 recomputed" in run.stdout
    state = snapshot_state(session)
    daily = [s for s in state if s[1] == "daily"]
    assert {(s[0], s[2].date()) for s in daily} == {(o, d) for o in ("x", "y", None) for d in (first, last)}
    assert len([s for s in state if s[1] == "hourly" and s[0] is None]) == 48
    assert session.scalar(select(AiUsageDailyAggregate.total_calls)) == 1

    again = voicepipe(["backfill", "--from", first.isoformat(), "--to", last.isoformat()], env)
    assert again.returncode == 0, again.stderr
    assert "0 recomputed" in again.stdout
    assert snapshot_state(session) == state  # not even computed_at moved

    bad = voicepipe(["backfill", "--from", "2026-13-01", "--to", last.isoformat()], env)
    assert bad.returncode == 1 and "InvalidInput" in bad.stderr


def test_status_reports_windows_failures_and_queue_depths(
    session: Session, db_url: str, broker_url: str, service_data_dir: Path
) -> None:
    env = service_env(db_url, broker_url, service_data_dir, VOICEPIPE_HOURLY_HORIZON_HOURS="3",
                      VOICEPIPE_DAILY_HORIZON_DAYS="2")
    data_began(session, datetime.now(UTC) - timedelta(days=4))
    session.execute(text(
        "INSERT INTO aggregation_windows (period_type, period_start, failures, last_error, last_error_at) "
        "VALUES ('hourly', date_trunc('hour', now()) - interval '2 hours', 2, 'IndexError: boom', now())"))
    session.commit()
    app = producer(broker_url)
    for _ in range(3):
        app.send_task("voicepipe.metrics.aggregate_hourly_due", queue="metrics")
    app.send_task("voicepipe.events.record", kwargs={"event_type": "artifact_received"}, queue="pipeline")
    app.close()
    assert redis_client(broker_url).llen("metrics") == 3

    run = voicepipe(["status", "--json"], env)
    assert run.returncode == 0, run.stderr
    status = json.loads(run.stdout)
    assert status["queues"] == {"metrics": 3, "pipeline": 1, "retry": 0, "events": 0}
    assert len(status["missing_hours"]) == 3 and len(status["missing_days"]) == 2
    assert status["newest_hourly"] is None
    (failing,) = status["failing_windows"]
    assert failing["failures"] == 2 and failing["last_error"] == "IndexError: boom"

    text_run = voicepipe(["status"], env)
    assert text_run.returncode == 0, text_run.stderr
    assert "missing hours (3)" in text_run.stdout and "metrics   3" in text_run.stdout
    assert "2 failures, last: IndexError: boom" in text_run.stdout
