"""Which held messages a connection loss lets into a batch again (worker/consumer.py, worker/batching.py).

The fault tests (tests/faults/test_held_events.py) lose a real broker connection with every
held message in a batch; these pin the choice among messages in other states, which a real
loss cannot be timed to catch: the consumer's state at the loss is set up by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.state import active_requests, reserved_requests
from kombu.transport import redis as kombu_redis

from worker import batching, consumer
from worker.batching import _Batcher


class Req:
    """A request as the consumer and the batcher read it (hashed by identity, as Celery's)."""

    def __init__(self, task_id: str, channel: object, redelivered: bool = False, retries: int = 0) -> None:
        self.id = task_id
        self.acknowledged = False
        self.message = SimpleNamespace(channel=channel, delivery_tag=f"tag-{task_id}", body=b"{}")
        self.delivery_info = {"redelivered": redelivered}
        self.request_dict = {"retries": retries}
        self.args: list[Any] = []


class Timer:
    def call_repeatedly(self, interval: float, fn: Any) -> object:
        return SimpleNamespace(cancel=lambda: None)


class Qos:
    def increment_eventually(self, n: int) -> None:
        pass


def fake_consumer(channel: object) -> consumer.Consumer:
    c = consumer.Consumer.__new__(consumer.Consumer)  # its state only: no worker behind it
    c.lost_tags, c.lost_ids, c.returned_ids = [], [], {}
    c.task_consumer = SimpleNamespace(channel=channel)
    return c


def batcher(alone: list[Req]) -> _Batcher:
    worker_consumer = SimpleNamespace(on_task_request=alone.append, pool=SimpleNamespace(num_processes=1),
                                      connection=object(), qos=Qos(), timer=Timer(), returned_ids={})
    return _Batcher(SimpleNamespace(name=batching.EVENTS_TASK), worker_consumer, None)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """On the lost channel: one buffered, one in a batch, one running alone; one of an older channel."""
    monkeypatch.setattr(CeleryConsumer, "on_connection_error_after_connected", lambda self, exc: None)
    channel = SimpleNamespace(qos=None)
    b = batcher([])
    reqs = {"buffered": Req("buffered", channel), "in_batch": Req("in-batch", channel),
            "alone": Req("alone", channel, redelivered=True), "old": Req("old", object())}
    b.buffer.append(reqs["buffered"])
    b.in_batch.add(reqs["in_batch"])
    b.buffer.append(reqs["old"])
    monkeypatch.setitem(batching._batchers, batching.EVENTS_TASK, b)
    for name in ("buffered", "old"):
        reserved_requests.add(reqs[name])
    for name in ("in_batch", "alone"):
        active_requests.add(reqs[name])
    yield {"channel": channel, **reqs}
    for req in reqs.values():
        reserved_requests.discard(req)
        active_requests.discard(req)


def test_only_the_batched_messages_of_the_lost_channel_are_kept_and_losses_add_up(held: dict[str, Any]) -> None:
    c = fake_consumer(held["channel"])
    c.on_connection_error_after_connected(ConnectionError())
    assert set(c.returned_ids) == {"buffered", "in-batch"}  # not the one running alone, nor another channel's
    c.keep_returned(["next-loss"])
    assert set(c.returned_ids) == {"buffered", "in-batch", "next-loss"}


def test_on_redis_every_held_message_is_restored_and_only_the_batched_ones_kept(held: dict[str, Any]) -> None:
    qos = kombu_redis.QoS.__new__(kombu_redis.QoS)
    held["channel"].qos = qos
    c = fake_consumer(held["channel"])
    c.on_connection_error_after_connected(ConnectionError())
    assert sorted(c.lost_tags) == ["tag-alone", "tag-buffered", "tag-in-batch"]
    assert c.returned_ids == {}  # kept only once restore_lost puts them back
    restored: list[str] = []
    c.connection = SimpleNamespace(default_channel=SimpleNamespace(
        qos=SimpleNamespace(restore_by_tag=lambda tag, leftmost: restored.append(tag))))
    c.restore_lost()
    assert sorted(restored) == ["tag-alone", "tag-buffered", "tag-in-batch"]
    assert set(c.returned_ids) == {"buffered", "in-batch"}


def test_the_oldest_ids_are_dropped_past_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer, "RETURNED_IDS_KEPT", 3)
    c = fake_consumer(object())
    c.keep_returned(["a", "b"])
    c.keep_returned(["c", "d"])
    assert list(c.returned_ids) == ["b", "c", "d"]


def test_a_returned_message_is_batched_once_and_a_retry_keeps_its_id() -> None:
    alone: list[Req] = []
    b = batcher(alone)
    b.consumer.returned_ids.update(dict.fromkeys(["back", "retry"]))
    channel = object()
    first, again = Req("back", channel, redelivered=True), Req("back", channel, redelivered=True)
    retry = Req("retry", channel, redelivered=True, retries=1)
    b.add(first)
    b.add(again)  # came back a second time (its pool process died with it)
    b.add(retry)
    assert b.buffer == [first]
    assert alone == [again, retry]
    assert list(b.consumer.returned_ids) == ["retry"]  # a retry runs alone without spending an id
