"""`voicepipe health worker|beat|db|broker` against real processes: healthy and not."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery

from tests.support.helpers import (
    REPO_ROOT,
    Proc,
    admin_execute,
    celery_cmd,
    redis_client,
    service_env,
    spawn,
    wait_for,
    with_database,
)
from tests.support.redis_server import OwnRedis, free_port
from voicepipe.observability.health import HEARTBEAT_FILENAME, check_beat


def health(env: dict[str, str], *args: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "voicepipe.cli", "health", *args], check=False, env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {lines}"
    return done.returncode, lines[0]


@pytest.fixture
def env(db_url: str, broker_url: str, service_data_dir: Path) -> dict[str, str]:
    return service_env(db_url, broker_url, service_data_dir)


# --- broker -----------------------------------------------------------------

def test_broker_is_healthy_when_redis_answers(env: dict[str, str]) -> None:
    rc, line = health(env, "broker")
    assert rc == 0 and line.startswith("healthy: broker")


def test_broker_is_unhealthy_when_nothing_listens(env: dict[str, str]) -> None:
    started = time.monotonic()
    rc, line = health(dict(env, BROKER_URL=f"redis://127.0.0.1:{free_port()}/0"), "broker")
    assert rc == 1 and "unreachable" in line
    assert time.monotonic() - started < 20


# --- database ---------------------------------------------------------------

def test_db_is_healthy_when_it_answers_at_the_migrations_head(env: dict[str, str]) -> None:
    rc, line = health(env, "db")
    assert (rc, line.split(",")[0]) == (0, "healthy: database answers")


def test_db_is_unhealthy_when_migrations_were_not_applied(env: dict[str, str], pg_admin_url: str) -> None:
    name = f"vp_empty_{int(time.time() * 1000)}"
    admin_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    try:
        rc, line = health(dict(env, DATABASE_URL=with_database(pg_admin_url, name)), "db")
    finally:
        admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert rc == 1 and "no revision" in line and "voicepipe migrate" in line


def test_db_is_unhealthy_when_postgres_is_unreachable(env: dict[str, str]) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    rc, line = health(dict(env, DATABASE_URL=url), "db")
    assert rc == 1 and "unreachable" in line


# --- worker -----------------------------------------------------------------

def test_a_running_worker_that_consumes_its_queue_is_healthy(
    env: dict[str, str], start_worker: Callable[..., Proc]
) -> None:
    worker = start_worker(queues="pipeline,retry")
    rc, line = health(env, "worker", "--name", worker.name, "--queues", "pipeline,retry")
    assert rc == 0, line
    assert "consumes pipeline, retry" in line


def test_a_worker_missing_a_queue_or_not_consuming_is_unhealthy(
    env: dict[str, str], start_worker: Callable[..., Proc], client: Celery
) -> None:
    worker = start_worker(queues="pipeline")
    rc, line = health(env, "worker", "--name", worker.name, "--queues", "pipeline,metrics")
    assert rc == 1 and "does not consume metrics" in line

    client.control.cancel_consumer("pipeline", destination=[worker.name], reply=True, timeout=5)
    rc, line = health(env, "worker", "--name", worker.name)
    assert rc == 1 and "consumes no queue" in line


def test_a_stopped_or_frozen_worker_is_unhealthy(env: dict[str, str], start_worker: Callable[..., Proc]) -> None:
    worker = start_worker(queues="pipeline")
    worker.kill(signal.SIGSTOP)  # alive but not answering: a wedged process
    try:
        rc, line = health(env, "worker", "--name", worker.name, "--timeout", "1")
    finally:
        worker.kill(signal.SIGCONT)
    assert rc == 1 and "did not answer a ping" in line
    worker.stop()
    rc, line = health(env, "worker", "--name", worker.name, "--timeout", "1")
    assert rc == 1 and "did not answer a ping" in line


def test_the_worker_name_defaults_to_celery_at_this_host_and_expands_percent_h(
    env: dict[str, str], tmp_path: Path
) -> None:
    # The docker-compose form: `-n pipeline@%h` for the worker and for its health check.
    proc = spawn(celery_cmd("worker", "-Q", "pipeline", "-c", "1", "-n", "hc@%h", "--without-mingle",
                            "--without-gossip"), env, tmp_path / "hc.log")
    try:
        wait_for(lambda: health(env, "worker", "--name", "hc@%h", "--queues", "pipeline")[0] == 0,
                 timeout=60, interval=0.5, what="worker hc@%h healthy")
        rc, line = health(env, "worker", "--timeout", "1")  # celery@<host>: not running
        assert rc == 1 and "celery@" in line
    finally:
        proc.stop()


# --- beat -------------------------------------------------------------------

@pytest.fixture
def start_beat(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(env: dict[str, str], interval: str = "1") -> Proc:
        proc = spawn(celery_cmd("beat", "-s", str(tmp_path / f"schedule-{len(procs)}"), "-l", "INFO"),
                     dict(env, VOICEPIPE_BEAT_INTERVAL_SECONDS=interval), tmp_path / f"beat-{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def heartbeat(env: dict[str, str]) -> dict[str, object] | None:
    try:
        return json.loads((Path(env["VOICEPIPE_DATA_DIR"]) / HEARTBEAT_FILENAME).read_text())
    except FileNotFoundError:
        return None


def test_beat_that_sends_its_entries_is_healthy(
    env: dict[str, str], start_beat: Callable[..., Proc], broker_url: str
) -> None:
    start_beat(env)
    wait_for(lambda: (heartbeat(env) or {}).get("last_sent_at"), timeout=60, what="beat to send")
    rc, line = health(env, "beat")
    assert rc == 0 and "last sent" in line, line
    # What beat sent really is on the broker, waiting for a metrics worker.
    with redis_client(broker_url) as redis:
        assert redis.llen("metrics") > 0


def test_beat_is_unhealthy_when_not_running_killed_hung_or_unable_to_send(
    env: dict[str, str], start_beat: Callable[..., Proc], tmp_path: Path
) -> None:
    rc, line = health(env, "beat")
    assert rc == 1 and "no beat heartbeat" in line

    own = OwnRedis(tmp_path / "redis")
    own.start()
    try:
        beat_env = dict(env, BROKER_URL=own.url)
        beat = start_beat(beat_env)
        wait_for(lambda: (heartbeat(env) or {}).get("last_sent_at"), timeout=60, what="beat to send")

        beat.kill(signal.SIGSTOP)  # hung: the loop stops ticking
        time.sleep(3)
        rc, line = health(env, "beat", "--max-tick-age", "2")
        assert rc == 1 and "last ticked" in line
        beat.kill(signal.SIGCONT)

        own.kill()  # the broker goes away under a running beat
        wait_for(lambda: health(env, "beat")[0] == 1, timeout=60, interval=1, what="beat unhealthy")
        rc, line = health(env, "beat")
        assert "could not send" in line, line

        beat.kill(signal.SIGKILL)
        beat.popen.wait(10)
        rc, line = health(env, "beat")
        assert rc == 1 and "is not running" in line
    finally:
        own.stop()


def test_beat_that_ticks_but_has_sent_nothing_for_too_long_is_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / HEARTBEAT_FILENAME
    now = time.time()
    path.write_text(json.dumps({"pid": 0, "host": "elsewhere", "started_at": now - 3600, "ticked_at": now - 5,
                                "last_sent_at": now - 1000, "last_sent": "requeue-stalled-artifacts",
                                "last_error_at": None, "last_error": None}))
    result = check_beat(path, now=now)
    assert not result.ok and "sent nothing for 1000s" in result.reason
    assert check_beat(path, max_silence=1200, now=now).ok
