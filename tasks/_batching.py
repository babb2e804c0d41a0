"""Single-event messages recorded in batches inside the worker: a Celery task Strategy.

Producers send one `voicepipe.events.record` (or `voicepipe.usage.record`) per event,
on the `pipeline` queue beside every other pipeline task. A worker process running
each as its own task spends its time on one transaction per event (~400 events/s).
Instead, the worker's consumer (main process) keeps the first delivery of each such
message in a buffer, unacknowledged, and hands the buffered messages to a pool process
as one job (`run_batch`): each message is validated by itself, the good ones are
written in one transaction, and only after that commit is each message acknowledged.

Everything else keeps the per-message path of tasks/_base.py, with its retries, dead
letters and delivery limit, by handing the message's own Celery request back to the
worker's normal dispatch:
- a redelivered message (the worker or its pool process died holding it), a retry
  (it carries a countdown) or a message with positional arguments never enters a
  batch, so a poison message is counted and parked alone, never with its neighbours;
- a message the batch refused (InvalidInput) runs alone and fails with its named
  error (stored like any refusal);
- when the batch's transaction fails (database down, a held lock, a bug) or the job
  hits its time limit, every message of it runs alone: retries with backoff, then
  parking, per message, exactly as before.
When the pool process running a batch dies (kill -9, OOM), every message of the batch
is rejected and requeued (task_reject_on_worker_lost); when the whole worker dies,
the broker redelivers them (RabbitMQ at once, Redis after the visibility timeout).
A redelivered message takes the per-message path, whose id derived from the task id
(tasks/_ids.py) makes a second recording a no-op: nothing is lost, nothing doubled.

Buffered messages are held beyond the worker's prefetch window (the consumer's QoS is
raised for them, as Celery does for a message with an ETA, by steps of GRANT_STEP, up to
MAX_HELD_PER_PROCESS per pool process), so the consumer keeps receiving while a batch is
written; when nothing is held, the prefetch is back to worker/config.py's one message
per process, which other pipeline tasks keep.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery import states
from celery.app.trace import LOG_SUCCESS
from celery.app.trace import logger as trace_logger
from celery.utils.functional import noop
from celery.worker.request import Request
from celery.worker.state import task_accepted, task_ready
from celery.worker.strategy import default as default_strategy
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual

log = logging.getLogger(__name__)

EVENTS_TASK = "voicepipe.events.record"
USAGE_TASK = "voicepipe.usage.record"

# A batch is written as soon as a pool process is free: under load, batches grow to
# whatever arrived while the previous one was written, up to FLUSH_EVERY messages (one
# transaction of ~20-50 ms at the batch API's rate). At low traffic a message waits at
# most VOICEPIPE_RECORD_FLUSH_MS (default 50 ms) for the next tick: its counter is
# updated well within a second (bench/recording.py measures it).
FLUSH_EVERY = 1000
# Messages held beyond the prefetch window, per task, at most (memory and redelivery
# bound if the worker dies): a batch being written per pool process plus one buffered.
MAX_HELD_PER_PROCESS = 2 * FLUSH_EVERY
# The prefetch is raised by steps, not one message at a time: on RabbitMQ each change is
# a basic.qos round trip, and one at a time kept batches at a few messages.
GRANT_STEP = 200
# A batch job's limits; past the soft limit every message of it runs alone, with its own.
BATCH_SOFT_TIME_LIMIT_S = 90
BATCH_TIME_LIMIT_S = 120
# A batch's answer for a message that must take the per-message path.
RUN_ALONE = "run-alone"

_timers: dict[str, Any] = {}


class _Consumer:
    """The worker's consumer, whose on_task_request is the batcher's and whose events it defers."""

    def __init__(self, consumer: Any, on_task_request: Any, event_dispatcher: Any) -> None:
        self._consumer = consumer
        self.on_task_request = on_task_request
        self.event_dispatcher = event_dispatcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


class _DeferredReceived:
    """The consumer's event dispatcher, keeping back each message's task-received event.

    The worker buffers task events and publishes what gathered in one loop iteration as
    one message; each iteration receives one message, so a task-received event sent
    on arrival costs a publish per message. The batcher sends the kept events when it
    dispatches the batch (one publish for all of them), or at once for a message that
    runs alone. Every other event passes through.
    """

    def __init__(self, dispatcher: Any) -> None:
        self._dispatcher = dispatcher
        self.kept: dict[str, Any] | None = None

    def send(self, type: str, **fields: Any) -> Any:
        if type == "task-received":
            self.kept = fields
            return None
        return self._dispatcher.send(type, **fields)

    def take(self) -> dict[str, Any] | None:
        kept, self.kept = self.kept, None
        return kept

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dispatcher, name)


def batched(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """The task's Strategy: Celery's default one (revocation, expiry, ETA, events), batching its dispatch."""
    events = _DeferredReceived(consumer.event_dispatcher) if consumer.event_dispatcher is not None else None
    batcher = _Batcher(task, consumer, events)
    return default_strategy(task, app, _Consumer(consumer, batcher.add, events), **kwargs)


class _Batcher:
    """Buffers the requests of one task in the worker's main process and writes them by batches."""

    def __init__(self, task: Any, consumer: Any, events: _DeferredReceived | None) -> None:
        self.task = task
        self.consumer = consumer
        self.events = events
        self.received: dict[str, dict[str, Any]] = {}  # kept task-received events, by task id
        self.alone = consumer.on_task_request  # the worker's normal dispatch to the pool
        self.pool = consumer.pool
        self.buffer: list[Request] = []
        self.in_flight = 0
        self.held = 0  # messages in the buffer or in a batch being written
        self.granted = 0  # how far this batcher has raised the consumer's prefetch
        # Strategies are rebuilt when the consumer reconnects: one timer per task.
        old = _timers.pop(task.name, None)
        if old is not None:
            old.cancel()
        self.timer: Any = None

    def slots(self) -> int:
        return max(1, int(getattr(self.pool, "num_processes", None) or 1))

    def _announce(self, req: Request) -> None:
        fields = self.received.pop(req.id, None)
        if fields is not None and self.events is not None:
            self.events._dispatcher.send("task-received", **fields)

    def _run_alone(self, req: Request) -> None:
        self._announce(req)
        self.alone(req)

    def add(self, req: Request) -> None:
        fields = self.events.take() if self.events is not None else None
        if fields is not None:
            self.received[req.id] = fields
        if req.delivery_info.get("redelivered") or req.request_dict.get("retries") or req.args:
            self._run_alone(req)
            return
        self.buffer.append(req)
        self.held += 1
        limit = MAX_HELD_PER_PROCESS * self.slots()
        if self.held > self.granted - GRANT_STEP // 2 and self.granted < limit:
            # Held messages stop counting against the prefetch window (see the docstring).
            step = min(GRANT_STEP, limit - self.granted)
            self.consumer.qos.increment_eventually(step)
            self.granted += step
        if self.timer is None:
            from voicepipe.settings import get_settings

            interval = get_settings().record_flush_ms / 1000
            self.timer = _timers[self.task.name] = self.consumer.timer.call_repeatedly(interval, self.tick)
        if len(self.buffer) >= FLUSH_EVERY and self.in_flight < self.slots():
            self.flush()

    def tick(self) -> None:
        if self.buffer and self.in_flight < self.slots():
            self.flush()

    def _release(self, n: int) -> None:
        self.held = max(0, self.held - n)
        # Back to the worker's own prefetch when nothing is held; else a step above what is.
        target = self.held + GRANT_STEP if self.held else 0
        if self.granted > target:
            self.consumer.qos.decrement_eventually(self.granted - target)
            self.granted = target

    def flush(self) -> None:
        batch, self.buffer = self.buffer[:FLUSH_EVERY], self.buffer[FLUSH_EVERY:]
        self.in_flight += 1
        started = time.monotonic()
        log_success = trace_logger.isEnabledFor(logging.INFO)
        items = [(req.id, req.kwargs, req.ignore_result) for req in batch]
        log.info("batch dispatched task=%s size=%d buffered=%d", self.task.name, len(batch), len(self.buffer))

        for req in batch:
            self._announce(req)  # all in one publish: the worker flushes its event buffer once per loop

        def accepted(pid: int, time_accepted: float) -> None:
            # Celery's Request.on_accepted without its task-started event (one per message;
            # Flower shows a batched message received, then succeeded).
            time_start = time.time() - (time.monotonic() - time_accepted)
            for req in batch:
                req.worker_pid, req.time_start = pid, time_start
                task_accepted(req)

        def done(answers: list[Any]) -> None:
            self.in_flight -= 1
            self._release(len(batch))
            runtime = time.monotonic() - started
            _acknowledge([req for req, answer in zip(batch, answers, strict=True) if answer != RUN_ALONE])
            for req, answer in zip(batch, answers, strict=True):
                if answer == RUN_ALONE:
                    self.alone(req)  # its task-received event went with the batch
                    continue
                task_ready(req, successful=True)
                req.send_event("task-succeeded", result=repr(answer), runtime=runtime)
                if log_success:  # Celery's own line for a task that succeeded, as on the per-message path
                    trace_logger.info(LOG_SUCCESS, {"id": req.id, "name": req.name, "return_value": repr(answer),
                                                    "runtime": runtime})
            self.tick()

        def failed(exc_info: ExceptionInfo) -> None:
            self.in_flight -= 1
            self._release(len(batch))
            exc = exc_info.exception
            exc = getattr(exc, "exc", exc)  # ExceptionWithTraceback
            if isinstance(exc, WorkerLostError):
                log.warning("pool process lost with a batch task=%s size=%d; requeueing it", self.task.name,
                            len(batch))
                for req in batch:
                    req.on_failure(exc_info)  # rejected and requeued: task_reject_on_worker_lost
            else:
                log.warning("batch failed task=%s size=%d error=%r; each message runs alone", self.task.name,
                            len(batch), exc)
                for req in batch:
                    self.alone(req)
            self.tick()

        self.pool.apply_async(
            run_batch,
            args=(self.task.name, items),
            accept_callback=accepted,
            callback=done,
            error_callback=failed,
            timeout_callback=noop,
            soft_timeout=BATCH_SOFT_TIME_LIMIT_S,
            timeout=BATCH_TIME_LIMIT_S,
        )


def _acknowledge(requests: list[Request]) -> None:
    """Acknowledge the requests: on Redis in one round trip, elsewhere one by one.

    kombu's Redis transport acknowledges a message with its own round trip (ZREM and
    HDEL of its unacked entry); for a batch, those commands go in one pipeline, then
    kombu's in-memory bookkeeping is done as its QoS.ack does it. A broker that fails
    here leaves the messages unacknowledged: they come back, take the per-message path
    and find their events already stored.
    """
    pending = [req for req in requests if not req.acknowledged]
    if not pending:
        return
    qos = getattr(pending[0].message.channel, "qos", None)
    if not isinstance(qos, kombu_redis.QoS) or any(req.message.channel.qos is not qos for req in pending):
        for req in pending:
            req.acknowledge()
        return
    try:
        with qos.pipe_or_acquire() as pipe:
            for req in pending:
                qos._remove_from_indices(req.message.delivery_tag, pipe)
            pipe.execute()
    except Exception:  # the broker's connection errors: Celery's own ack logs and goes on too
        log.exception("acknowledging a batch failed size=%d; its messages will come back", len(pending))
        return
    for req in pending:
        kombu_virtual.QoS.ack(qos, req.message.delivery_tag)
        req.message._state = "ACK"
        req.acknowledged = True


def run_batch(task_name: str, items: list[tuple[str, dict[str, Any], bool]]) -> list[Any]:
    """In a pool process: record the messages in one transaction; one answer per message."""
    from models.session import session_scope
    from tasks._ids import with_id
    from voicepipe.errors import InvalidInput
    from voicepipe.events.messages import record_event_messages, record_usage_messages
    from worker import app

    if task_name == EVENTS_TASK:
        key, record = "event_id", record_event_messages
    elif task_name == USAGE_TASK:
        key, record = "id", record_usage_messages
    else:  # a programming error: the strategy is only set on the two tasks above
        raise ValueError(f"{task_name} is not recorded in batches")
    # Position 0: the id a message without its own gets is the one the per-message path gives it.
    raws = [with_id(kwargs, key, task_id, 0) for task_id, kwargs, _ in items]
    try:
        with session_scope() as session:
            outcomes = record(session, raws)
    except Exception as exc:  # every message is answered by its own path below
        # Transient (database down, lock timeout), soft time limit, or a bug: nothing of
        # the batch was committed; each message's own path retries or parks it.
        log.warning("batch not recorded task=%s size=%d error=%r; each message runs alone", task_name,
                    len(items), exc)
        return [RUN_ALONE] * len(items)
    answers: list[Any] = []
    for (task_id, _, ignore_result), outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, InvalidInput):
            answers.append(RUN_ALONE)  # refused alone, with its named error stored
            continue
        answers.append(outcome)
        if outcome is False:
            log.info("duplicate event ignored event_id=%s task_id=%s", raws[len(answers) - 1].get(key), task_id)
        if not ignore_result:
            try:
                app.backend.store_result(task_id, outcome, states.SUCCESS)
            except Exception:  # the event is committed: it must not run again; a waiter times out
                log.exception("result not stored task=%s task_id=%s", task_name, task_id)
    refused = answers.count(RUN_ALONE)
    log.info("batch recorded task=%s size=%d new=%d refused=%d", task_name, len(items),
             sum(1 for a in answers if a is True), refused)
    return answers
