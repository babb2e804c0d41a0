"""Every docker-compose service's command and health check, run for real as local processes.

The environment is the service's own from docker-compose.yml, interpolated with
.env.example's values (so the example file is proven to configure a working stack),
with the database and broker pointed at the test's servers.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.compose import env_example, healthcheck_command, local_command, services
from tests.helpers import (
    REPO_ROOT,
    Proc,
    admin_execute,
    service_env,
    spawn,
    wait_for,
    with_database,
)
from tests.redis_server import free_port
from worker.routes import QUEUES


@pytest.fixture
def compose() -> dict[str, dict[str, Any]]:
    values = dict(env_example(), WORKER_PIPELINE_CONCURRENCY="1")  # 2 shared cores here
    return services(values)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def env_of(service: dict[str, Any], db_url: str, broker_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = service_env(db_url, broker_url, data_dir)
    env.update({k: str(v) for k, v in service["environment"].items()})
    env.update(DATABASE_URL=db_url, BROKER_URL=broker_url, VOICEPIPE_DATA_DIR=str(data_dir), **extra)
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=False, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def healthy(args: list[str], env: dict[str, str]) -> bool:
    return run(args, env).returncode == 0


def test_migrate_then_db_health(
    compose: dict[str, dict[str, Any]], pg_admin_url: str, broker_url: str, service_data_dir: Path
) -> None:
    name = f"vp_compose_{free_port()}"
    admin_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    try:
        url = with_database(pg_admin_url, name)
        env = env_of(compose["migrate"], url, broker_url, service_data_dir)
        db_check = local_command(["voicepipe", "health", "db"], service_data_dir)
        assert run(db_check, env).returncode == 1  # not migrated yet
        done = run(local_command(compose["migrate"]["command"], service_data_dir), env)
        assert done.returncode == 0, done.stderr
        assert run(db_check, env).returncode == 0
    finally:
        admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_each_queue_worker_starts_from_its_compose_command_and_passes_its_health_check(
    compose: dict[str, dict[str, Any]], db_url: str, broker_url: str, service_data_dir: Path,
    tmp_path: Path, procs: list[Proc],
) -> None:
    for queue in QUEUES:
        service = compose[f"worker-{queue}"]
        env = env_of(service, db_url, broker_url, service_data_dir)
        procs.append(spawn(local_command(service["command"], service_data_dir), env, tmp_path / f"{queue}.log"))
    for queue, proc in zip(QUEUES, procs, strict=True):
        service = compose[f"worker-{queue}"]
        env = env_of(service, db_url, broker_url, service_data_dir)
        check = healthcheck_command(service, service_data_dir)

        def up(proc: Proc = proc, check: list[str] = check, env: dict[str, str] = env) -> bool:
            assert proc.alive(), proc.log()[-3000:]
            return healthy(check, env)

        wait_for(up, timeout=90, interval=1, what=f"worker-{queue} healthy")
    # Stopped, the same check fails.
    procs[0].stop()
    service = compose[f"worker-{QUEUES[0]}"]
    assert not healthy(healthcheck_command(service, service_data_dir),
                       env_of(service, db_url, broker_url, service_data_dir))


def test_beat_starts_from_its_compose_command_and_passes_its_health_check(
    compose: dict[str, dict[str, Any]], db_url: str, broker_url: str, service_data_dir: Path,
    tmp_path: Path, procs: list[Proc],
) -> None:
    service = compose["beat"]
    env = env_of(service, db_url, broker_url, service_data_dir, VOICEPIPE_BEAT_INTERVAL_SECONDS="1")
    check = healthcheck_command(service, service_data_dir)
    assert not healthy(check, env)
    procs.append(spawn(local_command(service["command"], service_data_dir), env, tmp_path / "beat.log"))
    wait_for(lambda: healthy(check, env), timeout=60, interval=1, what="beat healthy")
    assert list(service_data_dir.glob("celerybeat-schedule*"))  # the schedule lands in the data folder


def test_flower_starts_from_its_compose_command_and_passes_its_health_check(
    compose: dict[str, dict[str, Any]], db_url: str, broker_url: str, service_data_dir: Path,
    tmp_path: Path, procs: list[Proc],
) -> None:
    service = compose["flower"]
    port = free_port()
    env = env_of(service, db_url, broker_url, service_data_dir)
    assert env["FLOWER_BASIC_AUTH"] == env_example()["FLOWER_BASIC_AUTH"]
    check = healthcheck_command(service, service_data_dir, port)
    procs.append(spawn(local_command(service["command"], service_data_dir, port), env, tmp_path / "flower.log"))
    wait_for(lambda: healthy(check, env), timeout=60, interval=1, what="flower healthy")
    procs[0].stop()
    assert not healthy(check, env)
