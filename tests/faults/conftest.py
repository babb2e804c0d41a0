"""Fixtures of the fault tests: servers of their own, which the tests kill and restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import OwnRedis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of this test's own (never the shared one): append-only, fsync always."""
    server = OwnRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()
