"""Commands without surprises: no implicit embedded servers, VOICEPIPE_LOG_LEVEL everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil

from tests.support.helpers import RECENT, Proc, celery_cmd, producer, service_env, wait_for
from voicepipe.infra import embedded
from voicepipe.observability.queues import queue_depths


def bare_env(**extra: str) -> dict[str, str]:
    """A shell with nothing of voicepipe configured (as a newcomer's)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VOICEPIPE_", "FLOWER_", "TEST_")) and k not in ("DATABASE_URL", "BROKER_URL")}
    env.update(extra)
    return env


def servers_under(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(path) in arg for arg in proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_celery_inspect_ping_with_nothing_configured_fails_fast_naming_broker_url(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run([*celery_cmd("inspect", "ping"), "-t", "5"], check=False, cwd=tmp_path, env=bare_env(),
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode != 0, done.stdout + done.stderr
    assert elapsed < 15, elapsed
    assert "BROKER_URL is not set" in done.stderr, done.stderr[-2000:]
    assert "VOICEPIPE_EMBEDDED=1" in done.stderr  # the way to ask for embedded servers
    assert not (tmp_path / ".voicepipe").exists()
    assert list(tmp_path.iterdir()) == []
    assert servers_under(tmp_path) == []


def test_a_worker_and_the_cli_with_nothing_configured_refuse_naming_the_variable(tmp_path: Path) -> None:
    worker = subprocess.run(celery_cmd("worker", "-Q", "metrics"), check=False, cwd=tmp_path, env=bare_env(),
                            capture_output=True, text=True, timeout=60)
    assert worker.returncode != 0 and "BROKER_URL is not set" in worker.stderr, worker.stderr[-2000:]
    migrate = subprocess.run([sys.executable, "-m", "voicepipe.cli", "migrate"], check=False, cwd=tmp_path,
                             env=bare_env(),
                             capture_output=True, text=True, timeout=60)
    assert migrate.returncode == 2, migrate.stderr
    assert "configuration error: DATABASE_URL is not set" in migrate.stderr
    assert list(tmp_path.iterdir()) == [] and servers_under(tmp_path) == []


def test_voicepipe_embedded_1_asks_for_the_embedded_broker(short_tmp: Path) -> None:
    data = short_tmp / f"emb-{uuid.uuid4().hex[:6]}"
    try:
        done = subprocess.run([*celery_cmd("inspect", "ping"), "-t", "1"], check=False, cwd=short_tmp,
                              env=bare_env(VOICEPIPE_EMBEDDED="1", VOICEPIPE_DATA_DIR=str(data)),
                              capture_output=True, text=True, timeout=60)
        # Connected to the embedded Redis it started; no worker there to answer.
        assert "No nodes replied" in done.stdout + done.stderr, done.stderr[-2000:]
        assert (data / "redis.pid").exists()
    finally:
        embedded.stop(data)
    wait_for(lambda: not servers_under(data), timeout=15, what="the embedded Redis to stop")


def test_the_cli_logs_at_voicepipe_log_level(db_url: str, broker_url: str, service_data_dir: Path) -> None:
    def migrate(level: str) -> str:
        env = service_env(db_url, broker_url, service_data_dir, VOICEPIPE_LOG_LEVEL=level)
        done = subprocess.run([sys.executable, "-m", "voicepipe.cli", "migrate"], check=False, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert " INFO alembic" in migrate("INFO")  # alembic says which migration context runs
    assert " INFO " not in migrate("WARNING")


def test_a_worker_logs_at_voicepipe_log_level(
    db_url: str, broker_url: str, start_worker: Callable[..., Proc],
) -> None:
    from sqlalchemy import create_engine, func, select

    from models import PipelineEvent

    quiet = start_worker(queues="pipeline", VOICEPIPE_LOG_LEVEL="WARNING")
    app = producer(broker_url)
    try:
        app.send_task("voicepipe.events.record", queue="pipeline", kwargs={
            "event_type": "artifact_received", "organization_id": "org-log",
            "occurred_at": RECENT.isoformat()})
    finally:
        app.close()
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            wait_for(lambda: conn.execute(select(func.count()).select_from(PipelineEvent)).scalar_one() == 1,
                     timeout=60, what="the event recorded")
    finally:
        engine.dispose()
    time.sleep(1)
    log = quiet.log()
    # The fixture starts workers with `-l INFO`; the variable wins: no "Task ... received/succeeded".
    assert "succeeded in" not in log and "INFO/" not in log, log[-2000:]


def test_beat_logs_at_voicepipe_log_level(broker_url: str, db_url: str, service_data_dir: Path, tmp_path: Path) -> None:
    from tests.support.helpers import spawn

    logs = {}
    for level in ("INFO", "WARNING"):
        env = service_env(db_url, broker_url, service_data_dir, VOICEPIPE_LOG_LEVEL=level,
                          VOICEPIPE_BEAT_INTERVAL_SECONDS="1")
        beat = spawn(celery_cmd("beat", "-s", str(tmp_path / f"schedule-{level}"), "-l", "INFO"), env,
                     tmp_path / f"beat-{level}.log")
        try:
            if level == "INFO":
                wait_for(lambda b=beat: "Sending due task" in b.log(), timeout=60, what="beat at INFO")
            else:
                before = queue_depths(broker_url)["metrics"] or 0
                # Emissions at one a second once beat is up, none of them logged.
                wait_for(lambda b=before: (queue_depths(broker_url)["metrics"] or 0) > b + 2, timeout=60,
                         what="beat at WARNING sending")
                assert beat.alive(), beat.log()[-2000:]
        finally:
            beat.stop()
        logs[level] = beat.log()
    assert "Scheduler: Sending due task" in logs["INFO"]
    assert "Sending due task" not in logs["WARNING"] and "INFO/" not in logs["WARNING"], logs["WARNING"][-2000:]
