"""One event per message, as producers send them, recorded by a real worker in batches.

The messages are queued before the worker starts, so it finds many at once and must
batch them; the worker's log says how big each batch was.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import AiUsageLog, EventCounter, PipelineEvent
from tests.support.faults import redis_lengths
from tests.support.helpers import RECENT, Proc, is_amqp, wait_for

HOUR = RECENT + timedelta(hours=7)
BATCH_LINE = re.compile(r"batch recorded task=(\S+) size=(\d+) new=(\d+) refused=(\d+)")


def rows(session: Session, model: type) -> int:
    session.rollback()  # see the worker's commits
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def batches(log: str, task: str) -> list[int]:
    return [int(m.group(2)) for m in BATCH_LINE.finditer(log) if m.group(1) == task]


def event(n: int, **extra: Any) -> dict[str, Any]:
    types = ("artifact_received", "artifact_completed", "artifact_failed")
    body: dict[str, Any] = {"event_type": types[n % 3], "organization_id": f"org-{n % 4}",
                            "occurred_at": (HOUR + timedelta(seconds=n)).isoformat()}
    if body["event_type"] == "artifact_completed":
        body["duration_ms"] = 1000 + n
    return {**body, **extra}


def test_single_event_messages_are_recorded_in_batches_each_answered_alone(
    start_worker: Callable[..., Proc], client: Celery, session: Session, broker_url: str
) -> None:
    n = 600
    bodies = [event(i, event_id=str(uuid.uuid4())) if i % 2 else event(i) for i in range(n)]
    sent = [client.send_task("voicepipe.events.record", kwargs=b, queue="events", ignore_result=False)
            for b in bodies]
    # Two messages of one event, and two bad messages among the good ones.
    twin = event(10_000, event_id=str(uuid.uuid4()))
    twins = [client.send_task("voicepipe.events.record", kwargs=twin, queue="events", ignore_result=False)
             for _ in range(2)]
    bad = [
        client.send_task("voicepipe.events.record", kwargs={"event_type": "artifact_exploded"}, queue="events"),
        client.send_task("voicepipe.events.record", kwargs=event(3, duration_ms=-5), queue="events"),
    ]
    # Ticks of 1 s: kombu's transport takes one message per round trip, and on a slow broker
    # (the embedded one) 50 ms ticks can flush before 50 have arrived.
    worker = start_worker(queues="events", VOICEPIPE_RECORD_FLUSH_MS="1000")

    assert [r.get(timeout=60) for r in sent] == [True] * n
    assert sorted(r.get(timeout=30) for r in twins) == [False, True]
    for result, field in zip(bad, ("event_type", "duration_ms"), strict=True):
        with pytest.raises(Exception) as excinfo:
            result.get(timeout=30)
        assert type(excinfo.value).__name__ == "InvalidInput"
        assert field in str(excinfo.value)

    assert rows(session, PipelineEvent) == n + 1
    explicit = {b["event_id"] for b in bodies if "event_id" in b} | {twin["event_id"]}
    stored = {str(i) for i in session.scalars(select(PipelineEvent.id))}
    assert explicit <= stored and len(stored - explicit) == n // 2  # one derived id per message without one
    # Counters from the sent bodies, counted here.
    expected = Counter((b["organization_id"], b["event_type"]) for b in [*bodies, twin])
    got: Counter[tuple[str | None, str]] = Counter()
    for c in session.scalars(select(EventCounter)):
        for t in ("artifact_received", "artifact_completed", "artifact_failed"):
            got[(c.organization_id, t)] += getattr(c, f"n_{t}")
    assert +got == expected
    assert sum(c.end_to_end_latency_sum for c in session.scalars(select(EventCounter))) == sum(
        b.get("duration_ms", 0) for b in [*bodies, twin] if b["event_type"] == "artifact_completed")

    sizes = batches(worker.log(), "voicepipe.events.record")
    assert sum(sizes) == n + 4  # every message went through a batch (the bad ones were refused there)
    assert max(sizes) >= 50, sizes  # and they were batched, not written one by one
    assert "Retry in" not in worker.log()
    if not is_amqp(broker_url):  # and acknowledged: none left for the visibility timeout to redeliver
        wait_for(lambda: redis_lengths(broker_url) == (0, 0), timeout=10)


def test_one_event_alone_reaches_its_counter(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    start_worker(queues="events")
    client.send_task("voicepipe.events.record", kwargs=event(0, event_id=str(uuid.uuid4())), queue="events")
    # How fast (the flush interval) is measured by bench/recording.py; here, that it arrives alone.
    wait_for(lambda: rows(session, EventCounter) == 1, timeout=10, what="the counter row")
    (counter,) = session.scalars(select(EventCounter))
    assert (counter.organization_id, counter.n_artifact_received) == ("org-0", 1)


def test_single_usage_messages_are_recorded_in_batches_and_a_bad_one_is_refused_alone(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    calls = [{"organization_id": f"org-{i % 3}", "operation": "parent_summary", "model": "m",
              "input_tokens": 100 + i, "cached_tokens": i % 50, "output_tokens": 10, "cost": 0.001,
              "occurred_at": (HOUR + timedelta(seconds=i)).isoformat()} for i in range(200)]
    for call in calls:
        client.send_task("voicepipe.usage.record", kwargs=call, queue="events")
    bad = client.send_task("voicepipe.usage.record", queue="events",
                           kwargs={**calls[0], "cached_tokens": 500})  # more cached than input tokens
    worker = start_worker(queues="events", VOICEPIPE_RECORD_FLUSH_MS="1000")  # see the first test

    with pytest.raises(Exception) as excinfo:
        bad.get(timeout=30)
    assert type(excinfo.value).__name__ == "InvalidInput" and "cached_tokens" in str(excinfo.value)
    wait_for(lambda: rows(session, AiUsageLog) == len(calls), what="every usage row")
    assert session.scalar(select(func.sum(AiUsageLog.input_tokens))) == sum(c["input_tokens"] for c in calls)
    sizes = batches(worker.log(), "voicepipe.usage.record")
    assert sum(sizes) == len(calls) + 1 and max(sizes) >= 20, sizes
