"""Queueing stage tasks by name, only once the transaction that made them due has committed."""

from __future__ import annotations

import functools
import logging
from typing import Any

from sqlalchemy.orm import Session

from models.session import after_commit

log = logging.getLogger(__name__)


def send(task_name: str, /, **kwargs: Any) -> None:
    """Publish a task by its contract name on its contract queue."""
    from worker import app
    from worker.routes import TASK_QUEUES

    app.send_task(task_name, kwargs=kwargs, queue=TASK_QUEUES[task_name])
    log.info("queued task=%s kwargs=%s", task_name, kwargs)


def send_after_commit(session: Session, task_name: str, **kwargs: Any) -> None:
    """Queue task_name once session commits; nothing is sent if it rolls back.

    A publish lost after the commit (broker down, process killed) leaves the artifact
    in a working status with no progress; the stall sweeper re-queues it.
    """
    after_commit(session, functools.partial(send, task_name, **kwargs))
