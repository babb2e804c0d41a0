"""No producer decides how much memory a worker holds: byte limits, refused or parked by name.

Real workers; the memory of the worker's main process and of its pool processes is sampled
while oversized messages arrive, and compared with a ceiling stated here.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psutil
import pytest
from celery import Celery
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from models import PipelineEvent
from tests.support.helpers import RECENT, Proc, wait_for

pytestmark = pytest.mark.slow

HOUR = RECENT + timedelta(hours=15)
MB = 2**20
# What a worker process may reach while 150 messages of 2 MB arrive (idle: about 80 MB).
CEILING_MB = 250


def event(n: int, metadata_bytes: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": str(uuid.uuid4()), "event_type": "artifact_received",
                            "organization_id": "org-1", "occurred_at": (HOUR + timedelta(seconds=n)).isoformat()}
    if metadata_bytes:
        body["metadata"] = {"blob": "x" * metadata_bytes}
    return body


def letters(session: Session) -> list[Any]:
    session.rollback()
    return list(session.execute(text("SELECT task_id, reason, error, kwargs FROM dead_letters ORDER BY id")))


def events_stored(session: Session) -> set[str]:
    session.rollback()
    return {str(i) for i in session.scalars(select(PipelineEvent.id))}


class PeakMemory(threading.Thread):
    """Samples the RSS of a worker's main process and of its children until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.main_mb = self.pool_mb = 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.main_mb = max(self.main_mb, self.process.memory_info().rss / MB)
                for child in self.process.children():
                    self.pool_mb = max(self.pool_mb, child.memory_info().rss / MB)
            except psutil.Error:
                pass
            self.stopping.wait(0.05)


def test_a_10_mb_event_is_parked_unread_and_a_large_metadata_refused_by_name(
    client: Celery, session: Session, start_worker: Callable[..., Proc],
) -> None:
    worker = start_worker(queues="events,pipeline")
    huge = event(0, 10 * MB)
    single = client.send_task("voicepipe.events.record", kwargs=huge, queue="events")
    batch = client.send_task("voicepipe.events.record_batch", kwargs={"events": [event(1, 10 * MB)]}, queue="pipeline")
    # Under the message limits but over the metadata limit (16 KB): refused by validation.
    big = client.send_task("voicepipe.events.record", kwargs=event(2, 20_000), queue="events", ignore_result=False)
    with pytest.raises(Exception) as refused:
        big.get(timeout=60)
    assert type(refused.value).__name__ == "InvalidInput"
    assert "metadata: larger than 16384 bytes" in str(refused.value)
    wait_for(lambda: len(letters(session)) == 2, timeout=60, what="the two 10 MB messages parked")
    parked = {row.task_id: row for row in letters(session)}
    assert {parked[single.id].reason, parked[batch.id].reason} == {"too_large"}
    assert parked[single.id].kwargs["body_bytes"] > 10 * MB  # its size kept, not its body
    assert "undecodable_body" not in parked[single.id].kwargs
    assert "MessageTooLarge" in parked[batch.id].error
    assert events_stored(session) == set()
    # The worker goes on: an ordinary event behind them is recorded.
    ok = event(3)
    client.send_task("voicepipe.events.record", kwargs=ok, queue="events")
    wait_for(lambda: events_stored(session) == {ok["event_id"]}, timeout=60, what="the next event")
    assert worker.alive()


def test_150_messages_of_2_mb_leave_the_worker_under_its_ceiling(
    client: Celery, session: Session, start_worker: Callable[..., Proc],
) -> None:
    worker = start_worker(queues="events", concurrency=2)
    peak = PeakMemory(worker.popen.pid)
    peak.start()
    try:
        sent = [client.send_task("voicepipe.events.record", kwargs=event(n, 2 * MB), queue="events").id
                for n in range(150)]
        good = [event(1000 + n) for n in range(20)]
        for body in good:
            client.send_task("voicepipe.events.record", kwargs=body, queue="events")
        wait_for(lambda: len(letters(session)) == 150, timeout=180, interval=0.5, what="150 messages parked")
        wait_for(lambda: events_stored(session) == {e["event_id"] for e in good}, timeout=60,
                 what="the 20 good events behind them")
    finally:
        peak.stopping.set()
        peak.join()
    print(f"peak RSS: main {peak.main_mb:.0f} MB, pool {peak.pool_mb:.0f} MB (ceiling {CEILING_MB} MB)")
    assert sorted(row.task_id for row in letters(session)) == sorted(sent)
    assert {row.reason for row in letters(session)} == {"too_large"}
    assert peak.main_mb < CEILING_MB and peak.pool_mb < CEILING_MB
    assert worker.alive()
    session.rollback()
    assert session.scalar(select(func.count()).select_from(PipelineEvent)) == 20
