"""Every docker-compose service's command and health check, run for real as local processes.

The environment is the service's own from docker-compose.yml, interpolated with
.env.example's values (so the example file is proven to configure a working stack),
with the database and broker pointed at the test's servers.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.support.compose import env_example, healthcheck_command, local_command, services
from tests.support.helpers import (
    REPO_ROOT,
    Proc,
    admin_execute,
    service_env,
    spawn,
    wait_for,
    with_database,
)
from tests.support.redis_server import cli_executable, free_port, server_executable
from worker.routes import QUEUES

# .env.example's placeholders are refused where they guard something (Flower's password,
# the directory secret, the application role's password): a deployment replaces them, and
# so do these tests.
REAL_VALUES = {"FLOWER_BASIC_AUTH": "operator:compose-test-password",
               "FLOWER_ADMIN_BASIC_AUTH": "admin:compose-test-admin-password",
               "VOICEPIPE_DIRECTORY_SECRET": "compose-test-directory-secret",
               "POSTGRES_APP_PASSWORD": "compose-test-app-password"}


@pytest.fixture
def app_role() -> str:
    """A role name of this test's own: roles are shared by the whole PostgreSQL cluster."""
    return f"vp_app_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def compose(app_role: str) -> dict[str, dict[str, Any]]:
    values = dict(env_example(), WORKER_PIPELINE_CONCURRENCY="1",  # 2 shared cores here
                  POSTGRES_APP_USER=app_role, **REAL_VALUES)
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
    compose: dict[str, dict[str, Any]], pg_admin_url: str, broker_url: str, service_data_dir: Path,
    app_role: str,
) -> None:
    name = f"vp_compose_{free_port()}"
    admin_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    url = with_database(pg_admin_url, name)
    try:
        env = env_of(compose["migrate"], url, broker_url, service_data_dir)
        db_check = local_command(["voicepipe", "health", "db"], service_data_dir)
        assert run(db_check, env).returncode == 1  # not migrated yet
        done = run(local_command(compose["migrate"]["command"], service_data_dir), env)
        assert done.returncode == 0, done.stderr
        assert run(db_check, env).returncode == 0
    finally:
        drop_role_and_database(pg_admin_url, url, name, app_role)


def drop_role_and_database(pg_admin_url: str, url: str, name: str, role: str) -> None:
    role_exists = f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'"
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            if conn.execute(text(role_exists)).first():
                conn.execute(text(f'DROP OWNED BY "{role}"'))  # its grants and default privileges here
    finally:
        engine.dispose()
    admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin_execute(pg_admin_url, f'DROP ROLE IF EXISTS "{role}"')


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
    assert env["FLOWER_BASIC_AUTH"] == REAL_VALUES["FLOWER_BASIC_AUTH"]
    check = healthcheck_command(service, service_data_dir, port)
    procs.append(spawn(local_command(service["command"], service_data_dir, port), env, tmp_path / "flower.log"))
    wait_for(lambda: healthy(check, env), timeout=60, interval=1, what="flower healthy")
    procs[0].stop()
    assert not healthy(check, env)


def test_compose_redis_refuses_a_client_without_the_password_and_its_healthcheck_uses_it(
    compose: dict[str, dict[str, Any]], tmp_path: Path, procs: list[Proc]
) -> None:
    import redis

    service = compose["redis"]
    password = env_example()["REDIS_PASSWORD"]
    port = free_port()
    command = [server_executable(), *service["command"][1:],
               "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    procs.append(spawn(command, {"PATH": "/usr/bin:/bin"}, tmp_path / "redis.log"))

    def answers() -> bool:
        try:
            return bool(redis.Redis(port=port, password=password, socket_timeout=2).ping())
        except redis.exceptions.ConnectionError:
            return False

    wait_for(answers, timeout=30, what="redis to answer")
    anonymous = redis.Redis(port=port, socket_timeout=2)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.lpush("pipeline", "a message nobody authorized")
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=port, password="wrong", socket_timeout=2).ping()
    # The URL every service gets carries the password.
    url = compose["worker-pipeline"]["environment"]["BROKER_URL"].replace("@redis:6379", f"@127.0.0.1:{port}")
    client = redis.Redis.from_url(url, socket_timeout=2)
    assert client.ping() and client.llen("pipeline") == 0
    client.close()
    anonymous.close()

    (shell_test,) = service["healthcheck"]["test"][1:]
    # The embedded server's client (the image's redis-cli is on its PATH), pointed at this test's server.
    redis_cli = cli_executable()
    check = shell_test.replace("redis-cli", f"{redis_cli} -p {port}")
    for env, ok in (({"REDIS_PASSWORD": password}, 0), ({"REDIS_PASSWORD": "wrong"}, 1)):
        result = subprocess.run(["sh", "-c", check], env={"PATH": "/usr/bin:/bin", **env}, check=False,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == ok, (env, result.stdout, result.stderr)


def test_the_app_role_reads_and_writes_rows_but_cannot_change_the_schema(
    compose: dict[str, dict[str, Any]], pg_admin_url: str, broker_url: str, service_data_dir: Path,
    app_role: str,
) -> None:
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    name = f"vp_roles_{uuid.uuid4().hex[:10]}"
    admin_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    owner_url = with_database(pg_admin_url, name)
    try:
        env = env_of(compose["migrate"], owner_url, broker_url, service_data_dir)
        done = run(local_command(compose["migrate"]["command"], service_data_dir), env)
        assert done.returncode == 0, done.stderr
        # The app services' URL names the role; host and database are the test's.
        app_url_compose = make_url(compose["worker-pipeline"]["environment"]["DATABASE_URL"])
        assert app_url_compose.username == app_role
        app_url = make_url(owner_url).set(username=app_role, password=app_url_compose.password
                                          ).render_as_string(hide_password=False)
        app = create_engine(app_url)
        owner = create_engine(owner_url)
        try:
            with app.begin() as conn:
                conn.execute(text("INSERT INTO organizations (id, name) VALUES ('org-1', 'Club')"))
                conn.execute(text("UPDATE organizations SET name = 'Club 2' WHERE id = 'org-1'"))
                assert conn.execute(text("SELECT name FROM organizations")).scalar_one() == "Club 2"
                conn.execute(text("INSERT INTO users (id, email, is_platform_staff) VALUES ('u', 'u@x', true)"))
                assert conn.execute(text("SELECT count(*) FROM staff_audit")).scalar_one() == 1
            for statement in ("DROP TABLE organizations", "ALTER TABLE organizations ADD COLUMN x int",
                              "CREATE TABLE intruder (id int)", "TRUNCATE organizations",
                              "DELETE FROM staff_audit", "UPDATE staff_audit SET new_is_platform_staff = false",
                              # A forged audit row, and an id swap that would move staff status unaudited.
                              "INSERT INTO staff_audit (user_id, changed_by, path, new_is_platform_staff) "
                              "VALUES ('u', 'someone-else', 'cli', false)",
                              "UPDATE users SET id = 'v' WHERE id = 'u'",
                              "UPDATE alembic_version SET version_num = '0001'",
                              "DROP TRIGGER users_staff_audit ON users"):
                with pytest.raises(sqlalchemy.exc.ProgrammingError) as excinfo, app.begin() as conn:
                    conn.execute(text(statement))
                assert "permission denied" in str(excinfo.value) or "must be owner" in str(excinfo.value), statement
            # Deleting a staff user is audited (the application cannot skip it).
            with app.begin() as conn:
                conn.execute(text("DELETE FROM users WHERE id = 'u'"))
                audit = conn.execute(text("SELECT user_id, path, old_is_platform_staff, new_is_platform_staff, "
                                          "reason FROM staff_audit ORDER BY id")).all()
            assert [tuple(r) for r in audit] == [("u", "sql", None, True, None), ("u", "sql", True, False,
                                                                                  "user deleted")]
            # A table a later migration creates (as the owner) is the app's to use as well.
            with owner.begin() as conn:
                conn.execute(text("CREATE TABLE later_table (id bigint GENERATED BY DEFAULT AS IDENTITY, v text)"))
            with app.begin() as conn:
                conn.execute(text("INSERT INTO later_table (v) VALUES ('ok')"))
                assert conn.execute(text("SELECT v FROM later_table")).scalar_one() == "ok"
            with owner.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM organizations")).scalar_one() == 1
        finally:
            app.dispose()
            owner.dispose()
        # The services' health check passes as the app role.
        health = run(local_command(["voicepipe", "health", "db"], service_data_dir), {**env, "DATABASE_URL": app_url})
        assert health.returncode == 0, health.stderr
    finally:
        drop_role_and_database(pg_admin_url, owner_url, name, app_role)


def test_the_operators_flower_cannot_send_or_revoke_tasks_and_the_admin_flower_can(
    compose: dict[str, dict[str, Any]], db_url: str, broker_url: str, service_data_dir: Path,
    tmp_path: Path, procs: list[Proc],
) -> None:
    from tests.integration.test_flower import http
    from tests.support.helpers import redis_client

    flowers = {}
    for name in ("flower", "flower-admin"):
        service, port = compose[name], free_port()
        env = env_of(service, db_url, broker_url, service_data_dir)
        procs.append(spawn(local_command(service["command"], service_data_dir, port), env, tmp_path / f"{name}.log"))
        check = healthcheck_command(service, service_data_dir, port)
        wait_for(lambda check=check, env=env: healthy(check, env), timeout=60, interval=1, what=f"{name} healthy")
        flowers[name] = (f"http://127.0.0.1:{port}", env["FLOWER_BASIC_AUTH"])
    assert flowers["flower"][1] != flowers["flower-admin"][1]

    base, auth = flowers["flower"]
    assert http(base + "/api/workers", auth)[0] == 200  # it shows what there is
    event = {"event_type": "artifact_received", "organization_id": "org-1"}
    for path in ("/api/task/async-apply/voicepipe.events.record", "/api/task/send-task/voicepipe.events.record",
                 "/api/task/apply/voicepipe.events.record", f"/api/task/revoke/{uuid.uuid4()}",
                 "/api/worker/shutdown/pipeline@host", "/api/worker/pool/restart/pipeline@host"):
        status, body = http(base + path, auth, {"kwargs": event})
        assert status == 403, (path, status, body)
    assert redis_client(broker_url).llen("events") == 0  # nothing was queued

    base, auth = flowers["flower-admin"]
    status, body = http(base + "/api/task/async-apply/voicepipe.events.record", auth, {"kwargs": event})
    assert status == 200, body
    assert redis_client(broker_url).llen("events") == 1  # on the task's route
    # The operators' credentials do not open the admin Flower.
    assert http(base + "/api/workers", flowers["flower"][1])[0] == 401
