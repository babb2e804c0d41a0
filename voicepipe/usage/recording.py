"""Validate and store AI usage rows (one per LLM call)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.usage import AiUsageLog
from voicepipe.clock import utcnow
from voicepipe.errors import InvalidInput
from voicepipe.metrics import late
from voicepipe.timebounds import check_usage_time
from voicepipe.validation import (
    check_id,
    check_int,
    check_number,
    check_text,
    check_timestamp,
    check_uuid,
    reject_unknown,
)
from voicepipe.windows import DAY, floor_day

USAGE_FIELDS = frozenset(
    {
        "id",
        "occurred_at",
        "organization_id",
        "coach_id",
        "player_id",
        "operation",
        "model",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "cost",
    }
)
MAX_TOKENS = 2**40


def parse_usage(raw: Any, *, now: datetime) -> dict[str, Any]:
    """Validate one AI call; InvalidInput names the first bad field."""
    if not isinstance(raw, Mapping):
        raise InvalidInput.field("usage", f"expected an object, got {type(raw).__name__}")
    reject_unknown(raw, USAGE_FIELDS, "an AI usage record")
    occurred = raw.get("occurred_at")
    input_tokens = check_int(raw.get("input_tokens", 0), "input_tokens", hi=MAX_TOKENS, optional=False)
    cached_tokens = check_int(raw.get("cached_tokens", 0), "cached_tokens", hi=MAX_TOKENS, optional=False)
    assert input_tokens is not None and cached_tokens is not None
    if cached_tokens > input_tokens:
        raise InvalidInput.field("cached_tokens", "cannot exceed input_tokens")
    cost = check_number(raw.get("cost"), "cost", hi=1_000_000.0, optional=False)
    return {
        "id": check_uuid(raw.get("id"), "id", optional=True),
        "occurred_at": now if occurred is None else check_usage_time(
            check_timestamp(occurred, "occurred_at"), "occurred_at", now=now),
        "organization_id": check_id(raw.get("organization_id"), "organization_id"),
        "coach_id": check_id(raw.get("coach_id"), "coach_id", optional=True),
        "player_id": check_id(raw.get("player_id"), "player_id", optional=True),
        "operation": check_text(raw.get("operation"), "operation", max_len=255),
        "model": check_text(raw.get("model"), "model", max_len=255),
        "input_tokens": input_tokens,
        "cached_tokens": cached_tokens,
        "output_tokens": check_int(raw.get("output_tokens", 0), "output_tokens", hi=MAX_TOKENS,
                                   optional=False),
        "cost": Decimal(str(cost)),
    }


def record_usage(session: Session, raws: Sequence[Any]) -> int:
    """Store a batch of AI calls (a repeated id is a no-op); returns how many were new."""
    now = utcnow()
    rows = []
    for index, raw in enumerate(raws):
        try:
            rows.append(parse_usage(raw, now=now))
        except InvalidInput as exc:
            if len(raws) == 1:
                raise
            raise InvalidInput(f"records[{index}].{exc.message}") from None
    inserted = 0
    days: set[datetime] = set()
    for start in range(0, len(rows), 1000):
        chunk = [{k: v for k, v in r.items() if not (k == "id" and v is None)} for r in rows[start : start + 1000]]
        stmt = pg_insert(AiUsageLog).values(chunk).on_conflict_do_nothing(index_elements=["id"])
        for (occurred_at,) in session.execute(stmt.returning(AiUsageLog.occurred_at)).all():
            inserted += 1
            days.add(floor_day(occurred_at))
    # Calls of a closed day: its rollup (if any) no longer matches; the daily usage
    # wrapper finds the mark however old the day is.
    late.mark(session, late.USAGE_DAY, late.closed_before(days, now, DAY))
    return inserted
