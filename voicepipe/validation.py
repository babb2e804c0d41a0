"""Field validators shared by every entry point; each raises InvalidInput naming the field."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from voicepipe.errors import InvalidInput

MAX_TEXT = 10_000
MAX_ID = 255
# A PostgreSQL integer: check_int's default upper bound.
MAX_INT32 = 2**31 - 1
# A JSON integer storable in jsonb and readable as bigint.
MAX_JSON_INT = 2**63 - 1
MIN_TS = datetime(2000, 1, 1, tzinfo=UTC)
MAX_TS = datetime(2100, 1, 1, tzinfo=UTC)


# Not in an id: C0 and C1 controls, DEL, zero-width and bidirectional marks, line and
# paragraph separators, the byte-order mark (the JSON Schemas carry the same class).
ID_FORBIDDEN_CLASS = "[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]"
ID_FORBIDDEN = re.compile(ID_FORBIDDEN_CLASS)


def check_text(value: Any, field: str, *, max_len: int = MAX_TEXT, optional: bool = False) -> str | None:
    if value is None:
        if optional:
            return None
        raise InvalidInput.field(field, "is required")
    if not isinstance(value, str):
        raise InvalidInput.field(field, f"expected a string, got {type(value).__name__}")
    if optional is False and value.strip() == "":
        raise InvalidInput.field(field, "must not be empty")
    if len(value) > max_len:
        raise InvalidInput.field(field, f"longer than {max_len} characters")
    _check_storable(value, field)
    return value


def check_id(value: Any, field: str, *, optional: bool = False) -> str | None:
    """A text id from the platform's auth system (organization, user, coach, player).

    No control characters: an id is written into log lines, exporter labels and pages,
    where a newline would forge a line of its own.
    """
    text = check_text(value, field, max_len=MAX_ID, optional=optional)
    if text is not None and text.strip() == "":
        raise InvalidInput.field(field, "must not be empty")
    if text is not None and ID_FORBIDDEN.search(text):
        raise InvalidInput.field(field, "contains a control or non-printable character")
    return text


def check_uuid(value: Any, field: str, *, optional: bool = False) -> uuid.UUID | None:
    if value is None:
        if optional:
            return None
        raise InvalidInput.field(field, "is required")
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise InvalidInput.field(field, f"expected a UUID string, got {type(value).__name__}")
    # The canonical text only (8-4-4-4-12 hex digits): uuid.UUID also takes braces, "urn:uuid:",
    # hyphens anywhere and underscores, which the published schema (voicepipe/contract.py) does not.
    if UUID_PATTERN.fullmatch(value) is None:
        raise InvalidInput.field(field, f"not a UUID (8-4-4-4-12 hex digits): {value[:64]!r}")
    return uuid.UUID(value)


# RFC 3339 date-time (T, t or a space between date and time; Z, z or an offset),
# seconds and fractions optional; the offset is optional here only so that a naive
# timestamp gets its own error. Week dates, ordinal dates and compact forms, which
# datetime.fromisoformat also takes, are refused: producers mean calendar dates.
_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}(?::\d{2}(?P<frac>\.\d+)?)?)"
    r"(?P<offset>[Zz]|[+-]\d{2}:\d{2})?",
    re.ASCII,
)
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
UUID_PATTERN = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def _parse_rfc3339(text: str, field: str) -> datetime:
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise InvalidInput.field(
            field, f"not an ISO-8601 timestamp (RFC 3339, YYYY-MM-DDTHH:MM:SS+00:00): {text[:64]!r}")
    frac = match["frac"] or ""
    clock = match["time"][: len(match["time"]) - len(frac)] + frac[:7]  # microseconds at most
    offset = match["offset"] or ""
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{match['date']}T{clock}{offset}")
    except ValueError:
        raise InvalidInput.field(field, f"not a valid date and time: {text[:64]!r}") from None


def check_day_text(value: str, field: str) -> str:
    """A calendar day written YYYY-MM-DD (no week or ordinal dates)."""
    text = value.strip()
    if _DAY.fullmatch(text) is None:
        raise InvalidInput.field(field, f"expected YYYY-MM-DD, got {value[:64]!r}")
    return text


def check_timestamp(value: Any, field: str) -> datetime:
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, str):
        ts = _parse_rfc3339(value.strip(), field)
    else:
        raise InvalidInput.field(field, f"expected an ISO-8601 string, got {type(value).__name__}")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise InvalidInput.field(field, "timestamp has no UTC offset (naive timestamps are refused)")
    ts = ts.astimezone(UTC)
    if not MIN_TS <= ts < MAX_TS:
        raise InvalidInput.field(field, f"timestamp out of range: {ts.isoformat()}")
    return ts


def check_number(
    value: Any, field: str, *, lo: float = 0.0, hi: float = 1e15, optional: bool = True
) -> float | None:
    if value is None:
        if optional:
            return None
        raise InvalidInput.field(field, "is required")
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise InvalidInput.field(field, f"expected a number, got {type(value).__name__}")
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        raise InvalidInput.field(field, "must be finite")
    if not lo <= number <= hi:
        raise InvalidInput.field(field, f"must be between {lo:g} and {hi:g}, got {number:g}")
    return number


def check_int(value: Any, field: str, *, lo: int = 0, hi: int = MAX_INT32, optional: bool = True) -> int | None:
    if value is None:
        if optional:
            return None
        raise InvalidInput.field(field, "is required")
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON producers may send 3.0 for 3
        else:
            raise InvalidInput.field(field, f"expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidInput.field(field, f"must be between {lo} and {hi}, got {value}")
    return int(value)


def check_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput.field(field, f"expected true or false, got {type(value).__name__}")
    return value


def check_json_object(value: Any, field: str, *, depth: int = 0) -> dict[str, Any]:
    """A JSON object storable in jsonb: string keys, finite numbers, no NUL characters."""
    if not isinstance(value, Mapping):
        raise InvalidInput.field(field, f"expected an object, got {type(value).__name__}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidInput.field(field, f"keys must be strings, got {type(key).__name__}")
        _check_storable(key, f"{field}.{key[:40]}")
        out[key] = _check_json_value(item, f"{field}.{key[:40]}", depth + 1)
    return out


def _check_json_value(value: Any, field: str, depth: int) -> Any:
    if depth > 16:
        raise InvalidInput.field(field, "nested too deeply")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_JSON_INT:
            raise InvalidInput.field(field, "integer out of range")
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise InvalidInput.field(field, "must be finite")
        return value
    if isinstance(value, str):
        _check_storable(value, field)
        return value
    if isinstance(value, Mapping):
        return check_json_object(value, field, depth=depth)
    if isinstance(value, (list, tuple)):
        return [_check_json_value(v, f"{field}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise InvalidInput.field(field, f"not a JSON value: {type(value).__name__}")


def _check_storable(text: str, field: str) -> None:
    # PostgreSQL text and jsonb cannot hold NUL, and psycopg cannot encode lone surrogates.
    if "\x00" in text:
        raise InvalidInput.field(field, "contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput.field(field, "is not valid UTF-8 text") from None


def reject_unknown(raw: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise InvalidInput.field(unknown[0], f"unknown field for {what} (allowed: {', '.join(sorted(allowed))})")
