"""`celery -A tests.faults.poison_app worker`: the production app with poison payloads (test-only).

An event whose coach_id is
- `poison-pill` kills its pool process outright (os._exit, as the OOM killer would);
- `slow-pill` sleeps past the soft time limit (SoftTimeLimitExceeded in the task);
- `stubborn-pill` sleeps and swallows the soft limit, so the hard limit kills the process.
With VP_TEST_SHORT_LIMITS=1, voicepipe.events.record's limits are soft 2 s / hard 4 s
(production: 55 / 60 s), so the time-limit tests take seconds. Every other setting and
every other event are production's.
"""

from __future__ import annotations

import os
import time
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded

import tasks.events
from worker import app

_record_event = tasks.events.record_event


def _poisoned(session: Any, event: Any) -> bool:
    coach = event.get("coach_id") if isinstance(event, dict) else None
    if coach == "poison-pill":
        os._exit(9)
    if coach == "slow-pill":
        time.sleep(60)
    if coach == "stubborn-pill":
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                time.sleep(60)
            except SoftTimeLimitExceeded:
                continue
    return bool(_record_event(session, event))


tasks.events.record_event = _poisoned  # type: ignore[assignment]

if os.environ.get("VP_TEST_SHORT_LIMITS") == "1":
    record = app.tasks["voicepipe.events.record"]
    record.soft_time_limit = 2
    record.time_limit = 4

__all__ = ["app"]
