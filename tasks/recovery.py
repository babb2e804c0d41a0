"""voicepipe.maintenance.requeue_stalled: the sweeper that recovers stalled artifacts."""

from __future__ import annotations

import logging
from typing import Any

from models.session import session_scope
from tasks._base import public_task, take
from voicepipe.clock import utcnow
from voicepipe.pipeline.recovery import requeue_stalled as sweep

log = logging.getLogger(__name__)


@public_task("voicepipe.maintenance.requeue_stalled", time_limit=120, ignore_result=False)
def requeue_stalled(**kwargs: Any) -> dict[str, Any]:
    """Re-queue the stage of every stalled artifact, or fail it after too many re-queues."""
    take(kwargs)
    with session_scope() as session:
        report = sweep(session, utcnow())
    log.info("stall sweep done requeued=%d failed=%d", len(report.requeued), len(report.failed))
    return report.to_json()
