"""The engine (one per process, rebuilt after fork) and the unit-of-work session.

``session_scope()`` commits on success and rolls back on error; helpers never
commit. Work that must only happen once the transaction is durable (queueing a
follow-up task) is registered with ``after_commit`` and dropped on rollback.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

_lock = threading.Lock()
_engine: Engine | None = None
_engine_pid: int | None = None
_url_override: str | None = None


def database_url() -> str:
    """The configured database URL, or the embedded server's when unset and allowed (VOICEPIPE_EMBEDDED=1)."""
    if _url_override is not None:
        return _url_override
    from voicepipe.settings import get_settings

    settings = get_settings()
    if settings.database_url:
        return normalize_url(settings.database_url)
    from voicepipe.infra.embedded import postgres_url, require_allowed

    require_allowed("DATABASE_URL")
    return postgres_url(settings.data_dir)


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain postgresql:// URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, **kwargs: object) -> Engine:
    if "poolclass" not in kwargs:
        # A worker process runs one task at a time; a few connections cover the
        # producer-side sends and after-commit work of that task.
        kwargs.setdefault("pool_size", 5)
        kwargs.setdefault("max_overflow", 5)
    return create_engine(
        normalize_url(url),
        # Verify pooled connections before use: a database restart must cost one
        # reconnect, not a failed task.
        pool_pre_ping=True,
        # Bound every statement so a wedged query cannot hold a worker forever;
        # the longest task time limit is larger than this. No JIT: compiling the
        # aggregation statements' hundred sums costs more than it saves on them
        # (docs/profiling.md).
        connect_args={"connect_timeout": 10, "options": "-c statement_timeout=300000 -c jit=off"},
        **kwargs,  # type: ignore[arg-type]
    )


def get_engine() -> Engine:
    """This process's engine; a forked child builds its own instead of sharing sockets."""
    global _engine, _engine_pid
    pid = os.getpid()
    if _engine is not None and _engine_pid == pid:
        return _engine
    with _lock:
        if _engine is not None and _engine_pid != pid:
            # Inherited from the parent: forget its pool without closing the parent's sockets.
            _engine.dispose(close=False)
            _engine = None
        if _engine is None:
            _engine = make_engine(database_url())
            _engine_pid = pid
        return _engine


def configure(url: str | None) -> None:
    """Point this process at another database (tests, CLI); None returns to settings."""
    global _url_override
    dispose_engine()
    _url_override = normalize_url(url) if url else None


def dispose_engine() -> None:
    global _engine, _engine_pid
    with _lock:
        if _engine is not None:
            _engine.dispose()
        _engine = None
        _engine_pid = None


def after_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run callback once session's transaction has committed; never on rollback."""
    session.info.setdefault("after_commit", []).append(callback)


def run_after_commit(session: Session) -> None:
    callbacks = session.info.pop("after_commit", [])
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("after-commit callback failed", extra={"callback": repr(callback)})


# The connection's statement_timeout (make_engine); a transaction may only lower it.
STATEMENT_TIMEOUT_MS = 300_000
# A task's statements end this long before its soft time limit, so a blocked task
# fails as a transient error (retried, then parked) instead of dying by time limit.
SOFT_LIMIT_MARGIN_MS = 5_000


def transaction_timeouts() -> tuple[int, int]:
    """(statement_timeout, lock_timeout) in ms for a transaction of this process now.

    Inside a Celery task the statement timeout is below the task's soft time limit;
    the lock timeout is VOICEPIPE_LOCK_TIMEOUT_MS, never above the statement timeout.
    """
    from voicepipe.settings import get_settings

    statement = STATEMENT_TIMEOUT_MS
    soft = _current_soft_time_limit()
    if soft:
        statement = min(statement, max(1_000, int(soft * 1000) - SOFT_LIMIT_MARGIN_MS))
    return statement, min(get_settings().lock_timeout_ms, statement)


_soft_limit_override: float | None = None


@contextmanager
def soft_time_limit(seconds: float) -> Iterator[None]:
    """Transactions inside take this soft limit, for work that is a pool job but not a task (a batch)."""
    global _soft_limit_override
    previous, _soft_limit_override = _soft_limit_override, seconds
    try:
        yield
    finally:
        _soft_limit_override = previous


def _current_soft_time_limit() -> float | None:
    from celery import current_task

    if _soft_limit_override is not None:
        return _soft_limit_override
    if not current_task:
        return None
    limit = getattr(current_task.request, "timelimit", None)
    soft = limit[1] if limit and len(limit) > 1 and limit[1] else getattr(current_task, "soft_time_limit", None)
    return float(soft) if soft else None


# The transaction's timeouts, and a reader's READ ONLY (what SET TRANSACTION READ ONLY
# sets), in one statement: one round trip before the work, on the driver's cursor.
_TIMEOUTS_SQL = "SELECT set_config('statement_timeout', %(s)s, true), set_config('lock_timeout', %(l)s, true)"
_READ_ONLY_SQL = _TIMEOUTS_SQL + ", set_config('transaction_read_only', 'on', true)"


@contextmanager
def session_scope(engine: Engine | None = None, *, read_only: bool = False) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error, then run after-commit work.

    Its transaction starts with SET LOCAL statement_timeout and lock_timeout
    (transaction_timeouts), so a held lock fails fast as a transient error. With
    READ_ONLY it also refuses every write (ReadOnlySqlTransaction).
    """
    session = Session(bind=engine or get_engine(), expire_on_commit=False)
    try:
        statement_ms, lock_ms = transaction_timeouts()
        session.connection().exec_driver_sql(
            _READ_ONLY_SQL if read_only else _TIMEOUTS_SQL, {"s": f"{statement_ms}ms", "l": f"{lock_ms}ms"})
        yield session
        session.commit()
    except BaseException:
        session.info.pop("after_commit", None)
        session.rollback()
        raise
    finally:
        session.close()
    run_after_commit(session)
