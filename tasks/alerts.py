"""voicepipe.alerts.evaluate: the built-in health checks, on beat every 5 minutes."""

from __future__ import annotations

import logging
from typing import Any

from models.session import session_scope
from voicepipe.alerts.evaluate import evaluate as run_checks
from voicepipe.alerts.thresholds import load_thresholds
from voicepipe.clock import utcnow
from voicepipe.observability.probe import collect_now
from worker.declare import public_task

log = logging.getLogger(__name__)


@public_task("voicepipe.alerts.evaluate", time_limit=120, ignore_result=False)
def evaluate() -> dict[str, Any]:
    """Evaluate every health condition and open, refresh or close its alert."""
    thresholds = load_thresholds()  # a bad VOICEPIPE_ALERT_* fails here, naming itself
    now = utcnow()
    with session_scope() as session:
        report = run_checks(session, now, collect_now(session, now), thresholds)
    log.info("alerts evaluated conditions=%d opened=%d resolved=%d",
             len(report.findings), len(report.opened), len(report.resolved))
    return report.to_json()
