"""The event JSON of the contract, validated into an ``Event``."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, NamedTuple

from voicepipe.domain import EVENT_TYPES, METADATA_INTS, METADATA_NUMBERS, METADATA_TEXTS, STAGES
from voicepipe.errors import InvalidInput
from voicepipe.settings import get_settings
from voicepipe.timebounds import check_event_time, event_time_bounds
from voicepipe.validation import (
    MAX_ID,
    MAX_INT32,
    MAX_JSON_INT,
    MAX_TEXT,
    MAX_TS,
    MIN_TS,
    UUID_PATTERN,
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
# error_code and the known text metadata.
MAX_CODE = 255
# The upper bound of each known numeric metadata key (all are >= 0).
METADATA_MAX = {key: 1.0 if key == "confidenceScore" else MAX_COST_USD if key == "aiCost" else 1e9
                for key in METADATA_NUMBERS}


# Compact JSON, as json.dumps(..., separators=(",", ":")) makes it, without building an
# encoder per call.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode
# The same, for flat objects: encode() makes a C encoder each call (most of its time for a
# few keys); this one is made once. Flat values cannot hold a cycle, so no cycle markers.
_flat_encoder = c_make_encoder and c_make_encoder(None, None, encode_basestring_ascii, None, ":", ",",
                                                 False, False, False)


def _flat_json(flat: dict[str, Any]) -> str:
    return "".join(_flat_encoder(flat, 0)) if _flat_encoder else _compact_json(flat)


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
    return _parse_plain(raw, now) or _parse_checked(raw, now)


def _parse_checked(raw: Any, now: datetime) -> Event:
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
        error_code=check_text(raw.get("error_code"), "error_code", max_len=MAX_CODE, optional=True),
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
            metadata[key] = check_number(metadata[key], f"metadata.{key}", hi=METADATA_MAX[key])
    for key in METADATA_TEXTS:
        if key in metadata:
            metadata[key] = check_text(metadata[key], f"metadata.{key}", max_len=MAX_CODE, optional=True)
    text = _compact_json(metadata)
    limit = get_settings().max_metadata_bytes
    if len(text) > limit:
        raise InvalidInput.field("metadata", f"larger than {limit} bytes as JSON (VOICEPIPE_MAX_METADATA_BYTES)")
    return metadata, text


# The plain event: what producers send nearly always (a dict of ASCII ids, canonical UTC
# timestamps, flat metadata of numbers and text), accepted in 60 % of the full checks' time
# (which were a quarter of a batch's recording). It returns None on anything else, valid or
# not, and the full checks decide, with their error: so it only ever accepts what
# _parse_checked accepts, as the same Event (tests/unit/test_plain_events.py).
_PLAIN_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:\+00:00|Z)", re.ASCII)
_TYPES = frozenset(EVENT_TYPES)
_STAGES = frozenset(STAGES)
_FLAT = frozenset({str, int, float, bool, type(None)})
_PLAIN_CHECKS: dict[str, tuple[str, float]] = {
    **{key: ("int", MAX_INT32) for key in METADATA_INTS},
    **{key: ("number", hi) for key, hi in METADATA_MAX.items()},
    **{key: ("text", MAX_CODE) for key in METADATA_TEXTS},
}


def _plain_text(value: Any, max_len: int) -> bool:
    return type(value) is str and len(value) <= max_len and value.isascii() and "\x00" not in value


def _plain_id(value: Any) -> bool:
    # ASCII and printable: no control character, nothing PostgreSQL or UTF-8 refuses.
    return (type(value) is str and len(value) <= MAX_ID and value.isascii() and value.isprintable()
            and value.strip() != "")


def _plain_uuid(value: Any) -> uuid.UUID | None:
    if type(value) is str and UUID_PATTERN.fullmatch(value):
        return uuid.UUID(value)
    return None


def _plain_number(value: Any, hi: float) -> float | None:
    if type(value) is float or type(value) is int:
        number = float(value)
        if 0.0 <= number <= hi:  # False for NaN; an infinity is above every bound
            return number
    return None


def _plain_metadata(raw: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    metadata = dict(raw)
    for key, value in metadata.items():
        kind = type(value)
        if type(key) is not str or not key.isascii() or "\x00" in key or kind not in _FLAT:
            return None
        if (kind is str and ("\x00" in value or not value.isascii())) or (
                kind is float and not math.isfinite(value)) or (kind is int and abs(value) > MAX_JSON_INT):
            return None
        check = _PLAIN_CHECKS.get(key)
        if check is None or value is None:
            continue
        what, hi = check
        if what == "int":
            if kind is float and value.is_integer():
                value = int(value)
            if type(value) is not int or not 0 <= value <= hi:
                return None
            metadata[key] = value
        elif what == "number":
            number = _plain_number(value, hi)
            if number is None:
                return None
            metadata[key] = number
        elif not _plain_text(value, int(hi)):
            return None
    text = _flat_json(metadata) if metadata else "{}"
    return (metadata, text) if len(text) <= get_settings().max_metadata_bytes else None


def _parse_plain(raw: Any, now: datetime) -> Event | None:
    if type(raw) is not dict or not raw.keys() <= EVENT_FIELDS:
        return None
    get = raw.get
    event_type, stage = get("event_type"), get("stage")
    if type(event_type) is not str or event_type not in _TYPES:
        return None
    if stage is not None and (type(stage) is not str or stage not in _STAGES):
        return None
    event_id = get("event_id")
    if event_id is None:
        event_id = uuid.uuid4()
    elif (event_id := _plain_uuid(event_id)) is None:
        return None
    occurred_at = get("occurred_at")
    if occurred_at is None:
        occurred_at = now
    else:
        if type(occurred_at) is not str or _PLAIN_TS.fullmatch(occurred_at) is None:
            return None
        try:
            occurred_at = datetime.fromisoformat(occurred_at)
        except ValueError:  # no such day or time (February 30, 24:00)
            return None
        oldest, newest = event_time_bounds(now)
        if not (MIN_TS <= occurred_at < MAX_TS and oldest <= occurred_at <= newest):
            return None
    artifact_id = get("artifact_id")
    if artifact_id is not None and (artifact_id := _plain_uuid(artifact_id)) is None:
        return None
    organization_id, coach_id = get("organization_id"), get("coach_id")
    if (organization_id is not None and not _plain_id(organization_id)) or (
            coach_id is not None and not _plain_id(coach_id)):
        return None
    duration_ms = get("duration_ms")
    if duration_ms is not None:
        hi = MAX_END_TO_END_MS if event_type == "artifact_completed" else MAX_DURATION_MS
        if (duration_ms := _plain_number(duration_ms, hi)) is None:
            return None
    error_code, error_message = get("error_code"), get("error_message")
    if (error_code is not None and not _plain_text(error_code, MAX_CODE)) or (
            error_message is not None and not _plain_text(error_message, MAX_TEXT)):
        return None
    raw_metadata = get("metadata")
    parsed = ({}, "{}") if raw_metadata is None else (
        _plain_metadata(raw_metadata) if type(raw_metadata) is dict else None)
    if parsed is None:
        return None
    return Event(event_id, event_type, artifact_id, organization_id, coach_id, stage, occurred_at,
                 duration_ms, error_code, error_message, *parsed)
