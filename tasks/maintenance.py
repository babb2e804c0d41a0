"""Retention cleanup. (voicepipe.maintenance.requeue_stalled lives in tasks/recovery.py.)"""

from __future__ import annotations

import logging
import time
from typing import Any

from models.session import get_engine
from tasks._base import public_task, take
from voicepipe.clock import utcnow
from voicepipe.maintenance.cleanup import run_cleanup

log = logging.getLogger(__name__)

TIME_LIMIT_S = 900
# Stop starting new batches two minutes before the hard limit (and 90 s before the
# soft one): a batch takes well under a second, the rest is left for the next run.
BUDGET_S = TIME_LIMIT_S - 120


@public_task("voicepipe.maintenance.cleanup", time_limit=TIME_LIMIT_S)
def cleanup(**kwargs: Any) -> dict[str, int]:
    """Delete rows past their retention in bounded batches (one commit per batch)."""
    take(kwargs)
    result = run_cleanup(get_engine(), utcnow(), deadline=time.monotonic() + BUDGET_S)
    log.info("cleanup done complete=%s deleted=%s", result.complete, result.deleted)
    return result.deleted
