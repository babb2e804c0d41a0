"""Fixtures of the fault tests: servers of their own, which the tests kill and restart."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

from tests.support.helpers import is_amqp
from tests.support.redis_server import OwnRedis


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "rabbitmq: needs RabbitMQ as the test broker (TEST_BROKER_URL=amqp://...)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """RabbitMQ-only tests are deselected (not skipped: CI fails on skips) on any other broker,
    and beside other test processes (pytest-xdist): they restart the RabbitMQ every test shares.

    .ci/run runs the broker-dependent tests a second time with TEST_BROKER_URL=amqp://, then
    these alone (`-n 0 -m rabbitmq`).
    """
    parallel = int(getattr(config, "workerinput", {}).get("workercount", 1)) > 1
    if is_amqp(os.environ.get("TEST_BROKER_URL", "")) and not parallel:
        return
    keep = [item for item in items if item.get_closest_marker("rabbitmq") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of this test's own (never the shared one): append-only, fsync always."""
    server = OwnRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def locked_events(db_url: str) -> Iterator[Connection]:
    """A connection holding an ACCESS EXCLUSIVE lock on pipeline_events until the test rolls it back."""
    engine = create_engine(db_url)
    conn = engine.connect()
    conn.execute(text("LOCK TABLE pipeline_events IN ACCESS EXCLUSIVE MODE"))
    yield conn
    conn.rollback()
    conn.close()
    engine.dispose()
