"""Queue depths through kombu, on Redis and on RabbitMQ (TEST_BROKER_URL=amqp://...)."""

from __future__ import annotations

import time

from kombu import Queue

from tests.support.helpers import is_amqp, producer, redis_client
from voicepipe.observability.queues import QUEUE_NAMES, queue_depths
from worker.routes import QUEUES


def test_the_status_queues_are_the_workers_queues() -> None:
    assert QUEUE_NAMES == QUEUES


def test_depths_count_every_waiting_message_including_prioritised_ones(broker_url: str) -> None:
    app = producer(broker_url)
    app.conf.task_queues = [Queue(name, routing_key=name) for name in QUEUES]
    sent = {"metrics": 2, "pipeline": 5, "retry": 1, "events": 4}
    try:
        for queue, count in sent.items():
            for i in range(count):
                # Three of pipeline's messages carry a priority: on Redis kombu keeps them in
                # their own list ("pipeline\x06\x169"), which a depth must count too.
                priority = 9 if queue == "pipeline" and i < 3 else None
                app.send_task("voicepipe.maintenance.cleanup", queue=queue, priority=priority)
    finally:
        app.close()
    if not is_amqp(broker_url):
        client = redis_client(broker_url)
        assert client.llen("pipeline\x06\x169") == 3 and client.llen("pipeline") == 2
    assert queue_depths(broker_url) == sent


def test_an_unreachable_broker_gives_unknown_depths_within_seconds(broker_url: str) -> None:
    dead = "amqp://guest:guest@127.0.0.1:1//" if is_amqp(broker_url) else "redis://127.0.0.1:1/0"
    started = time.monotonic()
    assert queue_depths(dead) == dict.fromkeys(QUEUES)
    assert time.monotonic() - started < 15
