"""`celery -A bench.unbatched_app worker`: production's app with single-event messages run one per task.

The benchmark's baseline for the batched single-event path (worker/batching.py): the
two recording tasks get Celery's default Strategy back, so each message is its own
task and its own transaction, as before batching. Benchmark-only.
"""

from __future__ import annotations

from tasks import events, usage
from worker import app

DEFAULT_STRATEGY = "celery.worker.strategy:default"
events.record.Strategy = DEFAULT_STRATEGY
usage.record.Strategy = DEFAULT_STRATEGY

__all__ = ["app"]
