"""`celery -A bench.retry_trips_app worker -Q retry`: a retry's round trips alone, the ceiling for retries/s.

A baseline for bench/retries.py: `bench.retry_trips` makes the round trips a retry makes
and nothing else: a transaction as every task opens it (session_scope), one statement
reading the requester and locking the artifact, one updating it, the commit, one message
queued for the stage (with its task-sent event), and its result stored. No validation,
no signature, no events or counters written. A retry cannot go faster, so the goal
against the smallest task is read beside this one.
Benchmark-only.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from models.session import session_scope
from worker import app

TRIPS_TASK = "bench.retry_trips"
DONE_STATUS = "bench-retried"  # what the task leaves on the artifact: the bench counts these
SINK_QUEUE = "bench-sink"  # the stage's message goes where no worker consumes it, as in the bench

_LOCK = text("SELECT u.is_platform_staff, a.status FROM users u, artifacts a "
             "WHERE u.id = :user AND a.id = CAST(:artifact AS uuid) FOR UPDATE OF a")
_UPDATE = text("UPDATE artifacts SET status = :status, updated_at = now() WHERE id = CAST(:artifact AS uuid)")


# As tasks/retry.py declares the retries: its result kept, no STARTED state stored before it runs.
@app.task(name=TRIPS_TASK, ignore_result=False, track_started=False)
def retry_trips(*, artifact_id: str, requested_by: str, **_ignored: Any) -> dict[str, Any]:
    """The retry task's round trips with none of its work."""
    params = {"user": requested_by, "artifact": artifact_id, "status": DONE_STATUS}
    with session_scope() as session:
        session.execute(_LOCK, params).one()
        session.execute(_UPDATE, params)
    app.send_task("bench.sink", kwargs={"artifact_id": artifact_id}, queue=SINK_QUEUE)
    return {"artifact_id": artifact_id, "accepted": True}


__all__ = ["app", "retry_trips"]
