"""`celery -A bench.retry_trips_app worker -Q retry`: a retry's round trips alone, the limit for retries.

A baseline for bench/retries.py: `bench.retry_trips` makes the round trips a retry makes
and nothing else: a transaction as every task opens it (session_scope), one statement
reading the requester and locking the artifact, one updating it, the commit, one message
queued for the stage (with its task-sent event), and its result stored. No validation,
no signature, no events or counters written. A retry cannot go faster, so the goal
against the smallest task is read beside this one. Sent with `stage_queue="pipeline"`,
its stage's message goes to `bench.trips_stage` on the pipeline worker, which only marks
its start: send to that mark is a retry's latency with none of its work.
Benchmark-only.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from models.session import session_scope
from worker import app

TRIPS_TASK = "bench.retry_trips"
STAGE_TASK = "bench.trips_stage"
DONE_STATUS = "bench-retried"  # what the task leaves on the artifact: the bench counts these
STARTED_STATUS = "bench-started"  # what the stage's task leaves, at its start: its latency's end
SINK_QUEUE = "bench-sink"  # the stage's message goes where no worker consumes it (the bursts)

_LOCK = text("SELECT u.is_platform_staff, a.status FROM users u, artifacts a "
             "WHERE u.id = :user AND a.id = CAST(:artifact AS uuid) FOR UPDATE OF a")
_UPDATE = text("UPDATE artifacts SET status = :status, updated_at = now() WHERE id = CAST(:artifact AS uuid)")
_STARTED = text("UPDATE artifacts SET status = :status, updated_at = clock_timestamp() "
                "WHERE id = CAST(:artifact AS uuid)")


# As tasks/retry.py declares the retries: its result kept, no STARTED state stored before it runs.
@app.task(name=TRIPS_TASK, ignore_result=False, track_started=False)
def retry_trips(*, artifact_id: str, requested_by: str, stage_queue: str = SINK_QUEUE,
                **_ignored: Any) -> dict[str, Any]:
    """The retry task's round trips with none of its work; the stage's message to STAGE_QUEUE."""
    params = {"user": requested_by, "artifact": artifact_id, "status": DONE_STATUS}
    with session_scope() as session:
        session.execute(_LOCK, params).one()
        session.execute(_UPDATE, params)
    app.send_task(STAGE_TASK, kwargs={"artifact_id": artifact_id}, queue=stage_queue)
    return {"artifact_id": artifact_id, "accepted": True}


# No STARTED state stored before it runs, no result after: nothing between its message and its mark.
@app.task(name=STAGE_TASK, track_started=False, ignore_result=True)
def trips_stage(*, artifact_id: str) -> None:
    """The stage's start with none of its work: the clock read in its transaction's first statement."""
    with session_scope() as session:
        session.execute(_STARTED, {"artifact": artifact_id, "status": STARTED_STATUS})


__all__ = ["app", "retry_trips", "trips_stage"]
