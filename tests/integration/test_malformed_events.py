"""Every kind of malformed event is refused with InvalidInput and writes nothing."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import EventCounter, PipelineEvent
from tests.support.helpers import RECENT_DAY
from voicepipe.domain import EVENT_TYPES, STAGES
from voicepipe.errors import InvalidInput
from voicepipe.events.recording import record_event, record_events

VALID: dict[str, Any] = {
    "event_id": "6f1c1a56-0f7e-4a7b-9b7e-0c6f5f1f2a10",
    "event_type": "transcription_completed",
    "artifact_id": "0b5e7f4c-5d1a-4a7c-8e55-0a4f7d0d9b11",
    "organization_id": "org-1",
    "coach_id": "coach-1",
    "stage": "transcription",
    "occurred_at": f"{RECENT_DAY}T10:15:00+00:00",
    "duration_ms": 1234.5,
    "metadata": {"confidenceScore": 0.9, "aiCost": 0.01},
}

not_a_string = st.one_of(st.integers(), st.floats(), st.booleans(), st.lists(st.integers(), max_size=2),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
bad_numbers = st.one_of(
    st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
    st.sampled_from([math.nan, math.inf, -math.inf, True, False, 1e20]),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=1),
)
with_nul = st.text(max_size=10).map(lambda s: s + "\x00")

MUTATIONS = st.one_of(
    st.tuples(st.just("event_type"), st.text(max_size=30).filter(lambda s: s not in EVENT_TYPES)),
    st.tuples(st.just("event_type"), not_a_string),
    st.tuples(st.just("event_type"), st.none()),
    st.tuples(st.just("stage"), st.text(max_size=30).filter(lambda s: s not in STAGES)),
    st.tuples(st.just("stage"), not_a_string),
    st.tuples(st.just("occurred_at"), st.datetimes().map(lambda d: d.isoformat())),  # naive
    st.tuples(st.just("occurred_at"), st.text(max_size=20)),
    st.tuples(st.just("occurred_at"), not_a_string),
    st.tuples(st.just("duration_ms"), bad_numbers),
    st.tuples(st.just("event_id"), st.text(max_size=40)),
    st.tuples(st.just("event_id"), not_a_string),
    st.tuples(st.just("artifact_id"), st.text(min_size=1, max_size=40)),
    st.tuples(st.just("organization_id"), not_a_string),
    st.tuples(st.just("organization_id"), with_nul),
    st.tuples(st.just("organization_id"), st.text(min_size=256, max_size=300)),
    st.tuples(st.just("coach_id"), not_a_string),
    st.tuples(st.just("error_message"), with_nul),
    st.tuples(st.just("error_code"), not_a_string),
    st.tuples(st.just("metadata"), st.one_of(st.text(max_size=5), st.integers(), st.lists(st.integers(), max_size=2))),
    st.tuples(st.just("metadata"), st.fixed_dictionaries({"confidenceScore": bad_numbers | st.floats(min_value=1.0001,
                                                                                                     max_value=1e6)})),
    st.tuples(st.just("metadata"), st.fixed_dictionaries({"claimCount": st.one_of(st.integers(max_value=-1),
                                                                                  st.booleans(), st.floats(0.1, 0.9),
                                                                                  st.text(max_size=3))})),
    st.tuples(st.just("metadata"), st.fixed_dictionaries({"aiCost": bad_numbers})),
    st.tuples(st.just("metadata"), st.fixed_dictionaries({"note": with_nul})),
    st.tuples(st.just("metadata"), st.fixed_dictionaries({"nested": st.just({"x": math.nan})})),
    st.tuples(st.text(min_size=1, max_size=20).filter(lambda k: k not in VALID and k not in
              ("error_code", "error_message")), st.integers()),  # unknown field
)


def tables_are_empty(session: Session) -> bool:
    return (
        session.scalar(select(func.count()).select_from(PipelineEvent)) == 0
        and session.scalar(select(func.count()).select_from(EventCounter)) == 0
    )


def test_the_valid_base_event_is_accepted(session: Session) -> None:
    assert record_event(session, dict(VALID))
    session.rollback()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=MUTATIONS, batched=st.booleans())
def test_a_malformed_event_is_refused_naming_the_field_and_writes_nothing(
    session: Session, mutation: tuple[str, Any], batched: bool
) -> None:
    field, value = mutation
    event = dict(VALID)
    event[field] = value
    try:
        if batched:
            record_events(session, [dict(VALID, event_id=None), event])
        else:
            record_event(session, event)
    except InvalidInput as exc:
        assert field in str(exc), f"{exc} does not name {field}"
    else:
        raise AssertionError(f"accepted a malformed event: {field}={value!r}")
    finally:
        session.commit()
    assert tables_are_empty(session)
