"""Malformed arguments to public tasks, through a real worker: InvalidInput, nothing changed.

Each public task maps to a strategy of argument sets that must be refused. Adding
a task is one line in REFUSED (pipeline and retry tasks join when they land).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.support.helpers import RECENT_DAY, Proc
from voicepipe.domain import EVENT_TYPES, STAGES

pytestmark = pytest.mark.slow

EVENT: dict[str, Any] = {
    "event_id": "6f1c1a56-0f7e-4a7b-9b7e-0c6f5f1f2a10", "event_type": "transcription_completed",
    "organization_id": "org-1", "stage": "transcription", "occurred_at": f"{RECENT_DAY}T10:15:00+00:00",
    "duration_ms": 1234.5,
}
ORGANIZATION: dict[str, Any] = {"id": "org-1", "name": "Club"}
# Not staff: without VOICEPIPE_DIRECTORY_SECRET an unsigned message cannot grant it (tests/integration/test_staff.py).
USER: dict[str, Any] = {"id": "staff-1", "email": "staff@example.org", "is_platform_staff": False}

not_text = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
                     st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                          max_size=2))
bad_number = st.one_of(st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False), st.text(max_size=4),
                       st.sampled_from([True, [1], {"a": 1}]))
unknown_key = st.text(st.characters(categories=["Ll"]), min_size=3, max_size=12)


def mutated(base: dict[str, Any], field: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return values.map(lambda v: {**base, field: v})


def without(base: dict[str, Any], fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.sampled_from(fields).map(lambda f: {k: v for k, v in base.items() if k != f})


def extra(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return unknown_key.filter(lambda k: k not in base and k not in ("metadata", "coach_id", "artifact_id",
                                                                     "error_code", "error_message")
                              ).map(lambda k: {**base, k: 1})


bad_event = st.one_of(
    mutated(EVENT, "event_type", st.one_of(st.text(max_size=20).filter(lambda s: s not in EVENT_TYPES),
                                           not_text)),
    mutated(EVENT, "stage", st.text(min_size=1, max_size=10).filter(lambda s: s not in STAGES)),
    mutated(EVENT, "occurred_at", st.one_of(st.datetimes().map(lambda d: d.isoformat()),
                                            st.text(max_size=10), st.integers())),
    mutated(EVENT, "duration_ms", st.one_of(bad_number, st.just(math.inf))),
    mutated(EVENT, "event_id", st.one_of(st.text(min_size=1, max_size=10), st.integers())),
    mutated(EVENT, "organization_id", st.one_of(st.integers(), st.text(min_size=256, max_size=260))),
    extra(EVENT),
)

# task name -> kwargs it must refuse (one line per public task).
REFUSED: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "voicepipe.events.record": bad_event,
    "voicepipe.events.record_batch": st.one_of(
        bad_event.map(lambda e: {"events": [{**EVENT, "event_id": None}, e]}),
        st.fixed_dictionaries({"events": st.one_of(not_text.filter(lambda v: not isinstance(v, list)),
                                                   st.lists(not_text, min_size=1, max_size=2))}),
        st.just({}), extra({"events": []})),
    "voicepipe.directory.upsert_organization": st.one_of(
        mutated(ORGANIZATION, "id", st.one_of(st.integers(), st.just(""), st.text(min_size=256, max_size=260))),
        mutated(ORGANIZATION, "name", st.one_of(st.integers(), st.none(), st.lists(st.text(), max_size=1))),
        without(ORGANIZATION, ["id", "name"]), extra(ORGANIZATION)),
    "voicepipe.directory.upsert_user": st.one_of(
        mutated(USER, "id", st.one_of(st.integers(), st.just(""))),
        mutated(USER, "email", st.one_of(st.integers(), st.none())),
        mutated(USER, "is_platform_staff", st.one_of(st.text(max_size=5), st.integers(2, 9), st.none())),
        without(USER, ["id", "email", "is_platform_staff"]), extra(USER)),
}

TABLES = ("pipeline_events", "event_counters", "organizations", "users", "ai_usage_log")


def fingerprint(session: Session) -> dict[str, str | None]:
    session.rollback()
    return {table: session.scalar(text(f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                                       f"FROM {table} t")) for table in TABLES}


@pytest.mark.parametrize("task_name", sorted(REFUSED))
def test_malformed_arguments_are_refused_with_invalid_input_and_change_nothing(
    task_name: str, start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    worker = start_worker(queues="pipeline")
    # Existing rows that a wrong upsert or record could change.
    for name, kwargs in (("voicepipe.directory.upsert_organization", ORGANIZATION),
                         ("voicepipe.directory.upsert_user", USER),
                         ("voicepipe.events.record", {**EVENT, "event_id": None})):
        client.send_task(name, kwargs=kwargs, queue="pipeline", ignore_result=False).get(timeout=30)
    before = fingerprint(session)
    assert all(before[t] for t in ("pipeline_events", "organizations", "users"))

    @settings(max_examples=15, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(kwargs=REFUSED[task_name])
    def refused(kwargs: dict[str, Any]) -> None:
        result = client.send_task(task_name, kwargs=kwargs, queue="pipeline", ignore_result=False)
        with pytest.raises(Exception) as excinfo:
            result.get(timeout=30)
        assert type(excinfo.value).__name__ == "InvalidInput", f"{kwargs!r}: {excinfo.value!r}"
        assert result.state == "FAILURE"
        assert fingerprint(session) == before, f"{task_name}({kwargs!r}) changed rows"

    refused()
    positional = client.send_task(task_name, args=[1], queue="pipeline", ignore_result=False)
    with pytest.raises(Exception) as excinfo:
        positional.get(timeout=30)
    assert type(excinfo.value).__name__ == "InvalidInput"
    assert "Retry in" not in worker.log()  # refusals are never retried
    assert fingerprint(session) == before
