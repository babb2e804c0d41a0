"""How every voicepipe task is declared: name, queue, limits, retries of transient errors,
and, for write tasks, parking as a dead letter instead of dropping the message."""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

import kombu.exceptions
import psycopg
import redis.exceptions
import sqlalchemy.exc
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery import Task
from celery.exceptions import Reject
from celery.utils.time import get_exponential_backoff_interval

from voicepipe.errors import REFUSALS, DeadLettered, InvalidInput
from worker import app
from worker.routes import TASK_QUEUES

log = logging.getLogger(__name__)

# Errors that say nothing about the request: a database or broker that is down or
# restarting, a deadlock, a dropped connection, a lock or statement timeout
# (psycopg's LockNotAvailable and QueryCanceled are OperationalErrors). Retrying them
# with backoff is how a task rides out a PostgreSQL restart or a held lock. Invalid
# input (REFUSALS) is never retried. psycopg's own classes too: recording stages large
# batches through the raw connection's COPY, where SQLAlchemy does not wrap errors.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

# Backoff 2, 4, 8 ... s capped at 60 s, with full jitter (each wait is drawn from
# [0, cap], so retries of many tasks spread out): the default ten draws
# (VOICEPIPE_TASK_MAX_RETRIES) cover about three minutes on average, and a run of short
# draws that all fall inside one database restart becomes negligible (five did happen
# to, in the fault tests). Past that, a write task parks its message as a dead letter;
# aggregation and sweeper tasks fail and the next wrapper run picks the work up again.
BACKOFF_FACTOR_S = 2
BACKOFF_MAX_S = 60
# When even parking fails (the database is down), the message goes back to the broker
# after this pause rather than being acknowledged and lost.
REQUEUE_PAUSE_S = 5.0


class VoicepipeTask(Task):  # type: ignore[misc]
    """Parks a write task's message when its hard time limit kills the pool process.

    Celery 5.7 calls on_failure in the worker's main process for a hard time limit
    (celery/worker/request.py, Request.on_timeout); every other give-up is parked
    inside the task (see public_task).
    """

    parks: bool = False

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if self.parks and isinstance(exc, TimeLimitExceeded):
            _park(self, task_id, dict(kwargs or {}), "time_limit", exc, attempts=1)


def _park(task: Task, task_id: str, kwargs: dict[str, Any], reason: str, exc: BaseException,
          *, attempts: int, deliveries: int = 1) -> DeadLettered:
    from worker.deadletters import park

    parked = park(task_name=task.name, task_id=task_id, queue=TASK_QUEUES[task.name], kwargs=kwargs,
                  reason=reason, error=f"{type(exc).__name__}: {exc}", attempts=attempts, deliveries=deliveries)
    return DeadLettered(f"parked as dead letter {parked.id} ({reason}): {type(exc).__name__}: {exc}")


def public_task(
    name: str,
    *,
    time_limit: int = 120,
    ignore_result: bool = True,
    retry_transient: bool = True,
    parks: bool = False,
    strategy: str | None = None,
    track_started: bool = True,
) -> Callable[[Callable[..., Any]], Task]:
    """Declare a task with its contract name and queue from a keyword-only typed function.

    The function is named after the last part of the task name, and its signature is
    the task's arguments: a message's arguments are bound against it, and unknown or
    missing ones refused by name (InvalidInput) before the body runs. The values are
    checked by the body's validators (voicepipe/validation.py), as the schemas say.

    parks=True (write tasks): a message whose transient retries run out, that hits its
    time limit, fails unexpectedly, or is delivered more than VOICEPIPE_DELIVERY_LIMIT
    times is parked in dead_letters instead of dropped. Refusals are answers, never parked.
    track_started=False: the result store never shows the task STARTED (PENDING, then its outcome).
    strategy: how the worker's consumer dispatches the task's messages (Celery's Task.Strategy;
    worker/batching.py records single-event messages in batches).
    """
    if name not in TASK_QUEUES:
        raise KeyError(f"{name} has no route in worker/routes.py")

    def decorate(fn: Callable[..., Any]) -> Task:
        signature = SIGNATURES[name] = task_signature(name, fn)
        params = signature.parameters.values()
        required = tuple(p.name for p in params if p.default is inspect.Parameter.empty)
        optional = tuple(p.name for p in params if p.default is not inspect.Parameter.empty)

        def bound(**kwargs: Any) -> Any:
            take(kwargs, required, optional)
            token = _SENT.set(kwargs)
            try:
                return fn(**kwargs)
            finally:
                _SENT.reset(token)

        @functools.wraps(fn)
        def run(self: Task, *args: Any, **kwargs: Any) -> Any:
            if args:
                raise InvalidInput.field(
                    "args", f"{name} takes keyword arguments only, got {len(args)} positional"
                )
            return _run(self, bound, kwargs, retry_transient=retry_transient, parks=parks)

        # The bound task's signature is the function's (Flower, `celery inspect`, help()).
        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY), *signature.parameters.values()])
        return app.task(  # type: ignore[no-any-return]
            bind=True,
            base=VoicepipeTask,
            parks=parks,
            name=name,
            # No `queue=` here: Celery 5.7 deprecates the task attribute; routing is
            # done by task_routes (worker/config.py) from worker/routes.py.
            typing=False,
            time_limit=time_limit,
            soft_time_limit=max(1, time_limit - 30) if time_limit > 60 else time_limit - 5,
            ignore_result=ignore_result,
            track_started=track_started,
            acks_late=True,
            # Refusals are expected outcomes: FAILURE state, no traceback, no retry.
            # A parked message is one too: its dead letter holds the error.
            throws=(*REFUSALS, DeadLettered),
            **({"Strategy": strategy} if strategy else {}),
        )(run)

    return decorate


def task_signature(name: str, fn: Callable[..., Any]) -> inspect.Signature:
    """The signature of a task function; TypeError if it is not one (named after the task, keyword-only)."""
    if fn.__name__ != name.rsplit(".", 1)[1]:
        raise TypeError(f"{name}: its function is named {fn.__name__}, not {name.rsplit('.', 1)[1]}")
    signature = inspect.signature(fn)
    if any(p.kind is not inspect.Parameter.KEYWORD_ONLY for p in signature.parameters.values()):
        raise TypeError(f"{name}: {fn.__name__} must take keyword-only arguments: def {fn.__name__}(*, ...)")
    return signature


# Every public task's signature by task name, read without configuring the app: the task
# contract's schemas take their properties from them (voicepipe/contract.py).
SIGNATURES: dict[str, inspect.Signature] = {}

# The running task's arguments as its message carried them: what a producer signed.
_SENT: ContextVar[Mapping[str, Any]] = ContextVar("voicepipe_sent_arguments")


def sent() -> dict[str, Any]:
    """The running task's arguments exactly as sent: absent ones absent, nulls kept."""
    return dict(_SENT.get())


def _run(task: Task, fn: Callable[..., Any], kwargs: dict[str, Any], *, retry_transient: bool, parks: bool) -> Any:
    from voicepipe.settings import get_settings

    settings = get_settings()
    request = task.request
    retries = int(request.retries or 0)
    redelivered = bool((request.delivery_info or {}).get("redelivered"))
    try:
        try:
            if parks and redelivered:
                _check_delivery_limit(task, kwargs, retries, settings.delivery_limit)
            result = fn(**kwargs)
            if parks and redelivered:
                from worker.deadletters import forget_deliveries

                forget_deliveries(request.id)
            return result
        except REFUSALS:
            raise
        except DeadLettered:
            raise
        except TRANSIENT_ERRORS as exc:
            if retry_transient and retries < settings.task_max_retries:
                countdown = get_exponential_backoff_interval(
                    BACKOFF_FACTOR_S, retries, BACKOFF_MAX_S, full_jitter=True)
                log.info("transient error, retrying task=%s task_id=%s retry=%d/%d countdown=%s error=%s",
                         task.name, request.id, retries + 1, settings.task_max_retries, countdown, exc)
                raise task.retry(exc=exc, countdown=countdown, max_retries=settings.task_max_retries) from exc
            if not parks:
                raise
            raise _park(task, request.id, kwargs, "retries_exhausted", exc, attempts=retries + 1) from exc
        except SoftTimeLimitExceeded as exc:
            if not parks:
                raise
            raise _park(task, request.id, kwargs, "time_limit", exc, attempts=retries + 1) from exc
        except Exception as exc:
            if not parks or isinstance(exc, Reject):
                raise
            # A bug or an unforeseen error: Celery would acknowledge and drop the message.
            raise _park(task, request.id, kwargs, "failed", exc, attempts=retries + 1) from exc
    except TRANSIENT_ERRORS as exc:
        # Parking or counting failed: the database is unreachable. Nothing may be
        # acknowledged now; the message goes back to the broker after a pause.
        if not parks:
            raise
        log.error("cannot park or count task=%s task_id=%s (%s); requeueing the message", task.name, request.id, exc)
        time.sleep(REQUEUE_PAUSE_S)
        raise Reject(f"requeued, cannot reach the database: {exc}", requeue=True) from exc


def _check_delivery_limit(task: Task, kwargs: dict[str, Any], retries: int, limit: int) -> None:
    """Count this redelivery; park the message when it was delivered more than `limit` times."""
    from worker.deadletters import count_delivery

    deliveries = count_delivery(task.request.id, retries)
    if deliveries > limit:
        exc = RuntimeError(f"delivered {deliveries} times (limit {limit}); the worker was lost each time")
        raise _park(task, task.request.id, kwargs, "delivery_limit", exc, attempts=retries + 1,
                    deliveries=deliveries)
    log.warning("redelivered message task=%s task_id=%s delivery=%d/%d", task.name, task.request.id, deliveries, limit)


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


def check_batch_size(field: str, items: Any) -> None:
    """Refuse a batch larger than VOICEPIPE_MAX_BATCH_SIZE by name (a poison guard: memory, time limit)."""
    from voicepipe.settings import get_settings

    limit = get_settings().max_batch_size
    if isinstance(items, list) and len(items) > limit:
        raise InvalidInput.field(field, f"at most {limit} items per batch (VOICEPIPE_MAX_BATCH_SIZE), got {len(items)}")
