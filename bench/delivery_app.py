"""`celery -A bench.delivery_app worker -Q events`: the broker's delivery alone, the ceiling for one event per task.

A baseline for bench/recording.py: `bench.delivered` takes the same single-event
messages, and its Strategy decodes each one and acknowledges them by batches at the same
tick as worker/batching.py (one pipeline on Redis), with nothing sent to a pool process
and nothing written: what the transport costs one worker's main process per message (on
Redis, kombu's BRPOP and the MULTI/EXEC that files the message as unacknowledged, then
its share of the batch's acknowledgement). No strategy that records the events can go
faster, so ours against it says how much of that ceiling batching leaves.
Benchmark-only; on Redis only (the bench counts completions there).
"""

from __future__ import annotations

from typing import Any

from voicepipe.settings import get_settings
from worker import app
from worker.batching import FLUSH_EVERY, MAX_HELD_PER_PROCESS, acknowledge_on_redis, redis_qos

DELIVERED_TASK = "bench.delivered"

# Per pool process (the bench runs -c 1): as many messages held as worker/batching.py may hold.
app.conf.worker_prefetch_multiplier = MAX_HELD_PER_PROCESS


def acknowledging(task: Any, app: Any, consumer: Any, **_kwargs: Any) -> Any:
    """The Strategy: decode, hold, acknowledge the held messages at each tick or FLUSH_EVERY."""
    held: list[Any] = []
    timer: list[Any] = []

    def flush() -> None:
        if not held:
            return
        batch = held[:]
        del held[:]
        qos = redis_qos(batch)
        if qos is None:
            raise RuntimeError("bench.delivery_app runs on Redis only, on one connection")
        if not acknowledge_on_redis(qos, batch):
            held[:0] = batch  # the broker failed (logged): tried again at the next tick

    def handler(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_kw: Any) -> None:
        message.decode()
        held.append(message)
        if not timer:
            timer.append(consumer.timer.call_repeatedly(get_settings().record_flush_ms / 1000, flush))
        if len(held) >= FLUSH_EVERY:
            flush()

    return handler


@app.task(name=DELIVERED_TASK, ignore_result=True, Strategy="bench.delivery_app:acknowledging")
def delivered(**_event: Any) -> None:
    """Never run: the Strategy acknowledges the message without handing it to the pool."""


__all__ = ["app", "delivered"]
