"""The background refresher: organization breakdowns of the shown ranges summed ahead of requests."""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from functools import partial

from sqlalchemy.orm import Session

from voicepipe.dashboard import breakdowns, data
from voicepipe.metrics.bookkeeping import DAILY, HOURLY

log = logging.getLogger(__name__)

# How often the background refresher looks for a changed breakdown (see refresh_breakdowns):
# a look is two indexed reads of well under a millisecond.
REFRESH_S = 2.0


def _breakdown_of_span(s: Session, now: datetime, period: str) -> None:
    breakdowns.cached_breakdown(s, period, *data.period_span(period, now), wait=True)


def refresh_breakdowns(stop: threading.Event) -> None:
    """Keep the organization breakdowns of the shown ranges computed ahead of requests.

    A request that finds its range changed gets the previous breakdown marked refreshing
    while the new one is summed (breakdowns.cached_breakdown); the refresher makes that rare: at
    start, and after the hourly run, a late window or a new day, it recomputes within REFRESH_S.
    """
    first, last_error = True, ""
    while first or not stop.wait(REFRESH_S):
        first = False
        for period in (DAILY, HOURLY):
            try:
                data.read(partial(_breakdown_of_span, period=period))
                last_error = ""
            except Exception as exc:
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if error != last_error:  # once per outage, not every REFRESH_S
                    log.warning("breakdown refresh failed period=%s: %s", period, error)
                last_error = error
