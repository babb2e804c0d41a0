"""Celery configuration for production; every value says why it is what it is."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kombu import Queue

from worker.routes import QUEUES, TASK_QUEUES

# The longest hard time limit of any task (voicepipe.maintenance.cleanup; a test pins it).
LONGEST_TIME_LIMIT_S = 900
# Redis redelivers an unacknowledged message after this long. It must exceed the
# longest time limit plus the longest retry backoff (60 s, worker/declare.py), or a task
# still running (or waiting for its retry) would be delivered a second time. It is
# also how long the messages of a worker host that died outright wait before another
# worker gets them (a worker process killed inside a live worker is requeued at once),
# so it is kept no longer than that bound requires.
VISIBILITY_TIMEOUT_S = LONGEST_TIME_LIMIT_S + 300
# A producer facing a dead broker must get an error in seconds, not hang.
SOCKET_TIMEOUT_S = 5.0


def is_amqp(broker_url: str) -> bool:
    return broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))


def result_backend_for(broker_url: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    if not is_amqp(broker_url):
        return broker_url
    # RabbitMQ: results go to PostgreSQL (Celery's database backend, tables
    # celery_taskmeta/celery_tasksetmeta, created by the worker): durable and readable by
    # any process, unlike `rpc://`, whose results only the sending process can read and
    # which die with a broker restart. Redis is not assumed to exist beside RabbitMQ.
    from models.session import database_url

    return "db+" + database_url()


def amqp_options(broker_url: str) -> dict[str, Any]:
    """RabbitMQ only: publisher confirms and durable, persistent delivery."""
    if not is_amqp(broker_url):
        return {}
    return {
        # A send returns only once RabbitMQ has taken the message (persisted, for a
        # durable queue): a producer whose send returned can forget the message.
        "broker_transport_options": {"confirm_publish": True},
        # Durable classic queues, persistent messages (Celery's defaults, pinned here).
        # Not quorum queues: retries wait with `countdown`, which on a quorum queue needs
        # Celery's native delayed delivery (topic exchanges and 28 extra queues); on one
        # node a durable classic queue keeps what a quorum queue would.
        "task_default_delivery_mode": "persistent",
        # The result database may restart like any PostgreSQL: verify pooled connections.
        # (Expired results are deleted by celery.backend_cleanup, which beat adds daily
        # for a backend without native expiry.)
        "database_engine_options": {"pool_pre_ping": True},
    }


def beat_schedule(interval_seconds: int | None = None) -> dict[str, dict[str, Any]]:
    """The contract's schedule; with an interval (dev stack, tests) every entry fires that often.

    The wrappers compute their windows at execution, so firing them more often only
    makes them notice due windows sooner; it never changes what a window contains.
    """
    from beat_schedule import BEAT_SCHEDULE

    if not interval_seconds:
        return BEAT_SCHEDULE
    return {
        name: {**entry, "schedule": timedelta(seconds=interval_seconds),
               "options": {**entry["options"], "expires": max(1, interval_seconds * 5)}}
        for name, entry in BEAT_SCHEDULE.items()
    }


def celery_config(
    broker_url: str, result_backend: str | None = None, beat_interval_seconds: int | None = None
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_url": broker_url,
        "result_backend": result_backend_for(broker_url, result_backend),
        # UTC everywhere: windows are UTC and beat must not follow a local DST change.
        "timezone": "UTC",
        "enable_utc": True,
        # JSON only: a pickled message could run code on the worker; it is refused.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Three queues so aggregation, pipeline work and operator retries scale and
        # stall independently; every public task has a route (worker/routes.py).
        "task_queues": [Queue(name, routing_key=name) for name in QUEUES],
        "task_default_queue": "pipeline",
        "task_routes": {name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        # Late acks: a message is acknowledged after the task ran, so a worker that
        # dies mid-task (kill -9, OOM, host loss) leaves it to be redelivered. Safe
        # because every task is idempotent (upserts, row locks, request ids).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # With late acks, prefetching more than one message would hold messages a
        # busy process cannot start; one at a time keeps them available to others.
        "worker_prefetch_multiplier": 1,
        # If the broker connection drops, unacknowledged tasks are redelivered to
        # someone else; cancel the local copies instead of running them twice.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Defaults for any task that does not set its own (worker/declare.py does).
        "task_time_limit": 300,
        "task_soft_time_limit": 270,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "socket_timeout": SOCKET_TIMEOUT_S,
            "socket_connect_timeout": SOCKET_TIMEOUT_S,
            # No blind re-send after a read timeout: it could queue a message twice, and
            # it made a producer facing a wedged broker wait 4 x 5 s instead of 5 s
            # (tests/faults/test_dead_broker.py). Publishing has its own retry policy.
            "retry_on_timeout": False,
            "health_check_interval": 25,
        },
        "result_backend_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            # A producer that keeps results subscribes to the result store before it
            # publishes; Celery's default (20 reconnects, 1 s apart) made a dead Redis
            # cost it ~20 s. Bounded like the publish policy (tests/faults/test_dead_broker.py).
            "retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        },
        "redis_socket_timeout": SOCKET_TIMEOUT_S,
        "redis_socket_connect_timeout": SOCKET_TIMEOUT_S,
        "redis_retry_on_timeout": True,
        "broker_connection_timeout": SOCKET_TIMEOUT_S,
        # Workers keep reconnecting at start (the broker may come up after them).
        "broker_connection_retry_on_startup": True,
        # Publishing retries a few times within ~2 s, then raises to the producer.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        # Results are read by `voicepipe retry` and producers that wait; a day is plenty.
        "result_expires": 86_400,
        # Stored results keep the outcome or the named error only, never the task's
        # arguments: they hold personal data (upsert_user's email) and stay a day. Flower
        # shows arguments from task events, which are not stored.
        "result_extended": False,
        # Most tasks ignore their return value, but a refusal (InvalidInput, ...) is
        # stored so a producer holding the AsyncResult can read the named error.
        "task_store_errors_even_if_ignored": True,
        # Task events, sent events and started state: Flower sees every task from the
        # moment it is queued, with its arguments. Retry tasks store no STARTED state
        # (tasks/retry.py): Flower still shows them started, from the task events.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        # Recycle worker processes now and then so a slow leak cannot grow forever.
        "worker_max_tasks_per_child": 1000,
        "beat_schedule": beat_schedule(beat_interval_seconds),
        # Celery's persistent scheduler plus a heartbeat file for `voicepipe health beat`.
        "beat_scheduler": "voicepipe.observability.health:HeartbeatScheduler",
        # A poison guard: a pool process that grew past 512 MB (a huge message, a leak)
        # is replaced after its current task, before the kernel's OOM killer takes the
        # whole worker. A message that kills its process outright is redelivered and
        # parked after VOICEPIPE_DELIVERY_LIMIT deliveries (worker/declare.py).
        "worker_max_memory_per_child": 512_000,  # KiB
        # Celery's consumer, parking an undecodable message as a dead letter (worker/consumer.py).
        "worker_consumer": "worker.consumer:Consumer",
    }
    config.update(amqp_options(broker_url))
    return config
