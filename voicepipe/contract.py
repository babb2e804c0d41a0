"""The task contract as JSON Schema: one schema per public task, from the tasks' signatures
and the validators' bounds.

Each task's argument names, their order and which are required come from its signature
(tasks/*.py; an argument without constraints here, or constraints without an argument,
stops the generation). Every bound is the constant the validators use
(voicepipe/validation.py, voicepipe/events/schema.py, voicepipe/usage/recording.py,
voicepipe/retry/service.py, voicepipe/directory/). tests/unit/test_task_schemas.py feeds
the schemas and the tasks' validation the same good and bad arguments (hypothesis cases
included) and tests/integration/test_task_schemas_worker.py does so through a real worker.

What a static schema cannot say is written in each schema's ``x-not-expressed``
(times relative to now, cross-field rules, a setting's value): the task still refuses
those with InvalidInput. `voicepipe contract --write` writes contract/tasks/*.schema.json;
`voicepipe contract --check` (run by .ci/run) fails when the files are not current.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from voicepipe.domain import EVENT_TYPES, METADATA_INTS, METADATA_NUMBERS, METADATA_TEXTS, PIPELINE, STAGES
from voicepipe.events.recording import MAX_BATCH
from voicepipe.events.schema import MAX_COST_USD, MAX_DURATION_MS, MAX_END_TO_END_MS
from voicepipe.retry.service import MAX_REASON, RETRY_STAGES
from voicepipe.settings import load_settings
from voicepipe.usage.recording import MAX_TOKENS
from voicepipe.validation import ID_FORBIDDEN_CLASS, MAX_ID, MAX_INT32, MAX_TEXT, MAX_TS, MIN_TS

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR = Path("contract") / "tasks"
# The batch limit a deployment runs with by default (VOICEPIPE_MAX_BATCH_SIZE).
DEFAULT_MAX_BATCH_SIZE: int = load_settings({}).max_batch_size  # the default, not this environment's

# --------------------------------------------------------------- regular expressions
# ASCII digits only ([0-9], never \d: a JSON Schema validator may read \d as any Unicode
# digit); \s around the value because the validators strip() it first.
_D = "[0-9]"
_MONTH_DAY = (
    f"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]{_D}|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]{_D}|30)"
    f"|02-(?:0[1-9]|1{_D}|2[0-8]))"
)
# check_timestamp: MIN_TS <= t < MAX_TS, i.e. the years 2000..2099 (leap years: every 4th).
assert (MIN_TS.year, MAX_TS.year) == (2000, 2100)
_TS_DATE = f"(?:20{_D}{{2}}-{_MONTH_DAY}|20(?:[02468][048]|[13579][26])-02-29)"
_TIME = f"(?:[01]{_D}|2[0-3]):[0-5]{_D}(?::[0-5]{_D}(?:\\.{_D}+)?)?"
_OFFSET = f"(?:[Zz]|[+-](?:[01]{_D}|2[0-3]):[0-5]{_D})"
# voicepipe.validation._RFC3339 with the offset required (a naive time is refused).
TIMESTAMP_PATTERN = f"^\\s*{_TS_DATE}[Tt ]{_TIME}{_OFFSET}\\s*$"
# parse_hour: an hour start; the schema asks for whole-hour offsets (see x-not-expressed).
HOUR_PATTERN = (
    f"^\\s*{_TS_DATE}[Tt ](?:[01]{_D}|2[0-3]):00(?::00(?:\\.0+)?)?(?:[Zz]|[+-](?:[01]{_D}|2[0-3]):00)\\s*$"
)
# parse_day: YYYY-MM-DD, any year date.fromisoformat takes (0001..9999), real calendar days.
_LEAP_YEAR = f"(?:{_D}{{2}}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
DAY_PATTERN = f"^\\s*(?:(?!0000){_D}{{4}}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)\\s*$"
# The canonical UUID text (8-4-4-4-12 hex digits, any case), as check_uuid takes it.
UUID_PATTERN = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
# check_text / check_id: PostgreSQL text cannot hold NUL; a required text has a non-blank character.
_NO_NUL: dict[str, Any] = {"not": {"pattern": "\u0000"}}
_NOT_BLANK = "\\S"

TIME_BOUNDS_EVENT = ("occurred_at: not older than counter retention (VOICEPIPE_RETENTION_COUNTERS_DAYS) and "
                     "not in the future beyond VOICEPIPE_MAX_CLOCK_SKEW_SECONDS (relative to now)")
TIME_BOUNDS_USAGE = ("occurred_at: not older than the AI usage log's retention (VOICEPIPE_RETENTION_AI_USAGE_DAYS) "
                     "and not in the future beyond VOICEPIPE_MAX_CLOCK_SKEW_SECONDS (relative to now)")
YEAR_EDGES = ("timestamps are taken from 2000-01-01T00:00Z up to (not including) 2100-01-01T00:00Z as instants: "
              "a time on 2000-01-01 or 2099-12-31 may fall outside once its offset is applied")
NESTED_JSON = ("metadata: values nested in it hold no NUL character, integers within +-(2^63-1), "
               "at most 16 levels deep")


SIGNED_RULE = ("signature: HMAC-SHA256 hex, with VOICEPIPE_DIRECTORY_SECRET, of the canonical JSON of the other "
               "arguments plus \"task\": <this task's name> (keys sorted, no spaces, non-ASCII as \\uXXXX); "
               "issued_at within VOICEPIPE_SIGNATURE_MAX_AGE_SECONDS of now; each nonce accepted once "
               "(PermissionDenied otherwise); voicepipe.client.Producer(signing_secret=...) signs for you")


# --------------------------------------------------------------- field schemas
def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [{"type": "null"}, schema]}


def text(max_len: int = MAX_TEXT, *, optional: bool = False) -> dict[str, Any]:
    """check_text: a string of at most max_len characters, no NUL; required ones not blank."""
    if optional:
        return _nullable({"type": "string", "maxLength": max_len, **_NO_NUL})
    return {"type": "string", "maxLength": max_len, "pattern": _NOT_BLANK, **_NO_NUL}


def ident(*, optional: bool = False) -> dict[str, Any]:
    """check_id: a text id of the platform (never blank, even when optional; no control characters)."""
    schema = {"type": "string", "maxLength": MAX_ID, "pattern": _NOT_BLANK, "not": {"pattern": ID_FORBIDDEN_CLASS}}
    return _nullable(schema) if optional else schema


def uuid(*, optional: bool = False) -> dict[str, Any]:
    # The lengths too: Python's re (which some validators use) lets "$" match before a final newline.
    schema = {"type": "string", "minLength": 36, "maxLength": 36, "pattern": UUID_PATTERN}
    return _nullable(schema) if optional else schema


def timestamp(*, optional: bool = False) -> dict[str, Any]:
    schema = {"type": "string", "pattern": TIMESTAMP_PATTERN,
              "description": "RFC 3339 date and time with a UTC offset (Z or +HH:MM)"}
    return _nullable(schema) if optional else schema


def _signed() -> dict[str, Any]:
    """The signed authority's fields (voicepipe/authority.py)."""
    return {"issued_at": timestamp(optional=True), "nonce": ident(optional=True),
            "signature": _nullable({"type": "string"})}


def number(hi: float, *, optional: bool = True) -> dict[str, Any]:
    schema = {"type": "number", "minimum": 0, "maximum": hi}
    return _nullable(schema) if optional else schema


def integer(hi: int = MAX_INT32, *, optional: bool = True) -> dict[str, Any]:
    # JSON Schema's integer takes 3.0 as check_int does (JSON producers may send it).
    schema = {"type": "integer", "minimum": 0, "maximum": hi}
    return _nullable(schema) if optional else schema


def _object(properties: dict[str, dict[str, Any]], required: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False, **extra}


def signatures() -> Mapping[str, inspect.Signature]:
    """Every public task's signature by name, as tasks/*.py declare them (the app is not configured)."""
    from worker.declare import SIGNATURES
    from worker.routes import TASK_MODULES

    for module in TASK_MODULES:
        importlib.import_module(module)
    return SIGNATURES


def _arguments(task: str, constraints: Mapping[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A task's keyword arguments as a schema: their names, order and which are required come
    from the task's signature; what each may hold, from CONSTRAINTS (the validators' bounds)."""
    params = signatures()[task].parameters
    if set(params) != set(constraints):
        raise AssertionError(f"{task}: arguments {sorted(params)} but constraints for {sorted(constraints)}")
    required = tuple(name for name, p in params.items() if p.default is inspect.Parameter.empty)
    return _object({name: constraints[name] for name in params}, required, **extra)


# --------------------------------------------------------------- payloads
def _metadata_number_max(key: str) -> float:
    # voicepipe/events/schema.py _parse_metadata's bounds.
    return 1.0 if key == "confidenceScore" else MAX_COST_USD if key == "aiCost" else 1e9


def event() -> dict[str, Any]:
    """voicepipe.events.schema.parse_event (EVENT_FIELDS)."""
    metadata = {
        "type": "object",
        "properties": {
            **{key: integer() for key in METADATA_INTS},
            **{key: number(_metadata_number_max(key)) for key in METADATA_NUMBERS},
            **{key: text(255, optional=True) for key in METADATA_TEXTS},
        },
        "additionalProperties": True,
    }
    return _arguments(
        "voicepipe.events.record",
        {
            "event_id": uuid(optional=True),
            "event_type": {"type": "string", "enum": list(EVENT_TYPES)},
            "artifact_id": uuid(optional=True),
            "organization_id": ident(optional=True),
            "coach_id": ident(optional=True),
            "stage": _nullable({"type": "string", "enum": list(STAGES)}),
            "occurred_at": timestamp(optional=True),
            # artifact_completed carries received-to-completed (up to ten years); others 30 days.
            "duration_ms": number(MAX_END_TO_END_MS),
            "error_code": text(255, optional=True),
            "error_message": text(optional=True),
            "metadata": _nullable(metadata),
        },
        allOf=[{
            "if": {"properties": {"event_type": {"not": {"const": "artifact_completed"}}}},
            "then": {"properties": {"duration_ms": {"maximum": MAX_DURATION_MS}}},
        }],
    )


def usage() -> dict[str, Any]:
    """voicepipe.usage.recording.parse_usage (USAGE_FIELDS)."""
    return _arguments(
        "voicepipe.usage.record",
        {
            "id": uuid(optional=True),
            "occurred_at": timestamp(optional=True),
            "organization_id": ident(),
            "coach_id": ident(optional=True),
            "player_id": ident(optional=True),
            "operation": text(255),
            "model": text(255),
            "input_tokens": integer(MAX_TOKENS, optional=False),
            "cached_tokens": integer(MAX_TOKENS, optional=False),
            "output_tokens": integer(MAX_TOKENS, optional=False),
            "cost": number(1_000_000.0, optional=False),
        },
    )


# --------------------------------------------------------------- tasks
def _task(name: str, queue: str, description: str, body: dict[str, Any],
          not_expressed: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "$schema": DRAFT,
        "$id": f"https://voicepipe.invalid/contract/tasks/{name}.schema.json",
        "title": name,
        "description": description + " Keyword arguments of the task (send_task kwargs).",
        "x-queue": queue,
        **body,
    }
    if not_expressed:
        schema["x-not-expressed"] = list(not_expressed)
    return schema


def task_schemas() -> dict[str, dict[str, Any]]:
    """Every public task's schema, by task name (the names and queues of worker/routes.py)."""
    from voicepipe.client import TASK_QUEUES

    batch_limit = (f"the list holds at most VOICEPIPE_MAX_BATCH_SIZE items (default "
                   f"{DEFAULT_MAX_BATCH_SIZE}, written here as maxItems)")
    # Per task: what it does, what each argument may hold (its names and which are required
    # come from the task's signature), and what the schema cannot say.
    describe: dict[str, tuple[str, dict[str, Any] | None, tuple[str, ...]]] = {
        "voicepipe.metrics.aggregate_hourly_due": ("The hourly beat wrapper.", {}, ()),
        "voicepipe.metrics.aggregate_daily_due": ("The daily beat wrapper.", {}, ()),
        "voicepipe.usage.aggregate_daily_due": ("The AI usage beat wrapper.", {}, ()),
        "voicepipe.maintenance.cleanup": ("Retention cleanup.", {}, ()),
        "voicepipe.maintenance.requeue_stalled": ("Re-queue stalled artifacts.", {}, ()),
        "voicepipe.alerts.evaluate": ("Evaluate the health checks into alerts.", {}, ()),
        "voicepipe.metrics.aggregate_hour": (
            "Aggregate one closed UTC hour.",
            {"window_start": {"type": "string", "pattern": HOUR_PATTERN,
                              "description": "the hour's start, RFC 3339 with an offset"}},
            (YEAR_EDGES, ("window_start: an hour start written with a half-hour offset (10:30+05:30) "
                          "is taken by the task; the schema asks for whole-hour offsets")),
        ),
        "voicepipe.metrics.aggregate_day": (
            "Aggregate one UTC day.", {"day": {"type": "string", "pattern": DAY_PATTERN}}, ()),
        "voicepipe.usage.aggregate_day": (
            "Roll up one UTC day of AI usage.", {"day": {"type": "string", "pattern": DAY_PATTERN}}, ()),
        "voicepipe.pipeline.ingest": (
            "Create an artifact for a voice note.",
            {"organization_id": ident(), "coach_id": ident(optional=True), "source_channel": ident(),
             "media_ref": text(2000, optional=True), "artifact_id": uuid(optional=True)},
            (),
        ),
        **{stage.task: ("Run one pipeline stage of an artifact.", {"artifact_id": uuid()}, ()) for stage in PIPELINE},
        **{f"voicepipe.retry.{stage}": (
            f"Retry an artifact's {stage.replace('_', ' ')} (platform staff only).",
            {"artifact_id": uuid(), "requested_by": ident(), "reason": text(MAX_REASON, optional=True),
             "request_id": ident(optional=True), **_signed()},
            ("requested_by: must be platform staff (PermissionDenied otherwise, not InvalidInput)", SIGNED_RULE),
        ) for stage in RETRY_STAGES},
        "voicepipe.events.record": ("Record one pipeline event.", None,
                                    (TIME_BOUNDS_EVENT, YEAR_EDGES, NESTED_JSON)),
        "voicepipe.events.record_batch": (
            "Record a batch of pipeline events in one transaction.",
            {"events": {"type": "array", "items": event(), "maxItems": min(MAX_BATCH, DEFAULT_MAX_BATCH_SIZE)}},
            (batch_limit, TIME_BOUNDS_EVENT, YEAR_EDGES, NESTED_JSON),
        ),
        "voicepipe.usage.record": ("Record one AI call.", None,
                                   (TIME_BOUNDS_USAGE, YEAR_EDGES, "cached_tokens: at most input_tokens")),
        "voicepipe.usage.record_batch": (
            "Record a batch of AI calls in one transaction.",
            {"records": {"type": "array", "items": usage(), "maxItems": DEFAULT_MAX_BATCH_SIZE}},
            (batch_limit, TIME_BOUNDS_USAGE, YEAR_EDGES, "cached_tokens: at most input_tokens"),
        ),
        "voicepipe.directory.upsert_organization": ("Create or rename an organization.",
                                                    {"id": ident(), "name": text()}, ()),
        "voicepipe.directory.upsert_user": (
            "Create or update a user.",
            {"id": ident(), "email": text(), "is_platform_staff": {"type": "boolean"}, **_signed()},
            (SIGNED_RULE, "without VOICEPIPE_DIRECTORY_SECRET configured a signature is refused (PermissionDenied)",
             "issued_at: not older than this user's last signed message or operator change (PermissionDenied)"),
        ),
    }
    # None: a single event or AI call, whose schema is also a batch's item (event(), usage()).
    items = {"voicepipe.events.record": event, "voicepipe.usage.record": usage}
    missing = set(TASK_QUEUES) ^ set(describe)
    assert not missing, f"tasks without a schema or schemas without a task: {sorted(missing)}"
    return {name: _task(name, TASK_QUEUES[name], description,
                        items[name]() if constraints is None else _arguments(name, constraints), not_expressed)
            for name, (description, constraints, not_expressed) in sorted(describe.items())}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=True) + "\n"


def expected_files() -> dict[str, str]:
    """File name (under contract/tasks/) -> content."""
    return {f"{name}.schema.json": render(schema) for name, schema in task_schemas().items()}


def write(root: Path) -> list[str]:
    """Write every schema under root/contract/tasks (removing stale ones); the names written."""
    folder = root / SCHEMA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    files = expected_files()
    for stale in folder.glob("*.schema.json"):
        if stale.name not in files:
            stale.unlink()
    for file_name, content in files.items():
        (folder / file_name).write_text(content)
    return sorted(files)


def differences(root: Path) -> list[str]:
    """What differs between the files under root/contract/tasks and the validators' schemas."""
    folder = root / SCHEMA_DIR
    files = expected_files()
    problems = []
    present = {p.name for p in folder.glob("*.schema.json")} if folder.is_dir() else set()
    for file_name in sorted(present - set(files)):
        problems.append(f"{SCHEMA_DIR / file_name}: no such public task (stale file)")
    for file_name, content in sorted(files.items()):
        path = folder / file_name
        if not path.exists():
            problems.append(f"{SCHEMA_DIR / file_name}: missing")
        elif path.read_text() != content:
            problems.append(f"{SCHEMA_DIR / file_name}: out of date")
    return problems
