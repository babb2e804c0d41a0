"""The worker's Redis transport (worker/redis_transport.py) against a real Redis.

It takes many waiting messages per round trip; each must be recorded as unacked exactly
as kombu's own QoS.append records it, never beyond the prefetch, and come back to its
queue when the consumer goes away without acknowledging it.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue, transport

from tests.helpers import redis_client
from worker import redis_transport

QUEUE = "vp-transport-test"


def _publish(url: str, n: int) -> None:
    with Connection(url) as conn:  # kombu's own transport, as producers publish
        producer = Producer(conn.channel())
        for i in range(n):
            producer.publish({"i": i, "x": 0.1 + i / 3}, routing_key=QUEUE, exchange=Exchange(QUEUE, "direct"),
                             declare=[Queue(QUEUE, Exchange(QUEUE, "direct"), routing_key=QUEUE)],
                             serializer="json")


def test_messages_are_taken_many_at_a_time_within_the_prefetch_and_held_as_kombu_holds_them(
    broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _publish(broker_url, 50)
    # As a worker does at start (worker/signals.py): the `redis` alias, which redis+socket:// URLs
    # also resolve through, names this transport.
    for alias in ("redis", "rediss"):
        monkeypatch.setitem(transport.TRANSPORT_ALIASES, alias, "worker.redis_transport:Transport")
        monkeypatch.setitem(transport._transport_cache, alias, redis_transport.Transport)  # undone after
    r = redis_client(broker_url)
    assert r.llen(QUEUE) == 50
    got: list[Any] = []
    with Connection(broker_url) as conn:
        assert conn.transport_cls == "redis" and isinstance(conn.transport, redis_transport.Transport)
        channel = conn.channel()
        consumer = Consumer(channel, [Queue(QUEUE, Exchange(QUEUE, "direct"), routing_key=QUEUE)],
                            callbacks=[lambda body, message: got.append((body, message))], accept=["json"])
        consumer.qos(prefetch_count=20)
        with consumer:
            for _ in range(3):  # one BRPOP each: its message and as many more as the prefetch leaves
                conn.drain_events(timeout=5)
                if len(got) >= 20:
                    break
        # Never beyond the prefetch, and more than one per BRPOP.
        assert len(got) == 20
        assert [body["i"] for body, _ in got] == list(range(20))
        assert r.llen(QUEUE) == 30
        # Held exactly as kombu's QoS.append holds a message: [payload, exchange, routing key]
        # under its delivery tag, the tag in the unacked index.
        held = {k.decode(): json.loads(v) for k, v in r.hgetall("unacked").items()}
        assert set(held) == {m.delivery_tag for _, m in got}
        for _, message in got:
            payload, exchange, routing_key = held[message.delivery_tag]
            assert payload == message._raw
            assert (exchange, routing_key) == (message.delivery_info["exchange"], message.delivery_info["routing_key"])
        assert {k.decode() for k in r.zrange("unacked_index", 0, -1)} == set(held)
        # Acknowledging two removes exactly those two.
        for _, message in got[:2]:
            message.ack()
        assert {k.decode() for k in r.hkeys("unacked")} == {m.delivery_tag for _, m in got[2:]}
    # Closed without acknowledging the rest: kombu restores them to the queue, nothing lost.
    assert r.hlen("unacked") == 0
    assert r.llen(QUEUE) == 48
    assert sorted(_body_i(item) for item in r.lrange(QUEUE, 0, -1)) == list(range(2, 50))


def _body_i(item: bytes) -> int:
    """The `i` of a queued message (kombu's JSON envelope; the body is base64 or plain JSON)."""
    envelope = json.loads(item)
    body = envelope["body"]
    if envelope["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body).decode()
    return int(json.loads(body)["i"])
