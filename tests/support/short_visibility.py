"""`celery -A tests.support.short_visibility worker`: the production app, with a short visibility timeout.

A worker killed with -9 leaves its unacknowledged message in Redis's `unacked` hash;
kombu's Redis transport puts it back on the queue once it is older than the
visibility timeout (worker/config.py: an hour, longer than any task may run), in a
sweep every worker runs at start and then periodically. The fault tests cannot wait
an hour, so this app shortens the timeout to VP_TEST_VISIBILITY_TIMEOUT_S seconds and
sweeps every second; every other setting is production's. Test-only: a short
timeout in production would redeliver tasks that are still running.
"""

from __future__ import annotations

import os
from typing import Any

from worker import app


def _shorten(sender: Any, source: Any, **_: Any) -> None:
    options = dict(source.broker_transport_options or {})
    options.update(
        visibility_timeout=int(os.environ.get("VP_TEST_VISIBILITY_TIMEOUT_S", "5")),
        # kombu sweeps every interval x throttle seconds (10 x 10 by default).
        unacked_restore_interval=1,
        unacked_restore_throttle=1,
    )
    source.broker_transport_options = options


app.on_after_configure.connect(_shorten, weak=False)

__all__ = ["app"]
