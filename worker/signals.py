"""Worker process lifecycle: a fresh database engine per process, disposed on exit; log level."""

from __future__ import annotations

from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_process_init,
    worker_process_shutdown,
)

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


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_level(logger: Any = None, **_: Any) -> None:
    # VOICEPIPE_LOG_LEVEL, when set, decides for worker and beat alike (over `-l`, whose
    # default is WARNING): one variable sets the level of every voicepipe process.
    import logging
    import os

    from voicepipe.settings import get_settings

    if logger is not None and os.environ.get("VOICEPIPE_LOG_LEVEL", "").strip():
        logger.setLevel(getattr(logging, get_settings().log_level))
