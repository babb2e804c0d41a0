"""Built-in health checks: alerts deduplicated however many evaluations run, acknowledged, resolved."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from tests.support.helpers import (
    REPO_ROOT,
    Proc,
    celery_cmd,
    producer,
    redis_client,
    service_env,
    spawn,
    wait_for,
)
from voicepipe.alerts.evaluate import evaluate, health_findings
from voicepipe.alerts.thresholds import Thresholds
from voicepipe.events.recording import record_events
from voicepipe.metrics.due import due_hours
from voicepipe.metrics.hourly import aggregate_hour
from voicepipe.observability.health import HEARTBEAT_FILENAME
from voicepipe.observability.probe import collect

QUEUE_LIMIT = 3


def voicepipe(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicepipe.cli", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def fill_retry_queue(broker_url: str, n: int) -> None:
    """N messages waiting in the retry queue (no worker here consumes it)."""
    app = producer(broker_url)
    for _ in range(n):
        app.send_task("voicepipe.retry.full_pipeline", queue="retry",
                      kwargs={"artifact_id": "00000000-0000-0000-0000-000000000000", "requested_by": "x"})
    app.close()


def alerts_rows(session: Session) -> list[Any]:
    session.rollback()  # see what other processes committed
    return list(session.execute(text(
        "SELECT id, kind, organization_id, evaluations, acknowledged_by, resolved_at FROM alerts ORDER BY id"
    )).all())


def open_keys(session: Session) -> Counter[tuple[str, str | None]]:
    return Counter((r.kind, r.organization_id) for r in alerts_rows(session) if r.resolved_at is None)


@pytest.fixture
def env(db_url: str, broker_url: str, service_data_dir: Path) -> dict[str, str]:
    return service_env(db_url, broker_url, service_data_dir, VOICEPIPE_ALERT_QUEUE_DEPTH=str(QUEUE_LIMIT))


def test_two_evaluations_at_once_on_a_worker_leave_one_open_alert_per_condition(
    session: Session, env: dict[str, str], broker_url: str, start_worker: Callable[..., Proc],
) -> None:
    fill_retry_queue(broker_url, QUEUE_LIMIT + 2)
    start_worker(queues="metrics", concurrency=2, **{k: v for k, v in env.items() if k.startswith("VOICEPIPE_ALERT")})
    app = producer(broker_url)
    rounds = 3
    for _ in range(rounds):  # two evaluations sent together, two worker processes take them at once
        results = [app.send_task("voicepipe.alerts.evaluate", queue="metrics") for _ in range(2)]
        reports = [r.get(timeout=60) for r in results]
        assert all("queue_depth:-" in r["conditions"] for r in reports)
    app.close()

    keys = open_keys(session)
    assert keys[("queue_depth", None)] == 1
    assert set(keys.values()) == {1}, keys  # every condition (lag, beat, ...) has exactly one open alert
    (queue_alert,) = [r for r in alerts_rows(session) if r.kind == "queue_depth"]
    assert queue_alert.evaluations == 2 * rounds


def test_two_evaluations_racing_in_threads_open_one_alert(
    session: Session, engine: Any, db_url: str, broker_url: str, tmp_path: Path
) -> None:
    fill_retry_queue(broker_url, QUEUE_LIMIT + 1)
    thresholds = Thresholds(queue_depth=QUEUE_LIMIT)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def one() -> None:
        try:
            with Session(bind=engine) as s:
                now = datetime.now(UTC)
                health = collect(s, now, broker_url=broker_url, heartbeat=tmp_path / "none.json",
                                 hourly_horizon_hours=3, daily_horizon_days=2, stall_timeout_s=900)
                barrier.wait(timeout=30)  # both have read the health and now race to store it
                evaluate(s, now, health, thresholds)
                s.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    keys = open_keys(session)
    assert keys[("queue_depth", None)] == 1 and set(keys.values()) == {1}, keys


def test_the_database_refuses_a_second_open_alert_for_one_condition(db_url: str) -> None:
    eng = create_engine(db_url)
    insert = text("INSERT INTO alerts (kind, organization_id, message) VALUES (:k, :o, 'm')")
    try:
        with eng.begin() as conn:
            conn.execute(insert, {"k": "beat_silent", "o": None})
            conn.execute(insert, {"k": "failure_rate", "o": "org-1"})
            conn.execute(insert, {"k": "failure_rate", "o": "org-2"})
        for org in (None, "org-1"):  # NULL (platform-wide) is one value too
            with pytest.raises(sqlalchemy.exc.IntegrityError), eng.begin() as conn:
                conn.execute(insert, {"k": "beat_silent" if org is None else "failure_rate", "o": org})
        with eng.begin() as conn:  # once resolved, the condition may open again
            conn.execute(text("UPDATE alerts SET resolved_at = now() WHERE kind = 'beat_silent'"))
            conn.execute(insert, {"k": "beat_silent", "o": None})
            assert conn.execute(text("SELECT count(*) FROM alerts WHERE kind = 'beat_silent'")).scalar() == 2
    finally:
        eng.dispose()


def listed(env: dict[str, str], *flags: str) -> list[dict[str, Any]]:
    run = voicepipe(["alerts", "--json", *flags], env)
    assert run.returncode == 0, run.stderr
    return list(json.loads(run.stdout))


def queue_alerts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["kind"] == "queue_depth"]


def test_acknowledgement_and_recovery_are_both_visible(env: dict[str, str], broker_url: str) -> None:
    fill_retry_queue(broker_url, QUEUE_LIMIT + 2)
    first = voicepipe(["alerts", "evaluate"], env)
    assert first.returncode == 0, first.stderr
    assert "queue_depth:-" in json.loads(first.stdout)["conditions"]
    (alert,) = queue_alerts(listed(env))
    assert alert["acknowledged_by"] is None and alert["resolved_at"] is None
    assert f"retry {QUEUE_LIMIT + 2}" in alert["message"]

    ack = voicepipe(["alerts", "ack", str(alert["id"]), "--by", "alice"], env)
    assert ack.returncode == 0, ack.stderr
    assert "acked by alice" in ack.stdout
    assert voicepipe(["alerts", "evaluate"], env).returncode == 0  # still failing: same alert, still open
    (still,) = queue_alerts(listed(env))
    assert (still["id"], still["acknowledged_by"], still["resolved_at"], still["evaluations"]) \
        == (alert["id"], "alice", None, 2)
    text_list = voicepipe(["alerts"], env)
    assert "acked by alice" in text_list.stdout and "queue_depth" in text_list.stdout

    missing = voicepipe(["alerts", "ack", "999999", "--by", "alice"], env)
    assert missing.returncode == 1 and "AlertNotFound" in missing.stderr
    nobody = voicepipe(["alerts", "ack", str(alert["id"]), "--by", " "], env)
    assert nobody.returncode == 1 and "InvalidInput" in nobody.stderr
    assert voicepipe(["alerts", "ack", "abc", "--by", "alice"], env).returncode == 2

    with redis_client(broker_url) as redis:
        redis.delete("retry")  # the backlog drains
    assert voicepipe(["alerts", "evaluate"], env).returncode == 0
    assert queue_alerts(listed(env)) == []  # no longer open
    (closed,) = queue_alerts(listed(env, "--all"))
    assert closed["id"] == alert["id"] and closed["acknowledged_by"] == "alice"
    assert closed["resolved_at"] is not None and closed["acknowledged_at"] is not None

    fill_retry_queue(broker_url, QUEUE_LIMIT + 1)  # it comes back: a new, unacknowledged alert
    assert voicepipe(["alerts", "evaluate"], env).returncode == 0
    (again,) = queue_alerts(listed(env))
    assert again["id"] != alert["id"] and again["acknowledged_by"] is None


@pytest.fixture
def start_beat(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Proc]]:
    procs: list[Proc] = []

    def start(env: dict[str, str]) -> Proc:
        proc = spawn(celery_cmd("beat", "-s", str(tmp_path / "beat-schedule"), "-l", "INFO"),
                     dict(env, VOICEPIPE_BEAT_INTERVAL_SECONDS="1"), tmp_path / "beat.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def beat_alerts(env: dict[str, str]) -> list[dict[str, Any]]:
    return [r for r in listed(env) if r["kind"] == "beat_silent"]


def test_a_beat_silent_longer_than_its_threshold_raises_its_alert(
    env: dict[str, str], start_beat: Callable[[dict[str, str]], Proc]
) -> None:
    env = dict(env, VOICEPIPE_ALERT_BEAT_SILENCE_SECONDS="10")
    beat = start_beat(env)
    heartbeat = Path(env["VOICEPIPE_DATA_DIR"]) / HEARTBEAT_FILENAME
    wait_for(lambda: heartbeat.exists() and json.loads(heartbeat.read_text()).get("last_sent_at"),
             timeout=60, what="beat to send")
    started = time.time()
    assert voicepipe(["alerts", "evaluate"], env).returncode == 0
    assert beat_alerts(env) == []  # ticking and sending: no alert
    # The threshold (read by each evaluation) at least four evaluations long, so that "not
    # yet" can be told apart where starting the command alone takes seconds.
    threshold = max(10, math.ceil(4 * (time.time() - started)) + 2)
    env = dict(env, VOICEPIPE_ALERT_BEAT_SILENCE_SECONDS=str(threshold))

    beat.kill(signal.SIGKILL)
    beat.popen.wait(10)
    silent_since = time.time()
    assert voicepipe(["alerts", "evaluate"], env).returncode == 0
    assert time.time() - silent_since < threshold - 1, "too slow to tell 'not yet' apart"
    assert beat_alerts(env) == []  # silent, but not yet for longer than the threshold
    wait_for(lambda: time.time() - silent_since > threshold + 1, timeout=threshold + 10)
    assert voicepipe(["alerts", "evaluate"], env).returncode == 0
    (alert,) = beat_alerts(env)
    assert alert["value"] > threshold and alert["threshold"] == threshold
    assert "silent for" in alert["message"]

    start_beat(env)  # beat is back: the next evaluation closes the alert
    started = time.time()
    wait_for(lambda: json.loads(heartbeat.read_text()).get("started_at", 0) >= started - 1
             and json.loads(heartbeat.read_text()).get("last_sent_at"), timeout=60, what="beat back")
    assert voicepipe(["alerts", "evaluate"], env).returncode == 0
    assert beat_alerts(env) == []
    assert [r["resolved_at"] is not None for r in listed(env, "--all") if r["kind"] == "beat_silent"] == [True]


def test_resolved_alerts_past_retention_are_deleted_by_the_next_evaluation(session: Session, engine: Any,
                                                                           broker_url: str, tmp_path: Path) -> None:
    session.execute(text(
        "INSERT INTO alerts (kind, message, opened_at, last_seen_at, resolved_at) VALUES "
        "('queue_depth', 'old', now() - interval '100 days', now() - interval '100 days', now() - interval '91 days'),"
        "('queue_depth', 'recent', now() - interval '10 days', now() - interval '10 days', now() - interval '9 days')"))
    session.commit()
    with Session(bind=engine) as s:
        now = datetime.now(UTC)
        health = collect(s, now, broker_url=broker_url, heartbeat=tmp_path / "none.json",
                         hourly_horizon_hours=3, daily_horizon_days=2, stall_timeout_s=900)
        evaluate(s, now, health, Thresholds())
        s.commit()
    session.rollback()
    messages = set(session.scalars(text("SELECT message FROM alerts WHERE resolved_at IS NOT NULL")))
    assert messages == {"recent"}


def test_a_fresh_installation_opens_no_alert_before_or_after_its_first_aggregation(
    session: Session, engine: Any, tmp_path: Path
) -> None:
    # Its first events, a few minutes old; the horizons reach 72 hours and 7 days back, before them.
    now = datetime.now(UTC)
    record_events(session, [{"event_type": "artifact_received", "organization_id": "first-org",
                             "occurred_at": (now - timedelta(minutes=m)).isoformat()} for m in (3, 2, 1)])
    session.commit()

    def conditions() -> list[str]:
        with Session(bind=engine) as s:
            health = collect(s, datetime.now(UTC), broker_url=None, heartbeat=tmp_path / "none.json",
                             hourly_horizon_hours=72, daily_horizon_days=7, stall_timeout_s=900)
            found, _ = health_findings(health, Thresholds())
        # No beat runs here: its silence is the one true condition.
        return [f"{f.kind}:{f.message}" for f in found if f.kind != "beat_silent"]

    assert conditions() == []
    with Session(bind=engine) as s:  # the first hourly run: every due hour
        for hour in due_hours(s, datetime.now(UTC), 72):
            aggregate_hour(s, hour)
        s.commit()
    assert conditions() == []
