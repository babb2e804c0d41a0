"""Window maths in one place: UTC hours and days, labels, argument parsing.

An hour window is [HH:00, HH+1:00) and a day [00:00, 24:00), both UTC; a window
is named by its start. Nothing here reads local time.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

from voicepipe.errors import InvalidInput
from voicepipe.validation import check_day_text, check_timestamp

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def floor_hour(ts: datetime) -> datetime:
    """The start of the UTC hour that contains ts (ts must be aware)."""
    if ts.tzinfo is None:
        raise ValueError("naive datetime")
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def floor_day(ts: datetime) -> datetime:
    return floor_hour(ts).replace(hour=0)


def hour_label(hour_start: datetime) -> str:
    """The `YYYY-MM-DD-HH` name of the UTC hour containing hour_start."""
    return floor_hour(hour_start).strftime("%Y-%m-%d-%H")


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def hours_of_day(day: date) -> list[datetime]:
    start = day_start(day)
    return [start + i * HOUR for i in range(24)]


def iter_hours(start: datetime, end: datetime) -> Iterator[datetime]:
    """Hour starts in [start, end), start floored to its hour."""
    h = floor_hour(start)
    while h < end:
        yield h
        h += HOUR


def closed_hours(now: datetime, horizon_hours: int) -> list[datetime]:
    """The closed hours within the horizon, oldest first; the newest is the previous hour."""
    current = floor_hour(now)
    return [current - i * HOUR for i in range(horizon_hours, 0, -1)]


def closed_days(now: datetime, horizon_days: int) -> list[date]:
    """The closed UTC days within the horizon, oldest first; the newest is yesterday."""
    today = floor_day(now).date()
    return [today - timedelta(days=i) for i in range(horizon_days, 0, -1)]


def parse_hour(value: object, field: str = "window_start") -> datetime:
    """An ISO-8601 UTC hour start; naive or non-aligned values are refused."""
    ts = check_timestamp(value, field)
    if ts != floor_hour(ts):
        raise InvalidInput.field(field, f"not the start of an hour: {value!r}")
    return ts


def parse_day(value: object, field: str = "day") -> date:
    """A `YYYY-MM-DD` day."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise InvalidInput.field(field, f"expected YYYY-MM-DD, got {type(value).__name__}")
    text = check_day_text(value, field)  # refuses week dates such as 2026-W48-1
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInput.field(field, f"not a valid day: {value[:64]!r}") from None
