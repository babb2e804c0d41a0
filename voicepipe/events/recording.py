"""Record events with their counters in one transaction, and rebuild counters from events.

Recording validates the whole batch first (one bad event refuses the batch and
writes nothing), inserts the events (an event id already stored is a no-op), and
adds the parts of the newly inserted events to their (organization, UTC hour)
counter rows, all inside the caller's transaction.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from psycopg.types.json import Jsonb
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from models.events import EventCounter, PipelineEvent
from voicepipe.clock import utcnow
from voicepipe.errors import InvalidInput
from voicepipe.events import sketch
from voicepipe.events.parts import (
    ALL_PARTS,
    COARSE_PART,
    SCALAR_PARTS,
    SKETCH_PART,
    Parts,
    add_event,
    empty_parts,
)
from voicepipe.events.schema import Event, parse_event
from voicepipe.infra.bulk import dbapi_connection, execute_while, stage
from voicepipe.infra.gcpause import without_cyclic_gc
from voicepipe.maintenance.cleanup import cutoffs
from voicepipe.metrics import late
from voicepipe.windows import HOUR, floor_hour, hour_label, iter_hours

log = logging.getLogger(__name__)

# Rows per INSERT statement: 12 columns x 1,000 rows stays far below PostgreSQL's
# 65,535 bind parameters and keeps each statement's latency small.
INSERT_CHUNK = 1000
MAX_BATCH = 50_000

CounterKey = tuple[str | None, datetime]
T = TypeVar("T")


@dataclass(frozen=True)
class RecordResult:
    inserted: int
    duplicates: int
    # The ids this call stored (the others were already there): single-event messages
    # recorded in one batch each answer whether their own event was new.
    inserted_ids: frozenset[Any] = frozenset()


def parse_events(raws: Sequence[Any], *, now: datetime | None = None) -> list[Event]:
    """Validate a batch; InvalidInput names the index and the field of the first bad event."""
    if not isinstance(raws, Sequence) or isinstance(raws, (str, bytes)):
        raise InvalidInput.field("events", "expected a list of events")
    if len(raws) > MAX_BATCH:
        raise InvalidInput.field("events", f"at most {MAX_BATCH} events per batch, got {len(raws)}")
    now = now or utcnow()
    events = []
    for index, raw in enumerate(raws):
        try:
            events.append(parse_event(raw, now=now))
        except InvalidInput as exc:
            raise InvalidInput(f"events[{index}].{exc.message}") from None
    return events


def check_late_span(events: Sequence[Event], now: datetime, limit: int) -> None:
    """Refuse a batch whose late events touch more closed hours than the limit.

    Each closed hour a batch changes is aggregated again (an hourly task, and its day):
    one message of 814 events spread over 34 days made 804 hourly and 33 daily tasks.
    """
    hours = late.closed_before({floor_hour(e.occurred_at) for e in events}, now, HOUR)
    if len(hours) > limit:
        raise InvalidInput.field(
            "events", f"late events in {len(hours)} closed hours ({hours[0].isoformat()} to {hours[-1].isoformat()}),"
                      f" at most {limit} per message (VOICEPIPE_MAX_LATE_HOURS): send them in smaller batches")


def foreign_artifact_events(session: Session, events: Sequence[Event]) -> list[int]:
    """Positions of the events naming an artifact stored under another organization.

    A producer may only speak of its organization's artifacts: an event credited to one
    organization about another's artifact would move both organizations' figures.
    An artifact not stored (yet) is not checked.
    """
    ids = list({e.artifact_id for e in events if e.artifact_id is not None})
    if not ids:
        return []
    with dbapi_connection(session).cursor() as cur:
        owners = dict(cur.execute("SELECT id, organization_id FROM artifacts WHERE id = ANY(%s)", (ids,)).fetchall())
    return [i for i, e in enumerate(events)
            if e.artifact_id in owners and owners[e.artifact_id] != e.organization_id]


def foreign_artifact_error(event: Event) -> InvalidInput:
    return InvalidInput.field(
        "organization_id",
        f"artifact {event.artifact_id} belongs to another organization than {event.organization_id!r}")


def record_event(session: Session, raw: Mapping[str, Any]) -> bool:
    """Record one event; True if it was new, False if its id was already stored."""
    event = parse_event(raw, now=utcnow())
    if foreign_artifact_events(session, [event]):
        raise foreign_artifact_error(event)
    return record_parsed(session, [event]).inserted == 1


@without_cyclic_gc
def record_events(session: Session, raws: Sequence[Any], *, now: datetime | None = None,
                  max_late_hours: int | None = None) -> RecordResult:
    """Record a batch of events and their counters; returns how many were new.

    ``now`` (default: the clock) is the time the events are checked against (no
    future, nothing past retention); the sweeper passes the time it sweeps at.
    ``max_late_hours``: a producer's batch may touch at most that many closed hours.
    """
    events = parse_events(raws, now=now)
    if max_late_hours is not None:
        check_late_span(events, now or utcnow(), max_late_hours)
    foreign = foreign_artifact_events(session, events)
    if foreign:
        raise InvalidInput(f"events[{foreign[0]}].{foreign_artifact_error(events[foreign[0]]).message}")
    return record_parsed(session, events)


def record_parsed(session: Session, events: Sequence[Event]) -> RecordResult:
    unique: dict[Any, Event] = {}
    for event in events:
        unique.setdefault(event.event_id, event)
    batch = list(unique.values())
    hours = [floor_hour(e.occurred_at) for e in batch]

    def summed(pairs: Iterable[tuple[Event, datetime]]) -> tuple[dict[CounterKey, Parts], list[tuple[Any, ...]]]:
        grouped = group_parts(pairs)
        return grouped, counter_rows(grouped)

    # The counters of every event are summed while PostgreSQL inserts the events; an id
    # already stored (a redelivery) is rare, and only then are they summed again.
    pairs = list(zip(batch, hours, strict=True))
    inserted_ids, (grouped, rows) = _insert_events(session, batch, hours, lambda: summed(pairs))
    if len(inserted_ids) < len(batch):
        grouped, rows = summed(pair for pair in pairs if pair[0].event_id in inserted_ids)
    _write_counters(session, rows, _ADD_SQL)
    # Counters of a closed hour changed: its snapshot (if any) and its day are stale.
    late.mark(session, late.HOURLY, late.closed_before((hour for _, hour in grouped), utcnow(), HOUR))
    return RecordResult(inserted=len(inserted_ids), duplicates=len(events) - len(inserted_ids),
                        inserted_ids=frozenset(inserted_ids))


def group_parts(events: Iterable[tuple[Event, datetime]]) -> dict[CounterKey, Parts]:
    """The parts of (event, its UTC hour) pairs, summed per (organization, hour)."""
    grouped: dict[CounterKey, Parts] = {}
    for event, hour in events:
        key = (event.organization_id, hour)
        parts = grouped.get(key)
        if parts is None:
            parts = grouped[key] = empty_parts()
        add_event(parts, event.event_type, event.duration_ms, event.metadata)
    return grouped


EVENT_COLUMNS: tuple[str, ...] = (
    "id", "event_type", "artifact_id", "organization_id", "coach_id", "stage", "occurred_at",
    "time_window", "duration_ms", "error_code", "error_message", "metadata",
)
COUNTER_COLUMNS: tuple[str, ...] = ("organization_id", "hour_start", *ALL_PARTS)


# Up to this many values (rows x columns) go in one typed VALUES statement (one round
# trip); more go through COPY staging. psycopg parses a VALUES list placeholder by
# placeholder, so its cost grows with the values, while COPY's is mostly fixed (temp
# table, COPY, the statement): the two cross near 20 events or 5 counter rows (49
# columns), the batch sizes a busy worker writes. Pipeline stages write one to three events.
SMALL_VALUES = 256
_column_types: dict[str, dict[str, str]] = {}


def _types(session: Session, table: str) -> dict[str, str]:
    """Column SQL types of a table, read once per process (for typed VALUES lists)."""
    if table not in _column_types:
        rows = session.execute(text(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped"
        ), {"t": table}).all()
        _column_types[table] = {name: sql_type for name, sql_type in rows}
    return _column_types[table]


def _write(
    session: Session, stage_table: str, table: str, columns: tuple[str, ...],
    rows: list[tuple[Any, ...]], statement: str,
) -> tuple[Any, str, list[Any] | None]:
    """(cursor, SQL, parameters) of `statement` (which reads FROM {source}) over rows, for the caller to execute.

    VALUES when few, COPY staging (already done on the cursor) when many.
    """
    if len(rows) * len(columns) > SMALL_VALUES:
        # Binary COPY: every value already has its column's exact type (validated events).
        cur = stage(session, stage_table, table, columns, rows, binary=True)
        return cur, statement.format(source=stage_table), None
    types = _types(session, table)
    one = "(" + ", ".join(f"%s::{types[c]}" for c in columns) + ")"
    source = f"(VALUES {', '.join([one] * len(rows))}) AS {stage_table} ({', '.join(columns)})"
    return dbapi_connection(session).cursor(), statement.format(source=source), [v for row in rows for v in row]


def _insert_events(
    session: Session, events: Sequence[Event], hours: Sequence[datetime], meanwhile: Callable[[], T],
) -> tuple[set[Any], T]:
    """Insert the events (an id already stored is skipped); their ids inserted, and what `meanwhile` returned."""
    if not events:
        return set(), meanwhile()
    cols = ", ".join(EVENT_COLUMNS)
    labels = {hour: hour_label(hour) for hour in set(hours)}
    cur, sql, params = _write(
        session, "vp_stage_events", "pipeline_events", EVENT_COLUMNS,
        [
            (e.event_id, e.event_type, e.artifact_id, e.organization_id, e.coach_id, e.stage,
             e.occurred_at, labels[hour], e.duration_ms, e.error_code,
             e.error_message, Jsonb(e.metadata_json, dumps=str))  # already JSON: stored as is
            for e, hour in zip(events, hours, strict=True)
        ],
        f"INSERT INTO pipeline_events ({cols}) SELECT {cols} FROM {{source}} "
        "ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    with cur:
        rows, done = execute_while(cur, sql, params, meanwhile)
    return {row[0] for row in rows}, done


SKETCH_COMPACT_AT = 1024


def _upsert_sql(additive: bool) -> str:
    cols = ", ".join(COUNTER_COLUMNS)
    if additive:
        sets = [f"{n} = event_counters.{n} + excluded.{n}" for n in SCALAR_PARTS]
        # A batch's sketch is appended (a key may then repeat: it means the sum), and the
        # row compacted by vp_sketch_add (an unnest and a sorted array_agg) only past
        # SKETCH_COMPACT_AT entries: calling it on every row that gains a duration cost
        # a quarter of the batch API's throughput. A coarse row stays coarse: the events
        # added are sketched finely, the old ones are not.
        old, new = f"event_counters.{SKETCH_PART}", f"excluded.{SKETCH_PART}"
        sets.append(
            f"{SKETCH_PART} = CASE WHEN cardinality({new}) = 0 THEN {old} "
            f"WHEN cardinality({old}) + cardinality({new}) <= {SKETCH_COMPACT_AT} THEN {old} || {new} "
            f"ELSE vp_sketch_add({old}, {new}) END"
        )
    else:
        sets = [f"{n} = excluded.{n}" for n in ALL_PARTS]
    sets += ["revision = nextval('counter_revision_seq')", "updated_at = now()"]
    # ORDER BY: concurrent recorders lock counter rows in the same order, so they
    # queue behind each other instead of deadlocking.
    return (
        f"INSERT INTO event_counters ({cols}) SELECT {cols} FROM {{source}} "
        "ORDER BY organization_id NULLS FIRST, hour_start "
        f"ON CONFLICT (organization_id, hour_start) DO UPDATE SET {', '.join(sets)}"
    )


# The scalar parts of a Parts in SCALAR_PARTS order, in one C call (a counter row a group).
_scalars = operator.itemgetter(*SCALAR_PARTS)
_ADD_SQL = _upsert_sql(additive=True)
_REPLACE_SQL = _upsert_sql(additive=False)


def counter_rows(grouped: Mapping[CounterKey, Parts]) -> list[tuple[Any, ...]]:
    """One row of COUNTER_COLUMNS per (organization, hour)."""
    return [(org, hour, *_scalars(parts), sketch.pack(parts[SKETCH_PART]), parts[COARSE_PART])
            for (org, hour), parts in grouped.items()]


def _write_counters(session: Session, rows: list[tuple[Any, ...]], sql: str) -> None:
    if not rows:
        return
    cur, sql, params = _write(session, "vp_stage_counters", "event_counters", COUNTER_COLUMNS, rows, sql)
    with cur:
        cur.execute(sql, params)


def add_to_counters(session: Session, grouped: Mapping[CounterKey, Parts]) -> None:
    """Add parts to their counter rows (created at zero when missing)."""
    _write_counters(session, counter_rows(grouped), _ADD_SQL)


def _replace_counters(session: Session, grouped: Mapping[CounterKey, Parts]) -> None:
    _write_counters(session, counter_rows(grouped), _REPLACE_SQL)


def check_events_kept(start: datetime) -> None:
    """Refuse a rebuild reaching hours whose events cleanup may have deleted.

    Events are kept 30 days, counters 35: a recount of an hour whose events are gone
    would overwrite its counters with zeros, and the next backfill would turn its
    snapshots into zeros too.
    """
    oldest = cutoffs(utcnow()).events
    if start < oldest:
        raise InvalidInput.field(
            "from", f"{start.isoformat()} is older than the event retention (events kept from "
                    f"{oldest.isoformat()}, VOICEPIPE_RETENTION_EVENTS_DAYS): its counters cannot be "
                    "recounted and are kept as they are")


@dataclass(frozen=True)
class RebuildResult:
    hours: int
    counter_rows: int
    events: int


def rebuild_counters(session: Session, start: datetime, end: datetime) -> RebuildResult:
    """Recompute the counters of every hour in [start, end) from the stored events.

    Blocks event recording for the duration (SHARE lock on pipeline_events), so no
    event can slip between the recount and the overwrite. Rows are overwritten, never
    deleted, and take fresh revisions, so the windows become stale and are re-aggregated.
    """
    hours = list(iter_hours(start, end))
    if not hours:
        return RebuildResult(0, 0, 0)
    check_events_kept(hours[0])
    lo, hi = hours[0], hours[-1] + HOUR
    session.execute(text("LOCK TABLE pipeline_events IN SHARE MODE"))
    grouped: dict[CounterKey, Parts] = {}
    n_events = 0
    rows = session.execute(
        select(
            PipelineEvent.organization_id,
            PipelineEvent.occurred_at,
            PipelineEvent.event_type,
            PipelineEvent.duration_ms,
            PipelineEvent.metadata_,
        )
        .where(PipelineEvent.occurred_at >= lo, PipelineEvent.occurred_at < hi)
        .execution_options(yield_per=10_000)
    )
    for org, occurred_at, event_type, duration_ms, metadata in rows:
        key = (org, floor_hour(occurred_at))
        parts = grouped.get(key)
        if parts is None:
            parts = grouped[key] = empty_parts()
        add_event(parts, event_type, duration_ms, metadata or {})
        n_events += 1
    existing = session.execute(
        select(EventCounter.organization_id, EventCounter.hour_start).where(
            EventCounter.hour_start >= lo, EventCounter.hour_start < hi
        )
    ).all()
    for org, hour in existing:
        grouped.setdefault((org, hour), empty_parts())
    items = list(grouped.items())
    for i in range(0, len(items), INSERT_CHUNK // 4):
        _replace_counters(session, dict(items[i : i + INSERT_CHUNK // 4]))
    late.mark(session, late.HOURLY, late.closed_before((hour for _, hour in grouped), utcnow(), HOUR))
    log.info(
        "counters rebuilt",
        extra={"from": lo.isoformat(), "to": hi.isoformat(), "rows": len(grouped), "events": n_events},
    )
    return RebuildResult(hours=len(hours), counter_rows=len(grouped), events=n_events)


@dataclass(frozen=True)
class RefineResult:
    days: int
    counter_rows: int
    kept_coarse: int  # coarse counter rows older than the events kept


def refine_coarse_counters(scope: Callable[[], AbstractContextManager[Session]]) -> RefineResult:
    """Recount, a day per transaction, the coarse counter rows whose events are still kept.

    Rows carried over from the 64-bucket histogram (migration 0011) get sketches within
    1 % from their events, and their windows are re-aggregated by the next runs; older
    rows keep their coarse percentiles and say so.
    """
    oldest = cutoffs(utcnow()).events
    with scope() as session:
        days = [day for (day,) in session.execute(text(
            "SELECT DISTINCT date_trunc('day', hour_start, 'UTC') FROM event_counters "
            "WHERE coarse_percentiles AND hour_start >= :oldest ORDER BY 1"), {"oldest": oldest})]
    rows = 0
    for day in days:
        with scope() as session:
            rows += rebuild_counters(session, day, day + timedelta(days=1)).counter_rows
    with scope() as session:
        kept = session.execute(text("SELECT count(*) FROM event_counters WHERE coarse_percentiles")).scalar_one()
    return RefineResult(days=len(days), counter_rows=rows, kept_coarse=int(kept))
