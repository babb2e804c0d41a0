"""`celery -A bench.batches_app worker -Q events`: single-event messages batched by celery-batches.

The library a user would reach for instead of worker/batching.py, measured against it by
bench/recording.py: a celery_batches.Batches task takes the same single-event messages
(the same keyword arguments, under its own task name) and writes each flush with
record_events in one transaction (the same batch writer), on production's app and
configuration. Its flush settings are ours: at most FLUSH_EVERY messages a batch, and
a flush every VOICEPIPE_RECORD_FLUSH_MS (default 50 ms). As celery-batches documents,
the prefetch must exceed flush_every or no batch ever fills: it is raised to
2 x FLUSH_EVERY, the most worker/batching.py holds per pool process.

Needs celery-batches, which bench/recording.py only uses when it is importable: its
latest release (0.11) declares celery<5.7, so it is not part of the `dev` extra and is
installed with `pip install --no-deps celery-batches==0.11`.
Benchmark-only.
"""

from __future__ import annotations

from typing import Any

from celery_batches import Batches

from models.session import session_scope
from voicepipe.events.recording import record_events
from voicepipe.settings import get_settings
from worker import app
from worker.batching import FLUSH_EVERY, MAX_HELD_PER_PROCESS

BATCHES_TASK = "bench.celery_batches.record"

# Per pool process (the bench runs -c 1): what celery-batches needs to fill a batch.
app.conf.worker_prefetch_multiplier = MAX_HELD_PER_PROCESS


@app.task(base=Batches, name=BATCHES_TASK, flush_every=FLUSH_EVERY,
          flush_interval=get_settings().record_flush_ms / 1000, ignore_result=True)
def record(requests: list[Any]) -> int:
    """Record the flushed messages' events and their counters in one transaction."""
    with session_scope() as session:
        return record_events(session, [req.kwargs for req in requests]).inserted


__all__ = ["app", "record"]
