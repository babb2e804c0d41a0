from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from voicepipe.errors import InvalidInput
from voicepipe.windows import closed_days, closed_hours, hour_label, hours_of_day, parse_day, parse_hour


def test_hour_label_is_utc() -> None:
    ts = datetime(2026, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=3)))
    assert hour_label(ts) == "2026-02-28-22"


def test_closed_hours_end_with_the_previous_hour() -> None:
    now = datetime(2026, 3, 1, 5, 30, tzinfo=UTC)
    hours = closed_hours(now, 3)
    assert hours == [datetime(2026, 3, 1, h, tzinfo=UTC) for h in (2, 3, 4)]


def test_closed_days_end_with_yesterday() -> None:
    now = datetime(2026, 3, 1, 1, 30, tzinfo=UTC)
    assert closed_days(now, 2) == [date(2026, 2, 27), date(2026, 2, 28)]


def test_hours_of_day() -> None:
    hours = hours_of_day(date(2026, 3, 1))
    assert len(hours) == 24 and hours[0] == datetime(2026, 3, 1, tzinfo=UTC)
    assert hours[-1] == datetime(2026, 3, 1, 23, tzinfo=UTC)


def test_parse_hour_accepts_aligned_utc_hours_in_any_offset() -> None:
    assert parse_hour("2026-03-01T05:00:00Z") == datetime(2026, 3, 1, 5, tzinfo=UTC)
    assert parse_hour("2026-03-01T07:00:00+02:00") == datetime(2026, 3, 1, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("2026-03-01T05:00:00", "no UTC offset"),
        ("2026-03-01T05:30:00+00:00", "not the start of an hour"),
        ("yesterday", "not an ISO-8601"),
        (12, "expected an ISO-8601 string"),
    ],
)
def test_parse_hour_refuses(value: object, problem: str) -> None:
    with pytest.raises(InvalidInput, match=f"window_start: .*{problem}"):
        parse_hour(value)


@pytest.mark.parametrize("value", ["2026-3-1", "2026-02-30", "20260301", None, "2026-03-01T00:00"])
def test_parse_day_refuses(value: object) -> None:
    with pytest.raises(InvalidInput, match="day: "):
        parse_day(value)
