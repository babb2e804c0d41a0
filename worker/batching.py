"""Single-event messages recorded in batches inside the worker: a Celery task Strategy.

Producers send one `voicepipe.events.record` (or `voicepipe.usage.record`) per event,
on the `pipeline` queue beside every other pipeline task. A worker process running
each as its own task spends its time on one transaction per event (~400 events/s).
Instead, the worker's consumer (main process) keeps the first delivery of each such
message in a buffer, unacknowledged, and hands the buffered messages to a pool process
as one job (`run_batch`): each message is validated by itself, the good ones are
written in one transaction, and only after that commit is each message acknowledged.

Everything else keeps the per-message path of worker/declare.py, with its retries, dead
letters and delivery limit, by handing the message's own Celery request back to the
worker's normal dispatch:
- a redelivered message (the worker or its pool process died holding it), a retry
  (it carries a countdown) or a message with positional arguments never enters a
  batch, so a poison message is counted and parked alone, never with its neighbours;
  except, once, a message that was in a batch (waiting or being written) when the
  worker's broker connection was lost (worker/consumer.py): it did not fail;
- a message the batch refused (InvalidInput) runs alone and fails with its named
  error (stored like any refusal);
- when the batch's transaction fails (database down, a held lock, a bug) or the job
  hits its time limit, every message of it runs alone: retries with backoff, then
  parking, per message, exactly as before.
When the pool process running a batch dies (kill -9, OOM), every message of the batch
is rejected and requeued (task_reject_on_worker_lost); when the whole worker dies,
the broker redelivers them (RabbitMQ at once, Redis after the visibility timeout).
A redelivered message takes the per-message path, whose id derived from the task id
(worker/ids.py) makes a second recording a no-op: nothing is lost, nothing doubled.

Only a worker that consumes the `events` queue alone batches (worker/routes.py routes the
two tasks there; `celery worker -Q events`). Buffered messages are held beyond the
worker's prefetch window (the consumer's QoS is raised for them, as Celery does for a
message with an ETA, by steps of GRANT_STEP, up to MAX_HELD_PER_PROCESS per pool
process); since that worker takes nothing else, the raise cannot make it reserve other
tasks. A worker of any other queue (one still receiving these tasks on `pipeline` from
producers of earlier releases, or a worker of several queues) runs them one by one.

Held messages are handed back, never left to the visibility timeout:
- at a warm shutdown (SIGTERM, a deploy), a batch being written finishes and is
  acknowledged; every message still buffered is published again unchanged (same task
  id, headers and body) and then acknowledged, so the next worker batches it as a first
  delivery and no delivery is counted (HandBack, a consumer bootstep);
- after a broker connection loss, the consumer's new connection restores every message
  the old one held (worker/consumer.py; RabbitMQ requeues them itself), and those that
  were in a batch are batched again: those whose batch had committed are found already
  stored (their ids come from their task ids).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery import bootsteps, states
from celery.app.trace import LOG_SUCCESS
from celery.app.trace import logger as trace_logger
from celery.utils.functional import noop
from celery.worker.request import Request
from celery.worker.state import task_accepted, task_ready
from celery.worker.strategy import default as default_strategy
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual

from worker.routes import EVENTS_QUEUE

log = logging.getLogger(__name__)

EVENTS_TASK = "voicepipe.events.record"
USAGE_TASK = "voicepipe.usage.record"

# The buffer is written at each tick (every VOICEPIPE_RECORD_FLUSH_MS, default 50 ms)
# that finds a pool process free, or at once when FLUSH_EVERY messages (or BATCH_BYTES)
# are buffered and a process is free; a tick that finds every process busy leaves the
# buffer to the first one freed. So a message waits about one tick (and the batches
# before it): its counter is updated well within a second (bench/recording.py measures
# it). Under load a batch is a tick's worth of messages, not whatever arrived during the
# last write: flushed whenever a process was free, a worker's batches were 6-16
# messages, and their transactions took the CPU its main process needed
# (docs/benchmarks.md).
FLUSH_EVERY = 1000
# Messages held beyond the prefetch window, per task, at most (memory and redelivery
# bound if the worker dies): a batch being written per pool process plus one buffered.
MAX_HELD_PER_PROCESS = 2 * FLUSH_EVERY
# And by bytes (message bodies), whatever producers send: past this no more prefetch is
# granted, and a batch carries at most BATCH_BYTES to its pool process.
MAX_HELD_BYTES_PER_PROCESS = 64 * 2**20
BATCH_BYTES = 16 * 2**20
# The prefetch is raised by steps, not one message at a time: on RabbitMQ each change is
# a basic.qos round trip, and one at a time kept batches at a few messages.
GRANT_STEP = 200
# A batch job's limits; past the soft limit every message of it runs alone, with its own.
BATCH_SOFT_TIME_LIMIT_S = 90
BATCH_TIME_LIMIT_S = 120
# A batch's answer for a message that must take the per-message path.
RUN_ALONE = "run-alone"
# The message properties a hand-back publishes again (kombu sets the rest).
_REPUBLISHED = ("correlation_id", "reply_to", "priority", "delivery_mode", "expiration")

# The live batcher of each task: strategies are rebuilt when the consumer reconnects.
_batchers: dict[str, _Batcher] = {}


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
        if type == "task-received" and not fields.get("eta"):  # a countdown's message runs alone, later
            self.kept = fields
            return None
        return self._dispatcher.send(type, **fields)

    def take(self) -> dict[str, Any] | None:
        kept, self.kept = self.kept, None
        return kept

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dispatcher, name)


def dedicated(app: Any) -> bool:
    """Whether this worker consumes the `events` queue and nothing else."""
    return set(app.amqp.queues.consume_from) == {EVENTS_QUEUE}


def batched(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """The task's Strategy: Celery's default one (revocation, expiry, ETA, events), batching its dispatch."""
    if not dedicated(app):
        return default_strategy(task, app, consumer, **kwargs)
    events = _DeferredReceived(consumer.event_dispatcher) if consumer.event_dispatcher is not None else None
    batcher = _Batcher(task, consumer, events)
    old, _batchers[task.name] = _batchers.get(task.name), batcher
    if old is not None:
        old.retire()
    return default_strategy(task, app, _Consumer(consumer, batcher.add, events), **kwargs)


def _size(req: Request) -> int:
    return len(req.message.body or b"")


def requests_batched() -> list[Request]:
    """The messages waiting in a batcher's buffer or being written by one of its batches."""
    return [req for batcher in _batchers.values() for req in (*batcher.buffer, *batcher.in_batch)]


def requests_in_batches() -> list[Request]:
    """The messages of every batch being written (a batch is one pool job, not a task each)."""
    return [req for batcher in _batchers.values() for req in batcher.in_batch]


class HandBack(bootsteps.StartStopStep):
    """At a warm shutdown, hands the buffered messages back to the broker before the consumer stops."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        restore = getattr(c, "restore_lost", None)  # worker/consumer.py's, after a reconnect
        if restore is not None:
            restore()

    def stop(self, c: Any) -> None:
        # Also called when the consumer restarts after a connection loss: that connection
        # is gone, and the next one restores what it held (Consumer.restore_lost).
        if c.blueprint.state != bootsteps.CLOSE or not any(b.buffer for b in _batchers.values()):
            return
        if c.task_consumer is not None:
            # Stop taking messages first. On Redis a BRPOP sent before the cancel may still
            # be waiting (the event loop has stopped): it would pop a handed-back message,
            # which kombu then puts back flagged as redelivered. It expires unanswered
            # within brpop_timeout (one second), so the hand-back waits that long.
            c.task_consumer.cancel()
            wait = getattr(c.task_consumer.channel, "brpop_timeout", None)
            if wait:
                time.sleep(float(wait) + 0.2)
        for batcher in _batchers.values():
            batcher.hand_back()


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
        self.held_bytes = 0  # their bodies' bytes
        self.granted = 0  # how far this batcher has raised the consumer's prefetch
        self.timer: Any = None
        self.closed = False  # handed back or replaced: nothing more is batched here
        self.connection = consumer.connection  # the messages' connection; the consumer's changes on a loss
        self.in_batch: set[Request] = set()  # messages of the batches being written
        self.due = False  # a tick found every process busy: the next free one takes the buffer

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
        if req.request_dict.get("retries") or req.args or (
                req.delivery_info.get("redelivered") and not self._returned(req)):
            self._run_alone(req)
            return
        self.buffer.append(req)
        self.held += 1
        self.held_bytes += _size(req)
        limit = MAX_HELD_PER_PROCESS * self.slots()
        if (self.held > self.granted - GRANT_STEP // 2 and self.granted < limit
                and self.held_bytes < MAX_HELD_BYTES_PER_PROCESS * self.slots()):
            # Held messages stop counting against the prefetch window (see the docstring).
            step = min(GRANT_STEP, limit - self.granted)
            self.consumer.qos.increment_eventually(step)
            self.granted += step
        if self.timer is None:
            from voicepipe.settings import get_settings

            interval = get_settings().record_flush_ms / 1000
            self.timer = self.consumer.timer.call_repeatedly(interval, self.tick)
        if (len(self.buffer) >= FLUSH_EVERY or self.held_bytes >= BATCH_BYTES) and self.in_flight < self.slots():
            self.flush()

    def _returned(self, req: Request) -> bool:
        """Whether this message came back from a connection loss (worker/consumer.py); true once."""
        returned = getattr(self.consumer, "returned_ids", None)
        if not returned or req.id not in returned:
            return False
        del returned[req.id]  # should it come back again (its pool process died with it), it runs alone
        return True

    def tick(self) -> None:
        if not self.buffer or self.closed:
            return
        if self.in_flight >= self.slots():
            self.due = True
        while self.buffer and self.in_flight < self.slots():  # more than one batch only past a full one
            self.flush()

    def _after_batch(self) -> None:
        # The buffer waits for the next tick unless one found every process busy, or it holds FLUSH_EVERY.
        if self.due or len(self.buffer) >= FLUSH_EVERY:
            self.due = False
            self.tick()

    def _stop(self) -> list[Request]:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        buffered, self.buffer = self.buffer, []
        self.held -= len(buffered)
        self.held_bytes -= sum(_size(req) for req in buffered)
        return buffered

    def hand_back(self) -> None:
        """Warm shutdown: publish each buffered message again, unchanged, then acknowledge it."""
        buffered = self._stop()
        if not buffered:
            return
        app = self.task.app
        sent: list[Request] = []
        try:
            with app.producer_or_acquire() as producer:
                for req in buffered:
                    message = req.message
                    info = message.delivery_info
                    producer.publish(
                        message.body, exchange=info.get("exchange") or "", routing_key=info.get("routing_key"),
                        headers=message.headers, content_type=message.content_type,
                        content_encoding=message.content_encoding,
                        **{k: v for k, v in message.properties.items() if k in _REPUBLISHED},
                    )
                    sent.append(req)
        except Exception:  # the rest stay unacknowledged: the broker gives them back (redelivered)
            log.exception("handing back buffered messages failed after %d of %d", len(sent), len(buffered))
        _acknowledge(sent)
        log.info("handed back task=%s size=%d at shutdown", self.task.name, len(sent))

    def retire(self) -> None:
        """The consumer reconnected: this batcher's messages are restored by it (worker/consumer.py)."""
        self._stop()

    def _lost(self, batch: list[Request]) -> bool:
        """Whether the batch's messages came over a connection the consumer has lost since."""
        if self.consumer.connection is self.connection:
            return False
        for req in batch:
            task_ready(req)  # restored on the new connection, like every message the old one held
        return True

    def _release(self, requests: list[Request]) -> None:
        self.held = max(0, self.held - len(requests))
        self.held_bytes = max(0, self.held_bytes - sum(_size(req) for req in requests))
        if self.consumer.connection is not self.connection:
            return  # the prefetch is a new connection's now, not this batcher's to lower
        # Back to the worker's own prefetch when nothing is held; else a step above what is.
        target = self.held + GRANT_STEP if self.held else 0
        if self.granted > target:
            self.consumer.qos.decrement_eventually(self.granted - target)
            self.granted = target

    def flush(self) -> None:
        n, size = 0, 0
        while n < min(FLUSH_EVERY, len(self.buffer)) and (n == 0 or size + _size(self.buffer[n]) <= BATCH_BYTES):
            size += _size(self.buffer[n])
            n += 1
        batch, self.buffer = self.buffer[:n], self.buffer[n:]
        # Revoked or expired while buffered: Celery's own answer (acknowledged, task-revoked event).
        kept = [req for req in batch if not req.revoked()]
        if len(kept) < len(batch):
            revoked = [req for req in batch if req not in kept]
            for req in revoked:
                self.received.pop(req.id, None)
            self._release(revoked)
            batch = kept
            if not batch:
                return
        self.in_flight += 1
        self.in_batch.update(batch)
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
            self.in_batch.difference_update(batch)
            self._release(batch)
            if self._lost(batch):
                return
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
            self._after_batch()

        def failed(exc_info: ExceptionInfo) -> None:
            self.in_flight -= 1
            self.in_batch.difference_update(batch)
            self._release(batch)
            if self._lost(batch):  # also a batch whose process Celery ended at the connection loss
                return
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
            self._after_batch()

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
    """Acknowledge the requests: on Redis in one round trip (acknowledge_on_redis), elsewhere one by one."""
    pending = [req for req in requests if not req.acknowledged]
    if not pending:
        return
    messages = [req.message for req in pending]
    qos = redis_qos(messages)
    if qos is None:
        for req in pending:
            req.acknowledge()
        return
    if acknowledge_on_redis(qos, messages):
        for req in pending:
            req.acknowledged = True


def redis_qos(messages: list[Any]) -> kombu_redis.QoS | None:
    """The kombu Redis QoS all the messages were delivered through, if there is one."""
    qos = getattr(messages[0].channel, "qos", None)
    if not isinstance(qos, kombu_redis.QoS) or any(m.channel.qos is not qos for m in messages):
        return None
    return qos


def acknowledge_on_redis(qos: kombu_redis.QoS, messages: list[Any]) -> bool:
    """Acknowledge kombu messages of one Redis channel in one round trip; False if the broker failed.

    kombu's Redis transport acknowledges a message with its own round trip (ZREM and
    HDEL of its unacked entry); here those commands go in one pipeline, then kombu's
    in-memory bookkeeping is done as its QoS.ack does it. A broker that fails here
    leaves the messages unacknowledged: they come back, take the per-message path and
    find their events already stored.
    """
    try:
        with qos.pipe_or_acquire() as pipe:
            for message in messages:
                qos._remove_from_indices(message.delivery_tag, pipe)
            pipe.execute()
    except Exception:  # the broker's connection errors: Celery's own ack logs and goes on too
        log.exception("acknowledging a batch failed size=%d; its messages will come back", len(messages))
        return False
    for message in messages:
        kombu_virtual.QoS.ack(qos, message.delivery_tag)
        message._state = "ACK"
    return True


def run_batch(task_name: str, items: list[tuple[str, dict[str, Any], bool]]) -> list[Any]:
    """In a pool process: record the messages in one transaction; one answer per message."""
    from models.session import session_scope, soft_time_limit
    from voicepipe.errors import InvalidInput
    from voicepipe.events.messages import record_event_messages, record_usage_messages
    from worker import app
    from worker.ids import with_id

    if task_name == EVENTS_TASK:
        key, record = "event_id", record_event_messages
    elif task_name == USAGE_TASK:
        key, record = "id", record_usage_messages
    else:  # a programming error: the strategy is only set on the two tasks above
        raise ValueError(f"{task_name} is not recorded in batches")
    # Position 0: the id a message without its own gets is the one the per-message path gives it.
    raws = [with_id(kwargs, key, task_id, 0) for task_id, kwargs, _ in items]
    try:
        with soft_time_limit(BATCH_SOFT_TIME_LIMIT_S), session_scope() as session:
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
