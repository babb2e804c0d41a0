"""contract/tasks/*.schema.json against the validation the tasks run: same verdict, good and bad.

The tasks whose validation needs no database (events, usage, windows, the beat wrappers) are
compared here case by case and with hypothesis; the others (ingest, stages, retries,
directory) through a real worker in tests/integration/test_task_schemas_worker.py.
What a static schema cannot say (times relative to now, cached <= input tokens, ...) is
listed in each schema's x-not-expressed and kept out of the generated cases, except in
test_what_the_schema_cannot_say_is_listed_and_refused_by_the_task, which pins that the
task refuses it.
"""

from __future__ import annotations

import inspect
import json
import re
import string
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.helpers import REPO_ROOT
from voicepipe import client, contract
from voicepipe.domain import EVENT_TYPES, METADATA_INTS, METADATA_NUMBERS, METADATA_TEXTS, STAGES
from voicepipe.errors import InvalidInput
from voicepipe.events.recording import parse_events
from voicepipe.events.schema import parse_event
from voicepipe.settings import get_settings
from voicepipe.usage.recording import parse_usage
from voicepipe.windows import parse_day, parse_hour
from worker.declare import check_batch_size, take
from worker.routes import TASK_QUEUES

NOW = datetime.now(UTC).replace(microsecond=0)
SCHEMAS = {name: json.loads((REPO_ROOT / contract.SCHEMA_DIR / f"{name}.schema.json").read_text())
           for name in TASK_QUEUES}
NO_ARGUMENTS = ("voicepipe.metrics.aggregate_hourly_due", "voicepipe.metrics.aggregate_daily_due",
                "voicepipe.usage.aggregate_daily_due", "voicepipe.maintenance.cleanup",
                "voicepipe.maintenance.requeue_stalled", "voicepipe.alerts.evaluate")


def _usage_batch(kwargs: Mapping[str, Any]) -> None:
    # tasks/usage.py record_batch's checks, then record_usage's per-row parse.
    records = take(kwargs, required=("records",))["records"]
    if not isinstance(records, list):
        raise InvalidInput.field("records", "expected a list of AI usage records")
    check_batch_size("records", records)
    for record in records:
        parse_usage(record, now=NOW)


def _event_batch(kwargs: Mapping[str, Any]) -> None:
    events = take(kwargs, required=("events",))["events"]
    check_batch_size("events", events)
    parse_events(events, now=NOW)


# The validation each task runs before touching the database (the task bodies, tasks/*.py).
VALIDATION: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "voicepipe.events.record": lambda kw: parse_event(kw, now=NOW),
    "voicepipe.events.record_batch": _event_batch,
    "voicepipe.usage.record": lambda kw: parse_usage(kw, now=NOW),
    "voicepipe.usage.record_batch": _usage_batch,
    "voicepipe.metrics.aggregate_hour": lambda kw: parse_hour(take(kw, required=("window_start",))["window_start"]),
    "voicepipe.metrics.aggregate_day": lambda kw: parse_day(take(kw, required=("day",))["day"]),
    "voicepipe.usage.aggregate_day": lambda kw: parse_day(take(kw, required=("day",))["day"]),
    **{name: (lambda kw: take(kw)) for name in NO_ARGUMENTS},
}


def task_accepts(name: str, kwargs: Any) -> bool:
    try:
        VALIDATION[name](kwargs)
    except InvalidInput:
        return False
    return True


def schema_accepts(name: str, kwargs: Any) -> bool:
    return bool(jsonschema.Draft202012Validator(SCHEMAS[name]).is_valid(kwargs))


def agree(name: str, kwargs: Any) -> bool:
    verdict = schema_accepts(name, kwargs)
    assert verdict == task_accepts(name, kwargs), f"{name}: schema says {verdict} for {kwargs!r}"
    return verdict


# ---------------------------------------------------------------- the files


def test_the_schema_files_are_current() -> None:
    assert contract.differences(REPO_ROOT) == [], "run `voicepipe contract --write`"


def test_one_valid_draft_2020_12_schema_per_public_task_with_its_queue() -> None:
    files = sorted(p.name for p in (REPO_ROOT / contract.SCHEMA_DIR).glob("*.schema.json"))
    assert files == sorted(f"{name}.schema.json" for name in TASK_QUEUES)
    for name, schema in SCHEMAS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["title"] == name and schema["x-queue"] == TASK_QUEUES[name]
        assert schema["type"] == "object" and schema["additionalProperties"] is False


def test_the_producer_helper_knows_the_workers_names_and_queues() -> None:
    assert client.TASK_QUEUES == TASK_QUEUES


def test_the_check_command_fails_on_a_stale_or_missing_file(tmp_path: Any) -> None:
    assert contract.write(tmp_path) == sorted(f"{name}.schema.json" for name in TASK_QUEUES)
    assert contract.differences(tmp_path) == []
    path = tmp_path / contract.SCHEMA_DIR / "voicepipe.events.record.schema.json"
    path.write_text(path.read_text().replace('"maxLength": 255', '"maxLength": 256', 1))
    (tmp_path / contract.SCHEMA_DIR / "voicepipe.usage.record.schema.json").unlink()
    (tmp_path / contract.SCHEMA_DIR / "voicepipe.gone.schema.json").write_text("{}")
    assert contract.differences(tmp_path) == [
        "contract/tasks/voicepipe.gone.schema.json: no such public task (stale file)",
        "contract/tasks/voicepipe.events.record.schema.json: out of date",
        "contract/tasks/voicepipe.usage.record.schema.json: missing",
    ]


# ---------------------------------------------------------------- fixed cases

RECENT = (NOW - timedelta(days=1)).isoformat()
UUID = "0b8f1c7e-5a4d-4c3b-9e2f-1a2b3c4d5e6f"
EVENT_CASES: list[tuple[dict[str, Any], bool]] = [
    ({"event_type": "artifact_received"}, True),
    ({"event_type": "artifact_received", "occurred_at": RECENT, "organization_id": "org-1",
      "coach_id": None, "stage": None, "metadata": {"claimCount": 3.0, "anything": [1, {"a": None}]}}, True),
    ({"event_type": "transcription_completed", "stage": "transcription", "duration_ms": 1200.5,
      "artifact_id": UUID.upper(), "event_id": UUID}, True),
    ({"event_type": "artifact_completed", "duration_ms": 40 * 24 * 3600 * 1000.0}, True),
    ({"event_type": "transcription_completed", "duration_ms": 40 * 24 * 3600 * 1000.0}, False),
    ({"event_type": "artifact_exploded"}, False),
    ({}, False),
    ({"event_type": "artifact_received", "colour": "red"}, False),
    ({"event_type": "artifact_received", "occurred_at": RECENT[:19]}, False),  # naive
    ({"event_type": "artifact_received", "occurred_at": "2026-W48-1T10:00:00+00:00"}, False),
    ({"event_type": "artifact_received", "occurred_at": f"{NOW.year}-02-30T10:00:00Z"}, False),
    ({"event_type": "artifact_received", "duration_ms": -5}, False),
    ({"event_type": "artifact_received", "duration_ms": True}, False),
    ({"event_type": "artifact_received", "organization_id": "   "}, False),
    ({"event_type": "artifact_received", "organization_id": "a\x00b"}, False),
    ({"event_type": "artifact_received", "organization_id": "x" * 256}, False),
    ({"event_type": "artifact_received", "artifact_id": "{" + UUID + "}"}, False),
    ({"event_type": "artifact_received", "artifact_id": UUID.replace("-", "")}, False),
    ({"event_type": "artifact_received", "artifact_id": UUID + "\n"}, False),
    ({"event_type": "artifact_received", "stage": "singing"}, False),
    ({"event_type": "artifact_received", "metadata": {"confidenceScore": 1.5}}, False),
    ({"event_type": "artifact_received", "metadata": {"claimCount": 1.5}}, False),
    ({"event_type": "artifact_received", "metadata": [1]}, False),
    ({"event_type": "artifact_received", "error_code": "e" * 256}, False),
]
USAGE = {"organization_id": "org-1", "operation": "transcribe", "model": "whisper-1", "cost": 0.002}
USAGE_CASES: list[tuple[dict[str, Any], bool]] = [
    (USAGE, True),
    ({**USAGE, "input_tokens": 10, "cached_tokens": 4, "output_tokens": 3, "occurred_at": RECENT,
      "id": UUID, "coach_id": "c", "player_id": None}, True),
    ({**USAGE, "cost": None}, False),
    ({k: v for k, v in USAGE.items() if k != "model"}, False),
    ({**USAGE, "model": " "}, False),
    ({**USAGE, "input_tokens": None}, False),  # missing means 0; null is refused by name
    ({**USAGE, "output_tokens": -1}, False),
    ({**USAGE, "input_tokens": 2**40 + 1}, False),
    ({**USAGE, "cost": "0.1"}, False),
    ({**USAGE, "unknown": 1}, False),
]
DAY_CASES = [("2026-11-30", True), (" 2024-02-29 ", True), ("0004-02-29", True), ("2023-02-29", False),
             ("1900-02-29", False), ("2000-02-29", True), ("0000-01-01", False), ("2026-13-01", False),
             ("2026-04-31", False), ("2026-W48-1", False), ("20261130", False), ("2026-11-30T00:00", False),
             (20261130, False), (None, False)]
HOUR_CASES = [("2026-11-30T10:00:00Z", True), ("2026-11-30 10:00+00:00", True), ("2026-11-30T10:00:00.000Z", True),
              ("2026-11-30T15:00:00+05:00", True), ("2026-11-30T10:30:00Z", False),
              ("2026-11-30T10:00:01Z", False), ("2026-11-30T10:00:00", False), ("2026-11-30T10:00:00.5Z", False),
              ("2026-11-30T10:00:00+05:30", False), ("1999-12-31T10:00:00Z", False), ("2100-01-01T00:00:00Z", False),
              (1_700_000_000, False)]


@pytest.mark.parametrize(("kwargs", "accepted"), EVENT_CASES, ids=range(len(EVENT_CASES)))
def test_event_cases(kwargs: dict[str, Any], accepted: bool) -> None:
    assert agree("voicepipe.events.record", kwargs) is accepted
    assert agree("voicepipe.events.record_batch", {"events": [kwargs]}) is accepted


@pytest.mark.parametrize(("kwargs", "accepted"), USAGE_CASES, ids=range(len(USAGE_CASES)))
def test_usage_cases(kwargs: dict[str, Any], accepted: bool) -> None:
    assert agree("voicepipe.usage.record", kwargs) is accepted
    assert agree("voicepipe.usage.record_batch", {"records": [kwargs]}) is accepted


@pytest.mark.parametrize(("day", "accepted"), DAY_CASES)
def test_day_cases(day: Any, accepted: bool) -> None:
    for name in ("voicepipe.metrics.aggregate_day", "voicepipe.usage.aggregate_day"):
        assert agree(name, {"day": day}) is accepted


@pytest.mark.parametrize(("hour", "accepted"), HOUR_CASES)
def test_hour_cases(hour: Any, accepted: bool) -> None:
    assert agree("voicepipe.metrics.aggregate_hour", {"window_start": hour}) is accepted


@pytest.mark.parametrize("name", NO_ARGUMENTS)
def test_the_beat_wrappers_take_nothing(name: str) -> None:
    assert agree(name, {}) is True
    assert agree(name, {"now": RECENT}) is False


def test_batches_are_lists_of_at_most_the_default_batch_size() -> None:
    assert agree("voicepipe.events.record_batch", {"events": []}) is True
    assert agree("voicepipe.events.record_batch", {"events": {"event_type": "artifact_received"}}) is False
    assert agree("voicepipe.usage.record_batch", {"records": "nope"}) is False
    limit = contract.DEFAULT_MAX_BATCH_SIZE
    assert agree("voicepipe.usage.record_batch", {"records": [USAGE] * limit}) is True
    assert agree("voicepipe.usage.record_batch", {"records": [USAGE] * (limit + 1)}) is False


def test_what_the_schema_cannot_say_is_listed_and_refused_by_the_task() -> None:
    old = (NOW - timedelta(days=400)).isoformat()
    future = (NOW + timedelta(days=2)).isoformat()
    cases = [
        ("voicepipe.events.record", {"event_type": "artifact_received", "occurred_at": old}, "retention"),
        ("voicepipe.events.record", {"event_type": "artifact_received", "occurred_at": future}, "future"),
        ("voicepipe.usage.record", {**USAGE, "occurred_at": future}, "future"),
        ("voicepipe.usage.record", {**USAGE, "input_tokens": 1, "cached_tokens": 2}, "cached_tokens"),
        ("voicepipe.events.record", {"event_type": "artifact_received", "metadata": {"a": "\x00"}}, "NUL"),
        ("voicepipe.metrics.aggregate_hour", {"window_start": "2000-01-01T00:00:00+01:00"}, "2000-01-01"),
    ]
    for name, kwargs, listed in cases:
        assert schema_accepts(name, kwargs), (name, kwargs)
        assert not task_accepts(name, kwargs), (name, kwargs)
        assert any(listed in note for note in SCHEMAS[name]["x-not-expressed"]), (name, listed)
    # The schema is stricter only where it says so: a half-hour offset naming an hour start.
    assert task_accepts("voicepipe.metrics.aggregate_hour", {"window_start": "2026-11-30T10:30:00+05:30"})
    assert not schema_accepts("voicepipe.metrics.aggregate_hour", {"window_start": "2026-11-30T10:30:00+05:30"})


# ---------------------------------------------------------------- hypothesis

GOOD_IDS = st.one_of(st.sampled_from(["org-1", "coach 7", "ü-ß", "x" * 255]),
                     st.text(alphabet=st.characters(exclude_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=8))
BAD_IDS = st.one_of(st.sampled_from(["", " ", "\t\n", "\u00a0", "a\x00", "x" * 256]), st.integers(), st.booleans(),
                    st.lists(st.integers(), max_size=1))
GOOD_UUIDS = st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()))
BAD_UUIDS = st.one_of(st.uuids().map(lambda u: u.hex), st.uuids().map(lambda u: "{" + str(u) + "}"),
                      st.uuids().map(lambda u: str(u) + "\n"), st.uuids().map(lambda u: "urn:uuid:" + str(u)),
                      st.text(alphabet="0123456789abcdefg-", max_size=40), st.integers())


@st.composite
def times(draw: st.DrawFn, *, lo: timedelta, hi: timedelta, hours: bool = False, broken: bool = True) -> Any:
    """RFC 3339 texts of instants between NOW - lo and NOW - hi in every accepted spelling (or a broken one)."""
    instant = NOW - draw(st.timedeltas(min_value=hi, max_value=lo))
    whole_hours = [0, 0, 60, -300, 23 * 60]
    offset = timedelta(minutes=draw(st.sampled_from(whole_hours if hours else [*whole_hours, 330, 23 * 60 + 59])))
    if hours:
        instant = instant.replace(minute=0, second=0, microsecond=0)
    local = (instant + offset).replace(tzinfo=None)
    date_part = local.date().isoformat()
    clock = local.strftime("%H:%M") if draw(st.booleans()) else local.strftime("%H:%M:%S")
    if len(clock) == 8 and draw(st.booleans()):
        digits = draw(st.integers(1, 9))
        clock += "." + ("0" * digits if hours else str(draw(st.integers(0, 10**digits - 1))).zfill(digits))
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    numeric = f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    zone = draw(st.sampled_from(["Z", "z", numeric])) if minutes == 0 else numeric
    text = f"{date_part}{draw(st.sampled_from(['T', 't', ' ']))}{clock}{zone}"
    if not broken:
        return text
    breakage = draw(st.sampled_from([None] * 8 + ["naive", "slashes", "hour25", "compact", "pad", "minute",
                                                  "feb30", "garbage"]))
    if breakage == "naive":
        text = f"{date_part}T{clock}"
    elif breakage == "slashes":
        text = text.replace("-", "/", 2)
    elif breakage == "hour25":
        text = f"{date_part}T25:00{zone}"
    elif breakage == "compact":
        text = text.replace("-", "", 2)
    elif breakage == "pad":
        text = f"  {text}\n"
    elif breakage == "minute":
        text = text[:14] + "07" + text[16:]
    elif breakage == "feb30":
        text = f"{date_part[:4]}-02-30" + text[10:]
    elif breakage == "garbage":
        return draw(st.one_of(st.text(max_size=12), st.integers(), st.none()))
    return text


# Lone surrogates cannot travel as JSON text to a worker; NUL is refused (tested separately).
STORABLE_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53),
                      st.floats(allow_nan=False, allow_infinity=False),
                      st.text(alphabet=STORABLE_CHARS,
                              max_size=5))
BAD_NUMBERS = st.one_of(st.integers(-5, -1), st.floats(max_value=-0.001, allow_nan=False, allow_infinity=False),
                        st.booleans(), st.text(max_size=3), st.lists(st.integers(), max_size=1))
GOOD_TEXTS = st.one_of(st.none(), st.text(alphabet=STORABLE_CHARS,
                                          max_size=6), st.just("x" * 255))
BAD_TEXTS = st.one_of(st.just("x" * 256), st.just("a\x00"), st.integers(), st.booleans())


def good_metadata_value(key: str) -> st.SearchStrategy[Any]:
    if key in METADATA_INTS:
        return st.one_of(st.integers(0, 2**31 - 1), st.just(3.0), st.none())
    if key in METADATA_NUMBERS:
        hi = 1.0 if key == "confidenceScore" else 1e6 if key == "aiCost" else 1e9
        return st.one_of(st.floats(0, hi), st.integers(0, int(hi)), st.none())
    return GOOD_TEXTS


def bad_metadata_value(key: str) -> st.SearchStrategy[Any]:
    if key in METADATA_INTS:
        return st.one_of(st.integers(2**31, 2**40), st.just(2.5), BAD_NUMBERS)
    if key in METADATA_NUMBERS:
        hi = 1.0 if key == "confidenceScore" else 1e6 if key == "aiCost" else 1e9
        return st.one_of(st.floats(hi * 1.01, hi * 100), BAD_NUMBERS)
    return BAD_TEXTS


META_KEYS = [*METADATA_INTS, *METADATA_NUMBERS, *METADATA_TEXTS]


@st.composite
def metadata(draw: st.DrawFn, bad: bool) -> Any:
    keys = draw(st.lists(st.sampled_from(META_KEYS), unique=True, max_size=4))
    value = {key: draw(good_metadata_value(key)) for key in keys}
    value.update(draw(st.dictionaries(st.text(alphabet=string.ascii_letters, min_size=1, max_size=4).filter(
        lambda k: k not in META_KEYS), st.one_of(JSON_LEAF, st.lists(JSON_LEAF, max_size=2)), max_size=2)))
    if bad:
        key = draw(st.sampled_from(META_KEYS))
        return draw(st.one_of(st.just({**value, key: draw(bad_metadata_value(key))}),
                              st.lists(JSON_LEAF, max_size=1), st.text(max_size=2)))
    return draw(st.one_of(st.just(value), st.none()))


@st.composite
def payloads(draw: st.DrawFn, good: Mapping[str, st.SearchStrategy[Any]], bad: Mapping[str, st.SearchStrategy[Any]],
             required: tuple[str, ...]) -> dict[str, Any]:
    """Good values for the required and a random subset of the optional fields; then at most one fault."""
    optional = [name for name in good if name not in required]
    chosen = [*required, *draw(st.lists(st.sampled_from(optional), unique=True))]
    value = {name: draw(good[name]) for name in chosen}
    fault = draw(st.sampled_from([None, None, "bad", "bad", "bad", "missing", "unknown"]))
    if fault == "bad":
        name = draw(st.sampled_from(sorted(bad)))
        value[name] = draw(bad[name])
    elif fault == "missing" and required:
        del value[draw(st.sampled_from(required))]
    elif fault == "unknown":
        value[draw(st.sampled_from(["colour", "eventType", "Event_id"]))] = 1
    return value


RECENT_TIMES = times(lo=timedelta(days=30), hi=timedelta(0))
EVENTS = payloads(
    good={"event_id": GOOD_UUIDS, "artifact_id": GOOD_UUIDS | st.none(),
          "event_type": st.sampled_from(EVENT_TYPES), "organization_id": GOOD_IDS | st.none(),
          "coach_id": GOOD_IDS | st.none(), "stage": st.one_of(st.sampled_from(STAGES), st.none()),
          "occurred_at": times(lo=timedelta(days=30), hi=timedelta(0), broken=False) | st.none(),
          "duration_ms": st.one_of(st.floats(0, 2.5e9), st.integers(0, 10**9), st.none()),
          "error_code": GOOD_TEXTS, "error_message": GOOD_TEXTS, "metadata": metadata(bad=False)},
    bad={"event_id": BAD_UUIDS, "artifact_id": BAD_UUIDS,
         "event_type": st.one_of(st.sampled_from(["", "artifact", "ARTIFACT_RECEIVED"]), st.integers(), st.none()),
         "organization_id": BAD_IDS, "coach_id": BAD_IDS,
         "stage": st.one_of(st.sampled_from(["", "Transcription", "singing"]), st.integers()),
         "occurred_at": RECENT_TIMES,
         # 30 days < d <= 10 years: refused except for artifact_completed (the if/then of the schema).
         "duration_ms": st.one_of(BAD_NUMBERS, st.floats(2.6e9, 3e11), st.floats(3.2e11, 1e13)),
         "error_code": BAD_TEXTS, "error_message": st.one_of(st.just("a\x00"), st.integers()),
         "metadata": metadata(bad=True)},
    required=("event_type",),
)
GOOD_TOKENS = st.one_of(st.integers(0, 2**40), st.just(7.0))
USAGES = payloads(
    good={"id": GOOD_UUIDS | st.none(), "occurred_at": times(lo=timedelta(days=80), hi=timedelta(0), broken=False),
          "organization_id": GOOD_IDS, "coach_id": GOOD_IDS | st.none(), "player_id": GOOD_IDS | st.none(),
          "operation": GOOD_IDS, "model": GOOD_IDS, "input_tokens": st.integers(2**39, 2**40),
          "output_tokens": GOOD_TOKENS, "cost": st.one_of(st.floats(0, 1e6), st.integers(0, 10**6))},
    bad={"id": BAD_UUIDS, "occurred_at": times(lo=timedelta(days=80), hi=timedelta(0)),
         "organization_id": BAD_IDS | st.none(), "coach_id": BAD_IDS, "player_id": BAD_IDS,
         "operation": BAD_IDS | st.none(), "model": BAD_IDS | st.none(),
         "input_tokens": st.one_of(st.integers(2**40 + 1, 2**41), st.just(2.5), BAD_NUMBERS, st.none()),
         "output_tokens": st.one_of(st.integers(2**40 + 1, 2**41), st.just(2.5), BAD_NUMBERS, st.none()),
         "cost": st.one_of(st.floats(1e6 + 1, 1e9), BAD_NUMBERS, st.none())},
    required=("organization_id", "operation", "model", "cost"),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS)
def test_hypothesis_events_schema_and_task_agree(kwargs: dict[str, Any]) -> None:
    agree("voicepipe.events.record", kwargs)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(USAGES, st.one_of(st.none(), st.integers(0, 2**39), st.just(-1), st.just(1.5)))
def test_hypothesis_usage_schema_and_task_agree(kwargs: dict[str, Any], cached: Any) -> None:
    # cached_tokens <= input_tokens is a cross-field rule (x-not-expressed): a cached_tokens
    # integer is sent only beside an input_tokens integer at least as large.
    inputs = kwargs.get("input_tokens")
    fits = isinstance(inputs, int) and not isinstance(inputs, bool) and isinstance(cached, int) and cached <= inputs
    if cached is not None and (fits or not isinstance(cached, int)):
        kwargs = {**kwargs, "cached_tokens": cached}
    agree("voicepipe.usage.record", kwargs)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENTS, max_size=3))
def test_hypothesis_event_batches_agree(events: list[dict[str, Any]]) -> None:
    agree("voicepipe.events.record_batch", {"events": events})


@st.composite
def days(draw: st.DrawFn) -> Any:
    year = draw(st.integers(0, 9999))
    month = draw(st.integers(0, 13))
    day = draw(st.integers(0, 32))
    text = f"{year:04d}-{month:02d}-{day:02d}"
    return draw(st.sampled_from([text, text, text, f" {text}\t", text.replace("-", ""), text + "T00:00",
                                 f"{year}-{month}-{day}", text + "\n"]))


@settings(max_examples=500, deadline=None)
@given(st.one_of(days(), st.text(alphabet=string.digits + "-W ", max_size=12)))
def test_hypothesis_days_agree(day: Any) -> None:
    agree("voicepipe.metrics.aggregate_day", {"day": day})


@settings(max_examples=400, deadline=None)
@given(times(lo=timedelta(days=3650), hi=timedelta(days=-3650), hours=True))
def test_hypothesis_hours_agree(text: Any) -> None:
    agree("voicepipe.metrics.aggregate_hour", {"window_start": text})


def test_every_task_is_a_typed_function_whose_parameters_are_its_schema() -> None:
    from worker import app

    app.loader.import_default_modules()
    names = sorted(n for n in app.tasks if n.startswith("voicepipe."))
    assert names == sorted(TASK_QUEUES)
    for name in names:
        run = app.tasks[name].run
        params = inspect.signature(run).parameters.values()  # what Flower and `celery inspect` show
        assert run.__name__ == name.rsplit(".", 1)[1], name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), name
        assert all(p.annotation is not inspect.Parameter.empty for p in params), name
        assert {p.name for p in params} == set(SCHEMAS[name].get("properties", {})), name
        required = {p.name for p in params if p.default is inspect.Parameter.empty}
        assert required == set(SCHEMAS[name].get("required", [])), name


@pytest.mark.parametrize("kwargs, refused", [
    ({}, "window_start: is required"),
    ({"window_start": "2026-01-01T00:00:00Z", "day": "2026-01-01"}, "day: unknown argument (allowed: window_start)"),
])
def test_a_message_is_bound_against_the_signature_before_the_body_runs(kwargs: dict[str, Any], refused: str) -> None:
    from worker import app

    app.loader.import_default_modules()
    with pytest.raises(InvalidInput, match=re.escape(refused)):
        app.tasks["voicepipe.metrics.aggregate_hour"].run(**kwargs)


def test_an_events_metadata_is_stored_as_compact_json_bounded_by_its_length() -> None:
    limit = get_settings().max_metadata_bytes
    pad = limit - len('{"note":""}')  # compact JSON: no space after ":" or ","
    at_limit = parse_event({"event_type": "artifact_received", "metadata": {"note": "x" * pad}}, now=NOW)
    assert at_limit.metadata_json == '{"note":"' + "x" * pad + '"}'
    assert len(at_limit.metadata_json) == limit
    two = parse_event({"event_type": "artifact_received", "metadata": {"aiCost": 0.5, "claimCount": 3}}, now=NOW)
    assert two.metadata_json == '{"aiCost":0.5,"claimCount":3}'
    with pytest.raises(InvalidInput, match=f"metadata: larger than {limit} bytes"):
        parse_event({"event_type": "artifact_received", "metadata": {"note": "x" * (pad + 1)}}, now=NOW)
    # Non-ASCII counts as its escape: "é" is 6 bytes (\u00e9), not UTF-8's 2.
    fits = pad // 6
    assert len(parse_event({"event_type": "artifact_received", "metadata": {"note": "é" * fits}},
                           now=NOW).metadata_json) == len('{"note":""}') + 6 * fits
    with pytest.raises(InvalidInput, match=f"metadata: larger than {limit} bytes"):
        parse_event({"event_type": "artifact_received", "metadata": {"note": "é" * (fits + 1)}}, now=NOW)
