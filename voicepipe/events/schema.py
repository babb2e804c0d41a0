"""The event JSON of the contract, validated into an ``Event``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from voicepipe.domain import EVENT_TYPES, METADATA_INTS, METADATA_NUMBERS, METADATA_TEXTS, STAGES
from voicepipe.errors import InvalidInput
from voicepipe.settings import get_settings
from voicepipe.timebounds import check_event_time
from voicepipe.validation import (
    check_id,
    check_int,
    check_json_object,
    check_number,
    check_text,
    check_timestamp,
    check_uuid,
    reject_unknown,
)

EVENT_FIELDS = frozenset(
    {
        "event_id",
        "event_type",
        "artifact_id",
        "organization_id",
        "coach_id",
        "stage",
        "occurred_at",
        "duration_ms",
        "error_code",
        "error_message",
        "metadata",
    }
)
# A stage duration past 30 days is a unit error (seconds for ms, µs for ms), not data.
MAX_DURATION_MS = 30 * 24 * 3600 * 1000.0
# artifact_completed carries received-to-completed, which a retry of an old artifact
# can stretch far past 30 days (a note received in spring, retried in autumn): its
# bound is ten years, still far below what a unit error (µs for ms) would give.
MAX_END_TO_END_MS = 3650 * 24 * 3600 * 1000.0
MAX_COST_USD = 1_000_000.0


# Compact JSON, as json.dumps(..., separators=(",", ":")) makes it, without building an
# encoder per call.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


class Event(NamedTuple):
    """A validated event (immutable; a tuple builds in a third of a frozen dataclass's time)."""

    event_id: uuid.UUID
    event_type: str
    artifact_id: uuid.UUID | None
    organization_id: str | None
    coach_id: str | None
    stage: str | None
    occurred_at: datetime
    duration_ms: float | None
    error_code: str | None
    error_message: str | None
    metadata: dict[str, Any]
    # The metadata as stored (compact JSON): dumped once, for its size bound and for the row.
    metadata_json: str


def parse_event(raw: Any, *, now: datetime) -> Event:
    """Validate one event; raise InvalidInput naming the first bad field."""
    if not isinstance(raw, Mapping):
        raise InvalidInput.field("event", f"expected an object, got {type(raw).__name__}")
    if not raw.keys() <= EVENT_FIELDS:
        reject_unknown(raw, EVENT_FIELDS, "an event")
    event_type = raw.get("event_type")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise InvalidInput.field("event_type", f"unknown event type {str(event_type)[:64]!r}")
    stage = raw.get("stage")
    if stage is not None and (not isinstance(stage, str) or stage not in STAGES):
        raise InvalidInput.field("stage", f"unknown stage {str(stage)[:64]!r}")
    event_id = check_uuid(raw.get("event_id"), "event_id", optional=True) or uuid.uuid4()
    occurred_raw = raw.get("occurred_at")
    occurred_at = now if occurred_raw is None else check_event_time(
        check_timestamp(occurred_raw, "occurred_at"), "occurred_at", now=now)
    max_duration = MAX_END_TO_END_MS if event_type == "artifact_completed" else MAX_DURATION_MS
    metadata, metadata_json = _parse_metadata(raw.get("metadata"))
    return Event(
        event_id=event_id,
        event_type=event_type,
        artifact_id=check_uuid(raw.get("artifact_id"), "artifact_id", optional=True),
        organization_id=check_id(raw.get("organization_id"), "organization_id", optional=True),
        coach_id=check_id(raw.get("coach_id"), "coach_id", optional=True),
        stage=stage,
        occurred_at=occurred_at,
        duration_ms=check_number(raw.get("duration_ms"), "duration_ms", hi=max_duration),
        error_code=check_text(raw.get("error_code"), "error_code", max_len=255, optional=True),
        error_message=check_text(raw.get("error_message"), "error_message", optional=True),
        metadata=metadata,
        metadata_json=metadata_json,
    )


def _parse_metadata(raw: Any) -> tuple[dict[str, Any], str]:
    """The metadata, its known keys checked, and its compact JSON (bounded in size)."""
    if raw is None:
        return {}, "{}"
    metadata = check_json_object(raw, "metadata")
    if not metadata:
        return metadata, "{}"
    for key in METADATA_INTS:
        if key in metadata:
            metadata[key] = check_int(metadata[key], f"metadata.{key}")
    for key in METADATA_NUMBERS:
        if key in metadata:
            hi = 1.0 if key == "confidenceScore" else MAX_COST_USD if key == "aiCost" else 1e9
            metadata[key] = check_number(metadata[key], f"metadata.{key}", hi=hi)
    for key in METADATA_TEXTS:
        if key in metadata:
            metadata[key] = check_text(metadata[key], f"metadata.{key}", max_len=255, optional=True)
    text = _compact_json(metadata)
    limit = get_settings().max_metadata_bytes
    if len(text) > limit:
        raise InvalidInput.field("metadata", f"larger than {limit} bytes as JSON (VOICEPIPE_MAX_METADATA_BYTES)")
    return metadata, text
