"""A producer facing a dead or silent broker gets an error in seconds, not a hang.

The producer uses the production configuration (worker/config.py): socket timeouts
and a bounded publish retry policy.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import kombu.exceptions
import pytest
from celery import Celery

from tests.support.helpers import RECENT_DAY
from tests.support.redis_server import OwnRedis, free_port
from worker.config import celery_config

pytestmark = pytest.mark.slow

# SOCKET_TIMEOUT_S is 5 s; the publish retry policy adds ~2 s of retries.
LIMIT_S = 10.0


def production_producer(url: str) -> Celery:
    app = Celery("producer")
    app.config_from_object(celery_config(url))
    return app


def send(app: Celery, keep_result: bool) -> None:
    # Fire-and-forget producers pass ignore_result=True: nothing subscribes to the
    # result store. Keeping the result subscribes to it first (Celery's redis backend).
    app.send_task("voicepipe.events.record", queue="pipeline", ignore_result=not keep_result, kwargs={
        "event_id": str(uuid.uuid4()), "event_type": "artifact_received",
        "occurred_at": f"{RECENT_DAY}T10:00:00+00:00"})


def timed_failure(app: Celery, keep_result: bool) -> tuple[float, BaseException]:
    started = time.monotonic()
    with pytest.raises(Exception) as excinfo:
        send(app, keep_result)
    return time.monotonic() - started, excinfo.value


# What each kind of producer gets: kombu's OperationalError from the publish, or,
# when it keeps results, Celery's RuntimeError from the result store's reconnect.
EXPECTED = {False: kombu.exceptions.OperationalError, True: RuntimeError}
keep_result = pytest.mark.parametrize("keep_result", [False, True], ids=["fire-and-forget", "keeps-result"])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers: a wedged broker."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


@keep_result
def test_nothing_listening_raises_within_seconds(keep_result: bool) -> None:
    app = production_producer(f"redis://127.0.0.1:{free_port()}/0")
    try:
        elapsed, exc = timed_failure(app, keep_result)
    finally:
        app.close()
    assert isinstance(exc, EXPECTED[keep_result]), repr(exc)
    assert elapsed < LIMIT_S


@keep_result
def test_a_broker_killed_under_a_connected_producer_raises_within_seconds_and_recovers(
    tmp_path: Path, keep_result: bool
) -> None:
    own = OwnRedis(tmp_path / "redis")
    own.start()
    app = production_producer(own.url)
    try:
        send(app, keep_result)  # connected and working
        with own.client() as redis:
            assert redis.llen("pipeline") == 1
        own.kill()
        elapsed, exc = timed_failure(app, keep_result)
        own.start()  # same port, same append-only file
        send(app, keep_result)  # the same producer works again, no restart needed
        with own.client() as redis:
            assert redis.llen("pipeline") == 2
    finally:
        app.close()
        own.stop()
    # Already subscribed to the result store, a keeping producer fails on the publish too.
    assert isinstance(exc, (kombu.exceptions.OperationalError, RuntimeError)), repr(exc)
    assert elapsed < LIMIT_S


def test_a_broker_that_accepts_but_never_answers_raises_after_one_socket_timeout(silent_server: int) -> None:
    # A wedged broker costs one socket timeout (5 s), not one per blind re-send.
    app = production_producer(f"redis://127.0.0.1:{silent_server}/0")
    try:
        elapsed, exc = timed_failure(app, keep_result=False)
    finally:
        app.close()
    assert isinstance(exc, kombu.exceptions.OperationalError), repr(exc)
    assert "Timeout" in str(exc)
    assert elapsed < LIMIT_S
