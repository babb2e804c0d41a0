"""`voicepipe dev` end to end: nothing configured, everything embedded, as a new user runs it."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, select, text

from models import MetricsSnapshot, PipelineEvent
from tests.support.helpers import REPO_ROOT, wait_for
from voicepipe.migrate import alembic_config

WORKER_ACTIVITY = re.compile(
    r"^worker +\| (?P<line>.*Task voicepipe\.[a-z_.]+\[[0-9a-f-]{36}\] succeeded.*)$", re.MULTILINE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def user_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VOICEPIPE_", "FLOWER_", "TEST_")) and k not in ("DATABASE_URL", "BROKER_URL")}
    env["VOICEPIPE_DATA_DIR"] = str(data_dir)
    return env


def start_dev(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "voicepipe.cli", "dev", "--flower-port", str(port), "--beat-interval", "2"],
            env=user_env(data_dir), cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def cli_json(args: list[str], data_dir: Path) -> Any:
    """`voicepipe ARGS` against dev's embedded servers, its output parsed as JSON."""
    run = subprocess.run([sys.executable, "-m", "voicepipe.cli", *args],
                         env=dict(user_env(data_dir), VOICEPIPE_EMBEDDED="1"), cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def failure_rate_of(data_dir: Path, organization: str, hour: str) -> float:
    """artifact_failed / (completed + failed) among the organization's events of the hour (5 or more)."""
    engine = create_engine(f"postgresql+psycopg://postgres@/postgres?host={data_dir / 'pg'}")
    with engine.connect() as conn:
        done, failed = conn.execute(text(
            "SELECT count(*) FILTER (WHERE event_type = 'artifact_completed'),"
            " count(*) FILTER (WHERE event_type = 'artifact_failed') FROM pipeline_events"
            " WHERE organization_id = :o AND occurred_at >= CAST(:h AS timestamptz)"
            " AND occurred_at < CAST(:h AS timestamptz) + interval '1 hour'"), {"o": organization, "h": hour}).one()
    engine.dispose()
    return failed / (done + failed) if done + failed >= 5 else 0.0


def flower_login(log: Path) -> tuple[str, str]:
    """The user and password dev printed in Flower's URL (http://user:password@127.0.0.1:port)."""
    match = re.search(r"Flower at http://([^:@\s]+):([^@\s]+)@127\.0\.0\.1:\d+", log.read_text())
    assert match, log.read_text()[-2000:]
    return match.group(1), match.group(2)


def flower_status(port: int, credentials: str | None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/workers")
    if credentials is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    request.add_header("Origin", "http://elsewhere.example")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.headers.get("Access-Control-Allow-Origin") is None  # no open CORS
            return int(r.status)
    except urllib.error.HTTPError as exc:
        assert exc.headers.get("Access-Control-Allow-Origin") is None  # no open CORS
        return int(exc.code)


def flower_workers(port: int, credentials: str) -> dict[str, object]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/workers?refresh=1")
    request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return dict(json.loads(r.read()))
    except OSError:
        return {}


def stop_dev(proc: subprocess.Popen[bytes], log: Path) -> None:
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "dev started no child processes"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    _gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"children still running after Ctrl-C: {alive}"


@pytest.mark.slow
def test_dev_runs_the_whole_stack_shows_aggregations_and_stops_cleanly(short_tmp: Path) -> None:
    data_dir = short_tmp / "devstack"
    port = free_port()
    log = short_tmp / "dev.log"
    started = time.monotonic()
    proc = start_dev(data_dir, port, log)
    try:
        # A newcomer sees the worker at work on dev's own output within a minute, its lines
        # prefixed with the process name (and no colour codes: this output is not a terminal).
        wait_for(lambda: WORKER_ACTIVITY.search(log.read_text()), timeout=60, what="worker activity on dev's output")
        assert time.monotonic() - started < 60
        assert re.search(r"^(beat|simulator) +\| ", log.read_text(), re.MULTILINE)
        assert "\x1b[" not in log.read_text()
        wait_for(lambda: "Flower at" in log.read_text(), timeout=90, what="dev to start")
        user, password = flower_login(log)
        assert len(password) >= 16  # generated for the run
        credentials = f"{user}:{password}"
        workers = wait_for(lambda: flower_workers(port, credentials), timeout=60, what="Flower to list the worker")
        assert any(name.startswith("dev@") for name in workers)
        # Anonymous calls, empty credentials and a wrong password are refused; no open CORS.
        for wrong in (None, "", ":", f"{user}:", f"{user}:wrong"):
            assert flower_status(port, wrong) == 401, wrong
        assert flower_status(port, credentials) == 200
        engine = create_engine(f"postgresql+psycopg://postgres@/postgres?host={data_dir / 'pg'}")
        with engine.connect() as conn:
            def snapshots() -> int:
                return int(conn.execute(select(func.count()).select_from(MetricsSnapshot)).scalar_one())

            # The simulator records recent history; beat (every 2 s in this test) aggregates it.
            wait_for(lambda: conn.execute(select(func.count()).select_from(PipelineEvent)).scalar_one() > 0,
                     timeout=90, what="simulated events")
            wait_for(lambda: snapshots() > 0, timeout=120, what="metrics snapshots")
            conn.rollback()
            before = snapshots()
        engine.dispose()
        # The simulator's staff user signs in to the dashboard with the same password, for repairs.
        dash = re.search(r"dashboard at http://[^:@\s]+:([^@\s]+)@127\.0\.0\.1:(\d+)/", log.read_text())
        assert dash and "sign in to the dashboard as sim-staff" in log.read_text(), log.read_text()[-2000:]
        request = urllib.request.Request(f"http://127.0.0.1:{dash.group(2)}/api/artifacts?status=processing")
        request.add_header("Authorization", "Basic " + base64.b64encode(f"sim-staff:{dash.group(1)}".encode()).decode())
        with urllib.request.urlopen(request, timeout=20) as response:
            assert response.status == 200 and "artifacts" in json.loads(response.read())
        # A fresh stack does not cry wolf: once the wrappers have caught up the simulated
        # history, nothing is missing (the windows before it began never were) and the
        # health checks open no alert.
        status = wait_for(lambda: (s := cli_json(["status", "--json"], data_dir))["newest_hourly"]
                          and not s["missing_hours"] and not s["missing_days"] and s,
                          timeout=120, what="every window since the data began computed")
        conditions = cli_json(["alerts", "evaluate"], data_dir)["conditions"]
        alerts = cli_json(["alerts", "--json"], data_dir)
        open_kinds = sorted(f"{a['kind']}:{a['organization_id'] or '-'}" for a in alerts)
        assert open_kinds == sorted(conditions)
        # The simulated history is a healthy pipeline under the default thresholds; an organization
        # whose newest hour happens to fail more than 20 % of 5 or more artifacts is the one alert
        # it may raise, and only if a recount of its events says so.
        assert [c for c in conditions if not c.startswith("failure_rate:")] == [], conditions
        for condition in conditions:
            assert failure_rate_of(data_dir, condition.split(":", 1)[1], status["newest_hourly"]) > 0.2
    finally:
        if proc.poll() is None:
            stop_dev(proc, log)
    assert "voicepipe dev: stopped" in log.read_text()
    # The files are kept as before: each child's lines, unprefixed, in VOICEPIPE_DATA_DIR/logs.
    worker_log = (data_dir / "logs" / "worker.log").read_text()
    shown = WORKER_ACTIVITY.search(log.read_text())
    assert shown and shown.group("line") in worker_log and "worker |" not in worker_log

    # A second start reuses the data: the same database, with what the first run wrote.
    log2 = short_tmp / "dev2.log"
    proc = start_dev(data_dir, port, log2)
    try:
        wait_for(lambda: "Flower at" in log2.read_text(), timeout=90, what="dev to start again")
        assert flower_login(log2) != (user, password)  # a new password every run
        engine = create_engine(f"postgresql+psycopg://postgres@/postgres?host={data_dir / 'pg'}")
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(MetricsSnapshot)).scalar_one() >= before
        engine.dispose()
    finally:
        stop_dev(proc, log2)


@pytest.mark.parametrize("variable", ["DATABASE_URL", "BROKER_URL"])
def test_dev_refuses_to_simulate_against_configured_servers_unless_asked(
    short_tmp: Path, variable: str, pg_admin_url: str, broker_url: str
) -> None:
    env = user_env(short_tmp / f"refused-{variable}")
    env[variable] = pg_admin_url if variable == "DATABASE_URL" else broker_url
    result = subprocess.run([sys.executable, "-m", "voicepipe.cli", "dev"], check=False, env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert variable in result.stderr and "--no-simulate" in result.stderr
    assert "@" not in result.stderr  # the URL itself is not echoed
    assert not (short_tmp / f"refused-{variable}").exists()  # nothing was started or created


def test_a_wrong_setting_stops_the_command_naming_the_variable(short_tmp: Path) -> None:
    env = user_env(short_tmp / "unused")
    env["VOICEPIPE_HOURLY_HORIZON_HOURS"] = "many"
    result = subprocess.run([sys.executable, "-m", "voicepipe.cli", "migrate"], check=False, env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "VOICEPIPE_HOURLY_HORIZON_HOURS" in result.stderr


def test_migrate_applies_migrations_to_database_url(pg_admin_url: str, short_tmp: Path) -> None:
    from tests.support.helpers import admin_execute, with_database

    name = f"vp_migrate_{os.getpid()}_{int(time.time())}"
    admin_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    try:
        env = user_env(short_tmp / "unused")
        env["DATABASE_URL"] = with_database(pg_admin_url, name)
        result = subprocess.run([sys.executable, "-m", "voicepipe.cli", "migrate"], check=False, env=env, cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        engine = create_engine(env["DATABASE_URL"])
        with engine.connect() as conn:
            head = ScriptDirectory.from_config(alembic_config(env["DATABASE_URL"])).get_current_head()
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one() == head
        engine.dispose()
    finally:
        admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
