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
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

_lock = threading.Lock()
_engine: Engine | None = None
_engine_pid: int | None = None
_url_override: str | None = None


def database_url() -> str:
    """The configured database URL, or the embedded server's when DATABASE_URL is unset."""
    if _url_override is not None:
        return _url_override
    from voicepipe.settings import get_settings

    settings = get_settings()
    if settings.database_url:
        return normalize_url(settings.database_url)
    from voicepipe.embedded import postgres_url

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
        # the longest task time limit is larger than this.
        connect_args={"connect_timeout": 10, "options": "-c statement_timeout=300000"},
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
        except Exception:  # noqa: BLE001 - the commit stands; the sweeper repairs a lost publish
            log.exception("after-commit callback failed", extra={"callback": repr(callback)})


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error, then run after-commit work."""
    factory = sessionmaker(bind=engine or get_engine(), expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.info.pop("after_commit", None)
        session.rollback()
        raise
    finally:
        session.close()
    run_after_commit(session)
