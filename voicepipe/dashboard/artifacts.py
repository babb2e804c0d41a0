"""Artifacts for repair: a filtered list, newest first by keyset, and one artifact's story.

The list answers `/api/artifacts` and the `/artifacts` page; the story `/api/artifacts/{id}`
and `/artifacts/{id}`. Pages move by keyset (the last row's received time and id, in an
opaque cursor), never by OFFSET: page 1,000 costs what page 1 does.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.artifacts import Artifact, Claim, EntityResolution, InsightDraft, Transcript
from models.events import PipelineEvent
from voicepipe.domain import RETRY_STAGES, STAGE_ORDER, WORKING_STATUSES
from voicepipe.errors import ArtifactNotFound, InvalidInput
from voicepipe.infra.bulk import dbapi_connection
from voicepipe.settings import get_settings
from voicepipe.validation import check_id, check_timestamp, check_uuid

__all__ = ["RETRY_STAGES", "STAGE_ORDER", "artifact_story", "list_artifacts", "list_filters"]

# The list's status filter: what an operator asks for, not the internal statuses.
LIST_STATUSES = ("failed", "stalled", "processing", "completed")
PAGE = 50
MAX_PAGE = 200
ERROR_CHARS = 160  # the last error, trimmed, in the list (the story has it whole)


def encode_cursor(received: datetime, artifact_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{received.isoformat()}|{artifact_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        received, artifact_id = raw.split("|")
        ts, art = check_timestamp(received, "cursor"), check_uuid(artifact_id, "cursor")
    except (ValueError, UnicodeDecodeError, binascii.Error, InvalidInput):
        raise InvalidInput.field("cursor", "not a cursor this list gave (take `next` as it is)") from None
    assert art is not None
    return ts, art


def list_filters(query: Any) -> dict[str, Any]:
    """The list's filters from request parameters (InvalidInput names a bad one)."""
    status = query.get("status") or None
    if status is not None and status not in LIST_STATUSES:
        raise InvalidInput.field("status", f"expected one of {', '.join(LIST_STATUSES)}, got {status[:32]!r}")
    stage = query.get("stage") or None
    if stage is not None and stage not in STAGE_ORDER:
        raise InvalidInput.field("stage", f"expected one of {', '.join(STAGE_ORDER)}, got {stage[:32]!r}")
    limit = query.get("limit") or str(PAGE)
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_PAGE:
        raise InvalidInput.field("limit", f"expected 1 to {MAX_PAGE}, got {limit[:16]!r}")
    return {
        "status": status, "stage": stage,
        "organization": check_id(query.get("organization") or None, "organization", optional=True),
        "since": check_timestamp(query["since"], "since") if query.get("since") else None,
        "until": check_timestamp(query["until"], "until") if query.get("until") else None,
        "cursor": query.get("cursor") or None,
        "limit": int(limit),
    }


_WORKING = "status IN (" + ", ".join(f"'{st}'" for st in WORKING_STATUSES) + ")"
_LIST_SQL = (
    "SELECT id, organization_id, coach_id, created_at, updated_at, status, current_stage, failed_stage, "
    "(metadata ->> 'retryAttempt')::int, error_code, left(error_message, %(chars)s) FROM artifacts "
    "WHERE {where} ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
)


def list_artifacts(session: Session, now: datetime, *, status: str | None = None, stage: str | None = None,
                   organization: str | None = None, since: datetime | None = None, until: datetime | None = None,
                   cursor: str | None = None, limit: int = PAGE) -> dict[str, Any]:
    """{"artifacts": [...], "next": cursor or None}: newest received first, LIMIT a page.

    One statement on the driver's cursor (the conditions are fixed fragments, the values
    parameters): the ORM's compilation and row objects were half the list's time.
    """
    where: list[str] = []
    stall_before = now - timedelta(seconds=get_settings().stall_timeout_seconds)
    params: dict[str, Any] = {"stall": stall_before, "stage": stage, "org": organization, "since": since,
                              "until": until, "chars": ERROR_CHARS + 1, "limit": limit + 1}
    where += {"failed": ["status = 'failed'"], "completed": ["status = 'completed'"],
              "stalled": [_WORKING, "updated_at < %(stall)s"],
              "processing": [_WORKING, "updated_at >= %(stall)s"]}.get(status or "", [])
    if stage is not None:
        # The stage a failed artifact stopped at; the one any other is at (or waits for).
        where.append({"failed": "failed_stage = %(stage)s",
                      "": "(current_stage = %(stage)s OR (status = 'failed' AND failed_stage = %(stage)s))"
                      }.get(status or "", "current_stage = %(stage)s"))
    if organization is not None:
        where.append("organization_id = %(org)s")
    if since is not None:
        where.append("created_at >= %(since)s")
    if until is not None:
        where.append("created_at < %(until)s")
    if cursor is not None:
        params["c_at"], params["c_id"] = decode_cursor(cursor)
        where.append("(created_at, id) < (%(c_at)s, %(c_id)s)")
    with dbapi_connection(session).cursor() as cur:
        rows = cur.execute(_LIST_SQL.format(where=" AND ".join(where) or "true"), params).fetchall()
    page = rows[:limit]
    artifacts = []
    for art_id, org, coach, received, updated, st, current, failed_stage, attempts, code, message in page:
        error = None
        if code or message:
            text = message or ""
            error = {"code": code, "message": text[:ERROR_CHARS] + ("…" if len(text) > ERROR_CHARS else "")}
        artifacts.append({
            "id": str(art_id), "organization_id": org, "coach_id": coach, "received_at": received.isoformat(),
            "updated_at": updated.isoformat(), "status": st,
            "stalled": st in WORKING_STATUSES and updated < stall_before,
            "stage": failed_stage if st == "failed" else current, "attempts": attempts or 0, "last_error": error,
        })
    last = page[-1] if page else None
    return {"artifacts": artifacts,
            "next": encode_cursor(last[3], last[0]) if last is not None and len(rows) > limit else None}


def artifact_story(session: Session, artifact_id: Any, now: datetime) -> dict[str, Any]:
    """One artifact: its row, its events in order, what it produced, its AI calls, its retries."""
    from voicepipe.retry.history import retry_history
    from voicepipe.retry.refusals import refusals_for

    art_id = check_uuid(artifact_id, "artifact_id")
    art = session.get(Artifact, art_id)
    if art is None:
        raise ArtifactNotFound(f"artifact {artifact_id} not found")
    events = session.execute(
        select(PipelineEvent.id, PipelineEvent.event_type, PipelineEvent.stage, PipelineEvent.occurred_at,
               PipelineEvent.duration_ms, PipelineEvent.error_code, PipelineEvent.error_message,
               PipelineEvent.metadata_)
        .where(PipelineEvent.artifact_id == art_id).order_by(PipelineEvent.occurred_at, PipelineEvent.id)
    ).all()
    timeline, ai_calls = [], []
    for ev_id, ev_type, stage, at, duration, code, message, meta in events:
        meta = meta or {}
        timeline.append({
            "id": str(ev_id), "event_type": ev_type, "stage": stage, "occurred_at": at.isoformat(),
            "duration_ms": duration, "error_code": code, "error_message": message,
            "requested_by": meta.get("requestedBy"), "attempt": meta.get("retryAttempt"),
        })
        if meta.get("aiModel") is not None or meta.get("aiCost") is not None:
            ai_calls.append({"event_type": ev_type, "stage": stage, "occurred_at": at.isoformat(),
                             "model": meta.get("aiModel"), "cost": meta.get("aiCost")})
    produced = {
        name: int(session.scalar(select(func.count()).select_from(model).where(model.artifact_id == art_id)) or 0)
        for name, model in (("transcripts", Transcript), ("claims", Claim), ("entities", EntityResolution),
                            ("drafts", InsightDraft))
    }
    stall_before = now - timedelta(seconds=get_settings().stall_timeout_seconds)
    return {
        "artifact": {
            "id": str(art.id), "organization_id": art.organization_id, "coach_id": art.coach_id,
            "source_channel": art.source_channel, "status": art.status,
            "stalled": art.status in WORKING_STATUSES and art.updated_at < stall_before,
            "current_stage": art.current_stage, "failed_stage": art.failed_stage,
            "attempts": int((art.metadata_ or {}).get("retryAttempt", 0)), "error_code": art.error_code,
            "error_message": art.error_message, "received_at": art.created_at.isoformat(),
            "updated_at": art.updated_at.isoformat(),
        },
        "timeline": timeline,
        "produced": produced,
        "ai_calls": ai_calls,
        "ai_cost": str(sum((_decimal(c["cost"]) for c in ai_calls), start=_decimal(0))),
        "retries": [r.to_json() for r in retry_history(session, art_id)],
        "refusals": [r.to_json() for r in refusals_for(session, str(art_id))],
    }


def _decimal(value: Any) -> Any:
    from decimal import Decimal

    return Decimal(str(value)) if value is not None else Decimal(0)
