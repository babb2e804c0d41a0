"""Worker process lifecycle: a fresh database engine per process, disposed on exit."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown

from models.session import dispose_engine


@worker_process_init.connect
def _fresh_engine(**_: Any) -> None:
    # A forked child must not reuse the parent's pooled sockets; get_engine() also
    # checks the pid, this makes the intent explicit and frees the inherited pool.
    from models import session

    if session._engine is not None:
        session._engine.dispose(close=False)
        session._engine = None


@worker_process_shutdown.connect
def _dispose_engine(**_: Any) -> None:
    dispose_engine()
