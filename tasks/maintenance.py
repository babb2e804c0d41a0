"""Maintenance: retention cleanup, and the sweeper that recovers stalled artifacts."""

from __future__ import annotations

import logging
import time
from typing import Any

from models.session import get_engine, session_scope
from voicepipe.clock import utcnow
from voicepipe.maintenance.cleanup import run_cleanup
from voicepipe.pipeline.recovery import requeue_stalled as sweep
from worker.declare import public_task

log = logging.getLogger(__name__)

TIME_LIMIT_S = 900
# Stop starting new batches two minutes before the hard limit (and 90 s before the
# soft one): a batch takes well under a second, the rest is left for the next run.
BUDGET_S = TIME_LIMIT_S - 120


@public_task("voicepipe.maintenance.cleanup", time_limit=TIME_LIMIT_S)
def cleanup() -> dict[str, int]:
    """Delete rows past their retention in bounded batches (one commit per batch)."""
    result = run_cleanup(get_engine(), utcnow(), deadline=time.monotonic() + BUDGET_S)
    log.info("cleanup done complete=%s deleted=%s", result.complete, result.deleted)
    return result.deleted


@public_task("voicepipe.maintenance.requeue_stalled", time_limit=120, ignore_result=False)
def requeue_stalled() -> dict[str, Any]:
    """Re-queue the stage of every stalled artifact, or fail it after too many re-queues."""
    with session_scope() as session:
        report = sweep(session, utcnow())
    log.info("stall sweep done requeued=%d failed=%d", len(report.requeued), len(report.failed))
    return report.to_json()
