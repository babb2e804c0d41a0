"""One retry of one artifact, by platform staff, in one transaction.

Everything is validated before anything changes, with the artifact row locked
(SELECT ... FOR UPDATE): of concurrent retries of one artifact the first to take
the lock proceeds, and the others then find a retry in flight and are refused. The
stage's task is queued only after the commit (fire-and-forget); the caller never
waits for the stage. Whether the retry worked is recorded by the stage that
completes (retry_succeeded) or fails (retry_failed) the artifact.

An accepted retry is two statements of its own between session_scope's BEGIN, SET
LOCAL and COMMIT: one reads the requester's staff flag and locks the request id and
the artifact, one applies every write (artifact, retry request, derived rows, events
and their counters) as data-modifying CTEs. Through the ORM it was eight (ten with a
request id): 12 round trips to PostgreSQL per retry, 14 with a request id, are 6 now.
Each round trip wakes the pool process and a PostgreSQL backend, which on a loaded
two-core host costs far more than the statements' own work: in interleaved runs of
bench/retries.py, retries went from 0.45-0.49 to 0.61-0.67 of the smallest task's rate
on the same worker (mean ratios of two series of three to six runs each).
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy.orm import Session

from models.artifacts import Artifact
from voicepipe.clock import utcnow
from voicepipe.domain import FULL_PIPELINE, PIPELINE, RETRY_STAGES, WORKING_STATUSES
from voicepipe.errors import (
    ArtifactNotFound,
    InvalidInput,
    PermissionDenied,
    RetryLimitExceeded,
    RetryNotAllowed,
    RetryRateLimited,
)
from voicepipe.events import sketch
from voicepipe.events.parts import SCALAR_PARTS, SKETCH_PART, Parts
from voicepipe.events.recording import EVENT_COLUMNS, CounterKey, add_to_counters, group_parts, parse_events
from voicepipe.events.schema import Event
from voicepipe.infra.bulk import dbapi_connection
from voicepipe.metrics import late
from voicepipe.pipeline.stages import (
    DERIVED,
    STAGE_ORDER,
    STAGE_TASKS,
    base_event,
    event_id,
    status_event,
)
from voicepipe.settings import get_settings
from voicepipe.validation import check_id, check_text, check_uuid
from voicepipe.windows import HOUR, floor_hour, hour_label
from worker.dispatch import send_after_commit

log = logging.getLogger(__name__)

FULL = FULL_PIPELINE
# Step 6: the status each retry resets the artifact to.
ENTRY_STATUS: dict[str, str] = {FULL: "received", **{s.name: s.retry_status for s in PIPELINE}}
MAX_REASON = 2000
# pg_advisory_xact_lock(int4, int4) namespace of retry request ids (hashtext of the id).
_REQUEST_LOCK_NAMESPACE = 0x76700004


@dataclass(frozen=True)
class RetryOutcome:
    """An accepted retry (or, with duplicate=True, the one a repeated request_id already made)."""

    retry_id: uuid.UUID
    request_id: str | None
    artifact_id: uuid.UUID
    stage: str
    attempt: int
    requested_by: str
    reason: str | None
    status: str  # the status the artifact was reset to
    queued_task: str
    outcome: str  # in_flight, succeeded or failed (for a duplicate: as it stands now)
    duplicate: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "retry_id": str(self.retry_id),
            "request_id": self.request_id,
            "artifact_id": str(self.artifact_id),
            "stage": self.stage,
            "attempt": self.attempt,
            "requested_by": self.requested_by,
            "reason": self.reason,
            "status": self.status,
            "queued_task": self.queued_task,
            "outcome": self.outcome,
            "duplicate": self.duplicate,
        }


def first_stage(stage: str) -> str:
    """The pipeline stage a retry starts from (the full pipeline starts at transcription)."""
    return STAGE_ORDER[0] if stage == FULL else stage


@dataclass(frozen=True)
class _Request:
    """A retry request's arguments, validated."""

    stage: str
    artifact_id: uuid.UUID
    requested_by: str
    reason: str | None
    request_id: str | None


def request_retry(
    session: Session,
    *,
    stage: Any,
    artifact_id: Any,
    requested_by: Any,
    reason: Any = None,
    request_id: Any = None,
) -> RetryOutcome:
    """Validate and apply one retry (steps 1-6); the stage task is queued after commit.

    Raises InvalidInput, PermissionDenied, ArtifactNotFound, RetryNotAllowed,
    RetryLimitExceeded or RetryRateLimited before changing anything.
    """
    # Arguments first: nothing is read or locked for a malformed request.
    req = _validated(stage, artifact_id, requested_by, reason, request_id)
    # The statements below bypass the ORM: whatever the caller's session holds is
    # written first, as the ORM's autoflush would have (nothing is sent when clean).
    session.flush()
    now = utcnow()
    with dbapi_connection(session).cursor() as cur:
        checked = _lock_and_check(cur, req, now)
        if isinstance(checked, RetryOutcome):
            return checked
        art, attempt = checked
        applied = _apply(cur, req, art, attempt, now)
        if isinstance(applied, RetryOutcome):
            return applied
    retry_id, events, inserted_ids = applied
    return _accepted(session, req, attempt, retry_id, events, inserted_ids)


def _validated(stage: Any, artifact_id: Any, requested_by: Any, reason: Any, request_id: Any) -> _Request:
    if not isinstance(stage, str) or stage not in RETRY_STAGES:
        raise InvalidInput.field("stage", f"unknown retry stage {str(stage)[:64]!r} "
                                          f"(one of {', '.join(RETRY_STAGES)})")
    art_id = check_uuid(artifact_id, "artifact_id")
    user_id = check_id(requested_by, "requested_by")
    why = check_text(reason, "reason", max_len=MAX_REASON, optional=True)
    req_id = check_id(request_id, "request_id", optional=True)
    assert art_id is not None and user_id is not None
    return _Request(stage, art_id, user_id, why, req_id)


def _lock_and_check(cur: Any, req: _Request, now: datetime) -> tuple[Artifact, int] | RetryOutcome:
    """Steps 1-3: staff, the locks, the artifact retryable; (artifact, attempt), or the
    outcome a repeated request id already had."""
    # Steps 1 and 2 in one statement. Staff status is read now, from the users
    # table, never trusted from the message; only for staff is anything locked:
    # the request id's advisory lock (one transaction per request id at a time,
    # whichever artifact it names), then the artifact row for the rest of the
    # transaction. A second use of a request id waits here, and then finds the
    # first one's row (the next statement reads with a snapshot taken after the
    # wait) instead of failing on the unique index at commit.
    cur.execute(_lock_sql(req.request_id is not None),
                {"user_id": req.requested_by, "artifact_id": req.artifact_id, "request_id": req.request_id,
                 "hour_ago": now - HOUR})
    found_user, is_staff, last_hour, *columns = cur.fetchone()
    if found_user is None:
        raise PermissionDenied(f"user {req.requested_by} is unknown; only platform staff may retry artifacts")
    if not is_staff:
        raise PermissionDenied(
            f"user {req.requested_by} is not platform staff; only platform staff may retry artifacts")
    if columns[0] is None:
        raise ArtifactNotFound(f"artifact {req.artifact_id} not found")
    art = Artifact(**dict(zip(_ARTIFACT_ATTRS, columns, strict=True)))  # transient: read only

    settings = get_settings()
    try:
        _check_retryable(art, req.stage, now, settings.stall_timeout_seconds)
        # 3. The attempt number, bounded.
        used = int((art.metadata_ or {}).get("retryAttempt", 0))
        if used + 1 > settings.max_retry_attempts:
            raise RetryLimitExceeded(
                f"artifact {req.artifact_id} has used {used} of its {settings.max_retry_attempts} retry attempts"
            )
        # The hourly limit, from the accepted retries of the last hour (read under the row lock).
        if last_hour >= settings.max_retries_per_hour:
            raise RetryRateLimited(
                f"artifact {req.artifact_id} was retried {last_hour} times in the last hour, the most "
                f"VOICEPIPE_MAX_RETRIES_PER_HOUR allows ({settings.max_retries_per_hour}); try again later")
    except (RetryNotAllowed, RetryLimitExceeded, RetryRateLimited):
        if req.request_id is not None:
            # A repeated request id finds its own retry in flight (or used up the
            # attempts): it gets that retry's outcome, not a refusal. Read under
            # the request id's lock, in a snapshot taken after it.
            cur.execute(_REQUEST_SQL, {"request_id": req.request_id})
            done = cur.fetchone()
            if done is not None:
                return _duplicate(done, req.artifact_id, req.stage, req.request_id)
        raise
    return art, used + 1


def _apply(cur: Any, req: _Request, art: Artifact, attempt: int, now: datetime
           ) -> tuple[uuid.UUID, list[Event], list[Any]] | RetryOutcome:
    """Steps 3-6 in one statement: (retry id, events, ids of those stored), or, when an
    earlier transaction stored the same request id, its outcome (nothing written)."""
    entry = ENTRY_STATUS[req.stage]
    stage_column = None if req.stage == FULL else req.stage
    # 4. retry_initiated, and the status change of step 6.
    raws = [
        base_event(art, "retry_initiated", stage_column, event_id=event_id(req.artifact_id, "retry", attempt),
                   occurred_at=now, metadata={"retryAttempt": attempt, "requestedBy": req.requested_by,
                                              "reason": req.reason, "retryStage": req.stage}),
    ]
    if art.status != entry:
        raws.append(status_event(art, entry, stage_column, f"retry|{attempt}", now, retryAttempt=attempt))
    events = parse_events(raws)
    grouped = _counter_parts(events)
    counter_columns = tuple(n for n in SCALAR_PARTS if any(p[n] for p in grouped.values()))
    sketched = any(p[SKETCH_PART] for p in grouped.values())

    retry_id = uuid.uuid4()
    start = STAGE_ORDER.index(first_stage(req.stage))
    cur.execute(
        _apply_sql(STAGE_ORDER[start:], req.request_id is not None, counter_columns, sketched),
        {
            "artifact_id": req.artifact_id, "request_id": req.request_id, "retry_id": retry_id,
            "stage": req.stage, "requested_by": req.requested_by, "reason": req.reason, "attempt": attempt,
            "now": now, "status": entry, "current_stage": first_stage(req.stage),
            "metadata": Jsonb({**(art.metadata_ or {}), "retryAttempt": attempt}),
            "events": Jsonb([_event_json(e) for e in events]),
            "n_events": len(events),
            "counters": Jsonb([_counter_json(key, parts, counter_columns, sketched)
                               for key, parts in grouped.items()]),
        },
    )
    inserted_ids, *done_row = cur.fetchone()
    if done_row and done_row[0] is not None:
        return _duplicate(tuple(done_row), req.artifact_id, req.stage, req.request_id)
    return retry_id, events, inserted_ids


def _accepted(session: Session, req: _Request, attempt: int, retry_id: uuid.UUID, events: list[Event],
              inserted_ids: list[Any]) -> RetryOutcome:
    """What follows an applied retry in the same transaction; the stage task is sent after commit."""
    stored = set(inserted_ids)
    inserted = [e for e in events if e.event_id in stored]
    if len(inserted) < len(events):
        # An event id was already stored (the statement added no counters then):
        # count the new ones only, as recording does.
        add_to_counters(session, _counter_parts(inserted))
    # Counters of a closed hour changed: its snapshot (if any) and its day are stale.
    late.mark(session, late.HOURLY, late.closed_before((floor_hour(e.occurred_at) for e in inserted),
                                                      utcnow(), HOUR))
    # The caller's session may hold the artifact as it was: it is reloaded on next use.
    cached = session.identity_map.get(session.identity_key(Artifact, req.artifact_id))
    if cached is not None:
        session.expire(cached)

    task = STAGE_TASKS[first_stage(req.stage)]
    send_after_commit(session, task, artifact_id=str(req.artifact_id))
    log.info("retry accepted artifact_id=%s stage=%s attempt=%d requested_by=%s reason=%r request_id=%s",
             req.artifact_id, req.stage, attempt, req.requested_by, req.reason, req.request_id)
    return RetryOutcome(
        retry_id=retry_id, request_id=req.request_id, artifact_id=req.artifact_id, stage=req.stage,
        attempt=attempt, requested_by=req.requested_by, reason=req.reason, status=ENTRY_STATUS[req.stage],
        queued_task=task, outcome="in_flight",
    )


# The artifact columns a retry reads (SQL names) and the model attributes they fill.
_ARTIFACT_COLUMNS: tuple[str, ...] = (
    "id", "organization_id", "coach_id", "source_channel", "status", "failed_stage", "metadata",
    "active_retry_attempt", "current_stage", "updated_at",
)
_ARTIFACT_ATTRS: tuple[str, ...] = tuple("metadata_" if c == "metadata" else c for c in _ARTIFACT_COLUMNS)
# A retry request's columns, as _duplicate reads them.
_REQUEST_COLUMNS = "id, request_id, artifact_id, stage, requested_by, reason, attempt, outcome"
_REQUEST_SQL = f"SELECT {_REQUEST_COLUMNS} FROM retry_requests WHERE request_id = %(request_id)s"


@functools.cache
def _lock_sql(with_request_id: bool) -> str:
    """Staff flag, the artifact's retries of the last hour, then (staff only) the request id's
    advisory lock and the artifact row lock.

    The advisory lock sits in the artifact scan's filter, which runs below the row
    lock (LockRows): request id first, artifact second, as two statements took them.
    """
    lock = (f"pg_advisory_xact_lock({_REQUEST_LOCK_NAMESPACE}, hashtext(%(request_id)s)) IS NOT NULL"
            if with_request_id else "true")
    return (
        "SELECT u.id, u.is_platform_staff, (SELECT count(*) FROM retry_requests r WHERE r.artifact_id = a.id"
        " AND r.created_at > %(hour_ago)s), "
        f"{', '.join(f'a.{c}' for c in _ARTIFACT_COLUMNS)} "
        "FROM (SELECT 1) AS one "
        "LEFT JOIN users AS u ON u.id = %(user_id)s "
        f"LEFT JOIN LATERAL (SELECT {', '.join(_ARTIFACT_COLUMNS)} FROM artifacts "
        "WHERE artifacts.id = %(artifact_id)s "
        f"AND CASE WHEN u.is_platform_staff THEN {lock} ELSE false END "
        "FOR UPDATE) AS a ON true"
    )


@functools.cache
def _apply_sql(
    stages: tuple[str, ...], with_request_id: bool, counter_columns: tuple[str, ...], sketched: bool
) -> str:
    """Steps 3-6 as data-modifying CTEs; returns the ids of the events stored (and a stored request).

    Events go in with ON CONFLICT DO NOTHING; their counters are added here only when
    every event was new (the caller adds the new ones' otherwise). Counter rows are
    upserted with the additive rule of voicepipe/events/recording.py, on the columns
    these events change (the others keep their value, or their default 0 when new).
    """
    ctes = []
    guard = ""
    if with_request_id:
        ctes.append(f"dup AS (SELECT {_REQUEST_COLUMNS} FROM retry_requests WHERE request_id = %(request_id)s)")
        guard = " AND NOT EXISTS (SELECT FROM dup)"
    ctes.append(
        "art AS (UPDATE artifacts SET metadata = %(metadata)s, status = %(status)s, "
        "current_stage = %(current_stage)s, stage_task_id = NULL, failed_stage = NULL, error_code = NULL, "
        "error_message = NULL, requeue_count = 0, requeued_at = NULL, active_retry_attempt = %(attempt)s, "
        f"updated_at = %(now)s WHERE id = %(artifact_id)s{guard} RETURNING id)"
    )
    ctes.append(
        "req AS (INSERT INTO retry_requests (id, request_id, artifact_id, stage, requested_by, reason, attempt, "
        "outcome, created_at) SELECT %(retry_id)s, %(request_id)s, id, %(stage)s, %(requested_by)s, %(reason)s, "
        "%(attempt)s, 'in_flight', %(now)s FROM art)"
    )
    # 5. Derived data from the retried stage on (full pipeline: all of it).
    ctes += [f"d{i} AS (DELETE FROM {DERIVED[s].__tablename__} WHERE artifact_id = %(artifact_id)s "
             "AND EXISTS (SELECT FROM art))" for i, s in enumerate(stages)]
    cols = ", ".join(EVENT_COLUMNS)
    ctes.append(
        f"ev AS (INSERT INTO pipeline_events ({cols}) SELECT {cols} "
        "FROM jsonb_populate_recordset(NULL::pipeline_events, %(events)s) WHERE EXISTS (SELECT FROM art) "
        "ON CONFLICT (id) DO NOTHING RETURNING id)"
    )
    parts = [*counter_columns, *([SKETCH_PART] if sketched else [])]
    if parts:
        sets = [f"{n} = event_counters.{n} + excluded.{n}" for n in counter_columns]
        if sketched:
            sets.append(f"{SKETCH_PART} = vp_sketch_add(event_counters.{SKETCH_PART}, excluded.{SKETCH_PART})")
        sets += ["revision = nextval('counter_revision_seq')", "updated_at = now()"]
        counter_cols = ", ".join(["organization_id", "hour_start", *parts])
        # ORDER BY: concurrent recorders lock counter rows in the same order (recording.py).
        ctes.append(
            f"cnt AS (INSERT INTO event_counters ({counter_cols}) SELECT {counter_cols} "
            "FROM jsonb_populate_recordset(NULL::event_counters, %(counters)s) "
            "WHERE (SELECT count(*) FROM ev) = %(n_events)s "
            "ORDER BY organization_id NULLS FIRST, hour_start "
            f"ON CONFLICT (organization_id, hour_start) DO UPDATE SET {', '.join(sets)})"
        )
    select = "SELECT ARRAY(SELECT id FROM ev)"
    if with_request_id:
        select += ", dup.* FROM (SELECT 1) AS one LEFT JOIN dup ON true"
    return f"WITH {', '.join(ctes)} {select}"


def _counter_parts(events: Sequence[Event]) -> dict[CounterKey, Parts]:
    """The events' additive parts per (organization, UTC hour), as recording sums them."""
    return group_parts((event, floor_hour(event.occurred_at)) for event in events)


def _event_json(event: Event) -> dict[str, Any]:
    """One pipeline_events row (jsonb_populate_recordset casts each value to its column's type)."""
    return {
        "id": str(event.event_id), "event_type": event.event_type,
        "artifact_id": str(event.artifact_id) if event.artifact_id else None,
        "organization_id": event.organization_id, "coach_id": event.coach_id, "stage": event.stage,
        "occurred_at": event.occurred_at.isoformat(), "time_window": hour_label(event.occurred_at),
        "duration_ms": event.duration_ms, "error_code": event.error_code, "error_message": event.error_message,
        "metadata": event.metadata,
    }


def _counter_json(key: CounterKey, parts: Parts, columns: tuple[str, ...], sketched: bool) -> dict[str, Any]:
    org, hour = key
    row: dict[str, Any] = {"organization_id": org, "hour_start": hour.isoformat()}
    for name in columns:
        value = parts[name]
        # numeric from its exact decimal text, never through a float.
        row[name] = str(value) if isinstance(value, Decimal) else value
    if sketched:
        row[SKETCH_PART] = sketch.pack(parts[SKETCH_PART])
    return row


def _check_retryable(art: Artifact, stage: str, now: Any, stall_timeout_s: int) -> None:
    if art.active_retry_attempt is not None:
        raise RetryNotAllowed(
            f"artifact {art.id} already has retry attempt {art.active_retry_attempt} in flight "
            f"(status {art.status}); wait until it completes or fails"
        )
    if art.status == "failed":
        reached = art.failed_stage
        where = f"failed in {reached or 'an unknown stage'}"
    elif art.status in WORKING_STATUSES:
        idle = (now - art.updated_at).total_seconds()
        if idle < stall_timeout_s:
            raise RetryNotAllowed(
                f"artifact {art.id} is {art.status} and made progress {idle:.0f}s ago; it can be "
                f"retried once it fails or stalls for {stall_timeout_s}s"
            )
        reached = art.current_stage
        where = f"is stuck in {reached or 'an unknown stage'}"
    else:
        raise RetryNotAllowed(
            f"artifact {art.id} is {art.status}; only failed or stalled artifacts can be retried"
        )
    if stage == FULL:
        return
    if reached not in STAGE_ORDER or STAGE_ORDER.index(stage) > STAGE_ORDER.index(reached):
        raise RetryNotAllowed(
            f"artifact {art.id} {where}; retrying {stage} needs every earlier stage's output "
            f"(retry {reached if reached in STAGE_ORDER else FULL} or an earlier stage, or {FULL})"
        )


def _duplicate(done: Sequence[Any], art_id: uuid.UUID, stage: str, req_id: str | None) -> RetryOutcome:
    """The outcome of the retry a repeated request id already made, or InvalidInput if it named another."""
    retry_id, request_id, done_artifact, done_stage, requested_by, reason, attempt, outcome = done
    if done_artifact != art_id or done_stage != stage:
        raise InvalidInput.field(
            "request_id", f"{req_id} was already used for a {done_stage} retry of artifact {done_artifact}"
        )
    log.info("retry request repeated, returning its outcome request_id=%s artifact_id=%s", req_id, art_id)
    return RetryOutcome(
        retry_id=retry_id, request_id=request_id, artifact_id=done_artifact, stage=done_stage, attempt=attempt,
        requested_by=requested_by, reason=reason, status=ENTRY_STATUS[done_stage],
        queued_task=STAGE_TASKS[first_stage(done_stage)], outcome=outcome, duplicate=True,
    )
