"""The plain-event path of parse_event accepts only what the full checks accept, as the same Event.

voicepipe.events.schema answers the common event shape with fewer checks and hands anything
else to the full ones; a difference between the two would let an event in that the contract
refuses, or store it differently. Each case here goes through both, on values at and around
every bound.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import data
from voicepipe.domain import EVENT_TYPES, METADATA_INTS, METADATA_NUMBERS, METADATA_TEXTS, STAGES
from voicepipe.errors import InvalidInput
from voicepipe.events.schema import MAX_DURATION_MS, MAX_END_TO_END_MS, Event, _parse_checked, _parse_plain
from voicepipe.settings import get_settings
from voicepipe.timebounds import event_time_bounds

NOW = datetime.now(UTC).replace(microsecond=0)
OLDEST, NEWEST = event_time_bounds(NOW)
ID = "0b8f1c7e-5a4d-4c3b-9e2f-1a2b3c4d5e6f"
TEXTS = ["org-1", "", " ", "x" * 255, "x" * 256, "a\x00b", "a\tb", "é", "a\u200bb", "a\ud800", "\x7f", 7, True]
NUMBERS = [0, -1, 0.5, 1, 1.0, 3.0, 1.5, 2**31 - 1, 2**31, 2**63, -0.0, math.nan, math.inf, -math.inf, True, False,
           Decimal("0.25"), "1", MAX_DURATION_MS, math.nextafter(MAX_DURATION_MS, math.inf), MAX_END_TO_END_MS,
           math.nextafter(MAX_END_TO_END_MS, math.inf), 1e9, 1e9 + 1, 1_000_000.0, 1_000_000.5, None]


def _stamp(at: datetime, form: str) -> str:
    text = at.isoformat()  # YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00
    return {"plain": text, "z": text[:-6] + "Z", "lower z": text[:-6] + "z", "space": text.replace("T", " "),
            "naive": text[:-6], "+02:00": (at + timedelta(hours=2)).isoformat()[:-6] + "+02:00",
            "nanoseconds": text[:19] + ".123456789Z", "padded": f" {text} ", "minutes": text[:16] + "Z",
            "week date": "2026-W48-1T10:00:00Z"}[form]


TIMES = [NOW, NOW - timedelta(hours=5, microseconds=7), OLDEST, OLDEST - timedelta(microseconds=1), NEWEST,
         NEWEST + timedelta(microseconds=1), datetime(1999, 12, 31, tzinfo=UTC)]
FORMS = ["plain", "z", "lower z", "space", "naive", "+02:00", "nanoseconds", "padded", "minutes", "week date"]
scalars = st.sampled_from(NUMBERS + TEXTS + ["aiModel-1", None])
metadata_values = scalars | scalars | scalars | st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2),
    max_leaves=3,
)
metadata = st.dictionaries(
    st.sampled_from([*METADATA_INTS, *METADATA_NUMBERS, *METADATA_TEXTS, "note", "é", "a\x00", "n"]),
    metadata_values, max_size=4,
)


@st.composite
def events(draw: Any) -> dict[str, Any]:
    candidates: dict[str, Any] = {
        "event_id": st.sampled_from([ID, ID.upper(), uuid.UUID(ID), "{" + ID + "}", ID[:-1], 5]),
        "event_type": st.sampled_from([*EVENT_TYPES, "nope", 3]),
        "artifact_id": st.sampled_from([ID, ID.replace("-", ""), uuid.UUID(ID), None]),
        "organization_id": st.sampled_from([*TEXTS, None]),
        "coach_id": st.sampled_from([*TEXTS, None]),
        "stage": st.sampled_from([*STAGES, "singing", 1, None]),
        "occurred_at": st.builds(_stamp, st.sampled_from(TIMES), st.sampled_from(FORMS))
        | st.sampled_from([NOW, None, 1_700_000_000]),
        "duration_ms": st.sampled_from(NUMBERS),
        "error_code": st.sampled_from([*TEXTS, None]),
        "error_message": st.sampled_from([*TEXTS, "m" * 10_000, "m" * 10_001, None]),
        "metadata": metadata | st.sampled_from([None, [1], "x"]),
        "colour": st.just("red"),
    }
    # Good values but for one or two fields, so that the plain path is taken often enough.
    fields = draw(st.lists(st.sampled_from(sorted(candidates)), unique=True, max_size=2))
    good = {"event_id": ID, "event_type": draw(st.sampled_from(EVENT_TYPES)), "organization_id": "org-1",
            "occurred_at": _stamp(NOW, "plain"), "metadata": {"aiCost": 0.5, "claimCount": 3}}
    return {**good, **{name: draw(candidates[name]) for name in fields}}


def same(raw: dict[str, Any]) -> Event | None:
    """What the plain path gave, after checking the full checks accept it as the same Event."""
    plain = _parse_plain(raw, NOW)
    if plain is None:
        return None
    try:
        checked = _parse_checked(raw, NOW)
    except InvalidInput as exc:
        raise AssertionError(f"the plain path accepted what the full checks refuse ({exc}): {raw!r}") from None
    if raw.get("event_id") is None:  # each path draws a fresh uuid4
        checked = checked._replace(event_id=plain.event_id)
    assert plain == checked, raw
    assert [type(v) for v in plain.metadata.values()] == [type(v) for v in checked.metadata.values()], raw
    assert type(plain.duration_ms) is type(checked.duration_ms), raw
    return plain


GOOD = {"event_id": ID, "event_type": "claims_extracted", "organization_id": "org-1", "coach_id": "coach-1",
        "stage": "claims_extraction", "occurred_at": _stamp(NOW, "plain"), "duration_ms": 1200.5,
        "metadata": {"aiCost": 0.5, "claimCount": 3, "aiModel": "m-1", "note": "n"}}
# Every value above, alone in an otherwise good event: in each field and each kind of metadata key.
ONE_CHANGE = [
    *({**GOOD, name: value} for name in ("event_id", "artifact_id", "organization_id", "coach_id", "stage",
                                         "duration_ms", "error_code", "error_message")
      for value in [*TEXTS, *NUMBERS, ID, ID.upper(), uuid.UUID(ID), ID[:-1], *STAGES]),
    *({**GOOD, "event_type": event_type, "duration_ms": value} for event_type in ("artifact_completed", "nope")
      for value in NUMBERS),
    *({**GOOD, "occurred_at": _stamp(at, form)} for at in TIMES for form in FORMS),
    *({**GOOD, "metadata": {**GOOD["metadata"], key: value}} for key in ("claimCount", "aiCost", "confidenceScore",
                                                                        "aiModel", "note", "é", "a\x00")
      for value in [*TEXTS, *NUMBERS, [1], {"a": 1}]),
]


def test_every_single_change_to_a_good_event() -> None:
    accepted = [same(raw) for raw in ONE_CHANGE]
    assert sum(event is not None for event in accepted) > 150  # the plain path is exercised (181 of 818)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_the_plain_path_accepts_only_what_the_full_checks_accept_and_gives_the_same_event(raw: dict) -> None:
    same(raw)


def test_plain_events_take_the_plain_path() -> None:
    # The bench's events, as producers send them: every one goes the short way.
    sample = data.events(2000, NOW - timedelta(days=1), timedelta(hours=20), orgs=50, seed=3)
    assert all(same(raw) is not None for raw in sample)
    assert same({"event_type": "artifact_received"}) is not None
    at_limit = {"event_type": "artifact_received",
                "metadata": {"note": "x" * (get_settings().max_metadata_bytes - len('{"note":""}'))}}
    assert same(at_limit) is not None
    assert same({**at_limit, "metadata": {"note": at_limit["metadata"]["note"] + "x"}}) is None


def test_the_rest_goes_to_the_full_checks() -> None:
    # Valid, but not plain: the full checks decide (and accept).
    for raw in (
        {"event_type": "artifact_received", "organization_id": "équipe"},
        {"event_type": "artifact_received", "occurred_at": _stamp(NOW, "+02:00")},
        {"event_type": "artifact_received", "occurred_at": _stamp(NOW, "nanoseconds")},
        {"event_type": "artifact_received", "occurred_at": NOW},
        {"event_type": "artifact_received", "metadata": {"nested": {"a": [1]}}},
        {"event_type": "artifact_received", "duration_ms": Decimal("1.5")},
        {"event_type": "artifact_received", "event_id": uuid.UUID(ID)},
    ):
        assert _parse_plain(raw, NOW) is None
        _parse_checked(raw, NOW)
