"""How every voicepipe task is declared: name, queue, limits, retries of transient errors."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from celery import Task

from voicepipe.errors import REFUSALS, InvalidInput
from worker import app
from worker.routes import TASK_QUEUES

# Errors that say nothing about the request: a database or broker that is down or
# restarting, a deadlock, a dropped connection. Retrying them with backoff is how a
# task rides out a PostgreSQL restart. Invalid input (REFUSALS) is never retried.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def public_task(
    name: str,
    *,
    time_limit: int = 120,
    ignore_result: bool = True,
    # Backoff 2, 4, 8 ... s capped at 60 s, with full jitter (each wait is drawn from
    # [0, cap], so retries of many tasks spread out): ten draws cover about three
    # minutes on average, and a run of short draws that all fall inside one database
    # restart becomes negligible (five did happen to, in the fault tests). Past that,
    # the sweeper or the next wrapper run picks the work up again.
    max_retries: int = 10,
    retry_transient: bool = True,
) -> Callable[[Callable[..., Any]], Task]:
    """Declare a task with its contract name and queue; keyword arguments only."""
    if name not in TASK_QUEUES:
        raise KeyError(f"{name} has no route in worker/routes.py")

    def decorate(fn: Callable[..., Any]) -> Task:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            if args:
                raise InvalidInput.field(
                    "args", f"{name} takes keyword arguments only, got {len(args)} positional"
                )
            return fn(**kwargs)

        return app.task(  # type: ignore[no-any-return]
            name=name,
            # No `queue=` here: Celery 5.7 deprecates the task attribute; routing is
            # done by task_routes (worker/config.py) from worker/routes.py.
            typing=False,
            time_limit=time_limit,
            soft_time_limit=max(1, time_limit - 30) if time_limit > 60 else time_limit - 5,
            ignore_result=ignore_result,
            acks_late=True,
            autoretry_for=TRANSIENT_ERRORS if retry_transient else (),
            retry_backoff=2,
            retry_backoff_max=60,
            retry_jitter=True,
            max_retries=max_retries,
            # Refusals are expected outcomes: FAILURE state, no traceback, no retry.
            throws=REFUSALS,
        )(run)

    return decorate


def take(kwargs: Mapping[str, Any], required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The task's keyword arguments, refusing unknown and missing ones by name."""
    allowed = set(required) | set(optional)
    for key in kwargs:
        if key not in allowed:
            raise InvalidInput.field(str(key), f"unknown argument (allowed: {', '.join(sorted(allowed)) or 'none'})")
    for key in required:
        if key not in kwargs:
            raise InvalidInput.field(key, "is required")
    return dict(kwargs)
