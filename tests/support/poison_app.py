"""`celery -A tests.support.poison_app worker`: the production app with poison payloads (test-only).

An event whose coach_id is
- `poison-pill` kills its pool process outright (os._exit, as the OOM killer would);
- `slow-pill` sleeps past the soft time limit (SoftTimeLimitExceeded in the task);
- `stubborn-pill` sleeps and swallows the soft limit, so the hard limit kills the process.
The poison sits where every recording path meets (record_parsed: single messages, the
worker's batches of them, record_batch), so it acts wherever the event is recorded.
With VP_TEST_SHORT_LIMITS=1 the time limits of voicepipe.events.record, record_batch
and the worker's batches of single messages are soft 2 s / hard 4 s (production: 55/60,
90/120 and 90/120 s), so the time-limit tests take seconds. Everything else is production's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded

import tasks.events  # noqa: F401  (registers the tasks whose limits are shortened below)
import voicepipe.events.messages
import voicepipe.events.recording
import worker.batching
from worker import app

_record_parsed = voicepipe.events.recording.record_parsed


def _poisoned(session: Any, events: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
    coaches = {getattr(event, "coach_id", None) for event in events}
    if "poison-pill" in coaches:
        os._exit(9)
    if "slow-pill" in coaches:
        time.sleep(60)
    if "stubborn-pill" in coaches:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                time.sleep(60)
            except SoftTimeLimitExceeded:
                continue
    return _record_parsed(session, events, *args, **kwargs)


voicepipe.events.recording.record_parsed = _poisoned  # type: ignore[assignment]
voicepipe.events.messages.record_parsed = _poisoned  # type: ignore[attr-defined]

if os.environ.get("VP_TEST_SHORT_LIMITS") == "1":
    for name in ("voicepipe.events.record", "voicepipe.events.record_batch"):
        app.tasks[name].soft_time_limit = 2
        app.tasks[name].time_limit = 4
    worker.batching.BATCH_SOFT_TIME_LIMIT_S = 2  # type: ignore[attr-defined]
    worker.batching.BATCH_TIME_LIMIT_S = 4  # type: ignore[attr-defined]

__all__ = ["app"]
