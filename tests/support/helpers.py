"""Test helpers: servers, databases, brokers and worker processes (no mocks)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from celery import Celery
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parents[2]
# A day two days back: events and AI calls are refused when older than retention
# (35 days for counters) or in the future, so tests stamp their data relative to today.
RECENT = datetime.combine(datetime.now(UTC).date() - timedelta(days=2), datetime.min.time(), UTC)
RECENT_DAY = RECENT.date().isoformat()


def redis_client(url: str) -> redis.Redis:
    if url.startswith("redis+socket://"):
        path = url[len("redis+socket://"):].split("?", 1)[0]
        return redis.Redis(unix_socket_path=path, socket_timeout=5)
    return redis.Redis.from_url(url, socket_timeout=5)


def is_amqp(url: str) -> bool:
    return url.startswith(("amqp://", "amqps://", "pyamqp://"))


def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl (this machine's RabbitMQ; the fault tests' own vhosts and restarts)."""
    done = subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=120)
    return done.stdout


def with_vhost(amqp_url: str, vhost: str) -> str:
    """amqp://user:pass@host:port/<vhost>"""
    parts = urlsplit(amqp_url)
    return f"{parts.scheme}://{parts.netloc}/{vhost}"


def new_vhost(prefix: str = "vp_t") -> str:
    """A fresh RabbitMQ vhost for one test (the RabbitMQ counterpart of a flushed Redis db)."""
    vhost = f"{prefix}_{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost


class _Producer(Celery):
    def close(self) -> None:
        """Celery's close() leaves the result backend's connections (the Redis result
        subscription) to the garbage collector, which warned in whichever test it ran."""
        backend = self._backend
        super().close()
        consumer = getattr(backend, "result_consumer", None)
        if consumer is not None:
            consumer.stop()
        client = getattr(backend, "__dict__", {}).get("client")
        if client is not None:
            client.connection_pool.disconnect()


def producer(broker_url: str, backend: str | None = None) -> Celery:
    """A producer that has only Celery installed: no voicepipe import, names only.

    Results: the Redis broker itself; with RabbitMQ, the backend the workers use
    (`db+<DATABASE_URL>`, worker/config.py) must be given to read any.
    """
    if backend is None and not is_amqp(broker_url):
        backend = broker_url
    app = _Producer("test-producer", broker=broker_url, backend=backend)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        broker_connection_timeout=5,
        broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
    )
    return app


def admin_execute(admin_url: str, sql: str) -> None:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=None)
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    finally:
        engine.dispose()


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _wait_scale() -> float:
    raw = os.environ.get("VOICEPIPE_TEST_WAIT_SCALE", "3")
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not scale >= 1:
        raise ValueError(f"VOICEPIPE_TEST_WAIT_SCALE must be a number >= 1, got {raw!r}")
    return scale


# A wait_for is an upper bound on something that must happen: a slower or busier machine
# only takes longer to get there. Its timeout is stretched by this factor
# (VOICEPIPE_TEST_WAIT_SCALE, default 3): the waits were set on a machine about four times
# as fast as some CI runs on, where 30 s for 4,000 messages to reach a worker ran out under
# three test processes. A wait that states a bound ("within a minute") is not stretched.
WAIT_SCALE = _wait_scale()


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "",
             *, scale: bool = True) -> Any:
    """PREDICATE's first truthy value, polled every INTERVAL; AssertionError after TIMEOUT seconds
    (times WAIT_SCALE unless scale=False: a wait that states a bound, "within a minute", or
    that may run out in a passing test)."""
    if scale:
        timeout *= WAIT_SCALE
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; last={last!r}")


@dataclass
class Proc:
    """A real subprocess (worker, beat, Flower, CLI) with its log."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a prefork worker's children too)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.popen.wait(5)
        else:
            # Reap children of a dead leader, if any remain.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)


def spawn(args: list[str], env: dict[str, str], log_path: Path, name: str = "") -> Proc:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            args, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    return Proc(popen=popen, log_path=log_path, name=name)


def service_env(db_url: str, broker_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOICEPIPE_", "FLOWER_"))}
    env.update(
        DATABASE_URL=db_url,
        BROKER_URL=broker_url,
        VOICEPIPE_DATA_DIR=str(data_dir),
        PYTHONUNBUFFERED="1",
        # Retries trusted unsigned, as a closed deployment may choose: the tests of what a
        # retry does send them plainly; tests/integration/test_signed_authority.py sets 0.
        VOICEPIPE_UNSIGNED_RETRIES="1",
    )
    env.update(extra)
    return env


def celery_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker", *args]



def data_began(session: Any, at: datetime) -> None:
    """An all-zero counter row in AT's hour: the data began then (windows closing before it are
    never missing), without an event, a late mark or a figure anywhere."""
    session.execute(text("INSERT INTO event_counters (organization_id, hour_start) VALUES ('data-began', :h)"
                         " ON CONFLICT DO NOTHING"), {"h": at.replace(minute=0, second=0, microsecond=0)})
    session.commit()
