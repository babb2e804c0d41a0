"""Write one window's snapshot rows: the single code path for hourly and daily, org and platform."""

from __future__ import annotations

import operator
from collections.abc import Container, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from models.metrics import MetricsSnapshot
from voicepipe.events import sketch
from voicepipe.events.parts import (
    ALL_PARTS,
    COARSE_PART,
    DECIMAL_PARTS,
    FLOAT_PARTS,
    INT_PARTS,
    SCALAR_PARTS,
    SKETCH_PART,
    Parts,
    sum_part_rows,
)
from voicepipe.infra.bulk import (
    HASHED_GROUP,
    ascii_column,
    copy_then,
    dbapi_connection,
    float8_column,
    int8_column,
    use_columns,
)
from voicepipe.infra.gcpause import without_cyclic_gc
from voicepipe.metrics.derive import METRIC_COLUMNS, USED_PARTS, figures, figures_of_values

PART_COLUMNS: tuple[str, ...] = ALL_PARTS
SNAPSHOT_KEY = "uq_metrics_snapshots_organization_id_period_type_period_start"


SNAPSHOT_COLUMNS: tuple[str, ...] = (
    "organization_id", "period_type", "period_start", "period_end", *PART_COLUMNS, *METRIC_COLUMNS,
)
# The unique constraint treats NULLs as equal, so the platform row (organization NULL)
# conflicts with itself too: one row a window. ORDER BY gives concurrent writers one lock order.
# A row whose values are all unchanged is left alone (its computed_at says when its figures
# last changed): a window is re-run when a late event touches one organization, and the
# others' new row versions, index entries and WAL would be for nothing.
_UPDATED = (*PART_COLUMNS, *METRIC_COLUMNS, "period_end")
_ON_CONFLICT = (
    f"ON CONFLICT ON CONSTRAINT {SNAPSHOT_KEY} DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _UPDATED)
    + ", computed_at = now()"
    + f" WHERE ({', '.join(f'metrics_snapshots.{c}' for c in _UPDATED)})"
    + f" IS DISTINCT FROM ({', '.join(f'excluded.{c}' for c in _UPDATED)})"
)
_UPSERT_SQL = (
    f"INSERT INTO metrics_snapshots ({', '.join(SNAPSHOT_COLUMNS)}) "
    f"SELECT {', '.join(SNAPSHOT_COLUMNS)} FROM vp_stage_snapshots "
    f"ORDER BY organization_id NULLS FIRST {_ON_CONFLICT}"
)
# One row, as parameters: no staging table for the platform row of an hour.
_UPSERT_ONE_SQL = (
    f"INSERT INTO metrics_snapshots ({', '.join(SNAPSHOT_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(SNAPSHOT_COLUMNS))}) {_ON_CONFLICT}"
)
# Vanished organizations are found in Python, from the window's stored rows:
# `organization_id <> ALL(array)` compared every row with every element (0.55 s for
# 10,000 organizations), and the list is nearly always empty. The rows' ids are read
# too, and the vanished deleted by id: with organization ids alone, PostgreSQL 18 chose
# an index-only skip scan of the unique index (organization first) once a window held a
# few hundred organizations, which read the whole index at 10,000 (100 ms at 1.4M rows,
# against 7 ms through the window's index); with a column outside the unique key, no
# index-only scan of it can serve the read.
_STORED_ROWS_SQL = (
    "SELECT id, organization_id FROM metrics_snapshots WHERE period_type = %s AND period_start = %s "
    "AND organization_id IS NOT NULL"
)
_DELETE_BY_ID_SQL = "DELETE FROM metrics_snapshots WHERE id = ANY(%s)"


# A row's values in column order, in one C call each (10,000 rows an hour at 10,000 organizations).
_scalars_of = operator.itemgetter(*SCALAR_PARTS)
_used_of_row = operator.itemgetter(*(ALL_PARTS.index(name) for name in USED_PARTS))


def snapshot_values(
    organization_id: str | None, period_type: str, start: datetime, end: datetime, parts: Parts
) -> tuple[Any, ...]:
    """One snapshot row in SNAPSHOT_COLUMNS order: the parts as given, then their figures."""
    return (organization_id, period_type, start, end, *_scalars_of(parts), sketch.pack(parts[SKETCH_PART]),
            bool(parts[COARSE_PART]), *figures(parts))


def write_window(
    session: Session,
    period_type: str,
    start: datetime,
    end: datetime,
    org_parts: Mapping[str, Parts],
    platform_parts: Parts,
) -> int:
    """Upsert one row per organization plus the platform row (organization NULL).

    Parts must be complete, as empty_parts() makes them: they are stored as given. Rows
    whose values would not change are not rewritten. Organization rows of this window
    that are not in ``org_parts`` any more are deleted (their counters went away, e.g.
    after a rebuild). Returns the number of rows of the window (organizations plus the
    platform).
    """
    rows = [snapshot_values(org, period_type, start, end, parts) for org, parts in sorted(org_parts.items())]
    rows.append(snapshot_values(None, period_type, start, end, platform_parts))
    # Binary COPY into a staging table and one INSERT ... SELECT: 1,001 rows of ~90
    # columns in about 20 ms (voicepipe/infra/bulk.py says why not parameterised INSERTs).
    copy_then(session, "vp_stage_snapshots", "metrics_snapshots", SNAPSHOT_COLUMNS, rows, _UPSERT_SQL, binary=True)
    delete_vanished(session, period_type, start, org_parts)
    return len(rows)


# An hour's organization rows, written from its counter rows: only the figures (derived
# in Python) travel, with the revision of the counter row they were derived from; the
# parts are copied from the counters inside PostgreSQL. A row goes in only if its
# counter still has that revision; `src` is counted in the same statement (one
# snapshot), so the caller knows whether every row was written. The rows go in chunks,
# each chunk's columns as arrays (bulk.py's *_column): unlike a COPY, the statements
# queue in pipeline mode, so PostgreSQL writes one chunk while Python derives the next
# one's figures. A quarter of 1,000 organizations a chunk: small enough to overlap at
# that size, few enough statements at 10,000 (docs/benchmarks.md).
HOUR_CHUNK = 250


def _column_kind(name: str) -> tuple[Any, str]:
    """How a figure column travels: its packing and its SQL array type."""
    python_type = MetricsSnapshot.__table__.c[name].type.python_type
    if python_type is int:
        return int8_column, "bigint[]"
    if python_type is float:
        return float8_column, "float8[]"
    return ascii_column, "numeric[]"  # exact: str() of the quantized Decimal, cast in SQL


_KINDS = [_column_kind(n) for n in METRIC_COLUMNS]
_HOUR_FROM_COUNTERS_SQL = (
    # Named up front: pg_stat_activity shows the first 1 kB of a statement, and the
    # column lists push the INSERT far past it.
    "/* upsert metrics_snapshots of an hour from event_counters and figures */"
    " WITH f AS (SELECT * FROM unnest(%(counter_id)b, %(revision)b, "
    + ", ".join(f"CAST(%({n})b AS {kind})" for n, (_, kind) in zip(METRIC_COLUMNS, _KINDS, strict=True))
    + ") AS f(counter_id, revision, " + ", ".join(METRIC_COLUMNS) + ")),"
    " src AS (SELECT c.organization_id, CAST(%(period_type)s AS varchar) AS period_type,"
    " CAST(%(start)s AS timestamptz) AS period_start, CAST(%(end)s AS timestamptz) AS period_end, "
    + ", ".join(f"c.{n}" for n in ALL_PARTS) + ", "
    + ", ".join(f"f.{n}" for n in METRIC_COLUMNS)
    # Each row's counter by its primary key, from inside a lateral subquery that OFFSET 0
    # keeps from being flattened into a join: one index lookup a row whatever the
    # statistics say. As a join, the planner may hash all the hour's counter rows for
    # every chunk, or, on a never-analyzed table, re-run the unnest once per counter row.
    + " FROM f CROSS JOIN LATERAL (SELECT organization_id, " + ", ".join(ALL_PARTS) + " FROM event_counters c"
    " WHERE c.id = f.counter_id AND c.revision = f.revision OFFSET 0) c),"
    f" up AS ({_UPSERT_SQL.replace('vp_stage_snapshots', 'src')})"
    " SELECT count(*) FROM src"
)


def _hour_chunk_params(counters: Sequence[tuple[str, int, int, Sequence[Any]]]) -> dict[str, Any]:
    """A chunk of (organization, counter id, revision, ALL_PARTS values) as the statement's column arrays."""
    figures_of_rows = [figures_of_values(_used_of_row(values)) for *_, values in counters]
    # Organization ids do not travel: the statement takes them from the counter rows.
    _, ids, revisions, _ = zip(*counters, strict=True)
    params: dict[str, Any] = {"counter_id": int8_column(ids), "revision": int8_column(revisions)}
    for name, (pack, _), column in zip(METRIC_COLUMNS, _KINDS, zip(*figures_of_rows, strict=True), strict=True):
        params[name] = pack(column)
    return params


def write_hour_from_counters(
    session: Session, period_type: str, start: datetime, end: datetime,
    counters: Sequence[tuple[str, int, int, Sequence[Any]]], platform_rows: Sequence[Sequence[Any]],
) -> tuple[bool, Parts]:
    """Upsert an hour's rows, the organizations' parts read from their counter rows.

    The caller holds the window's lock (bookkeeping.lock_window): no other run writes the
    window between this one's read of its stored rows and its writes.

    ``counters`` are the organizations' counter rows as read: (organization, counter id,
    revision, ALL_PARTS values); their figures are derived here, chunk by chunk, while
    PostgreSQL writes the chunks before. The platform's parts, the sum of ``platform_rows``
    (counter rows of ALL_PARTS), are summed while it writes the last ones; the platform
    row is written last, in the same pipeline.

    Returns (whether every row was written, the platform's parts). When every row was
    written, the window's rows of organizations without a counter row are deleted too.
    False means a counter changed since it was read and only the rows whose counter kept
    its revision were written: the caller then writes the window with write_window, from
    the parts it read (which deletes the vanished).
    """
    times = {"period_type": period_type, "start": start, "end": end}
    connection = dbapi_connection(session)
    with ExitStack() as cursors:
        stored_cur = cursors.enter_context(connection.cursor())
        chunks = [(cursors.enter_context(use_columns(connection.cursor())), counters[i:i + HOUR_CHUNK])
                  for i in range(0, len(counters), HOUR_CHUNK)]
        platform_cur = cursors.enter_context(connection.cursor())
        with connection.pipeline():
            # The window's rows before this run's (the run holds the window's lock): the
            # vanished are among them, and the read costs no round trip of its own.
            stored_cur.execute(_STORED_ROWS_SQL, (period_type, start))
            for cur, chunk in chunks:
                cur.execute(_HOUR_FROM_COUNTERS_SQL, {**times, **_hour_chunk_params(chunk)})
            platform_parts = sum_part_rows(platform_rows)
            # Queued behind the organizations' rows: one round trip for all.
            platform_cur.execute(_UPSERT_ONE_SQL, snapshot_values(None, period_type, start, end, platform_parts))
        written = sum(int(cur.fetchone()[0]) for cur, _ in chunks)
        all_written = written == len(counters)
        if all_written:
            _delete_vanished(stored_cur, stored_cur.fetchall(), {org for org, *_ in counters})
    return all_written, platform_parts


def delete_vanished(session: Session, period_type: str, start: datetime, organizations: Container[str]) -> None:
    """Delete the window's organization rows whose organization is not in ORGANIZATIONS."""
    with dbapi_connection(session).cursor() as cur:
        _delete_vanished(cur, cur.execute(_STORED_ROWS_SQL, (period_type, start)).fetchall(), organizations)


def _delete_vanished(cur: Any, stored: Sequence[tuple[int, str]], organizations: Container[str]) -> None:
    """Delete the STORED (id, organization) rows whose organization is not in ORGANIZATIONS."""
    vanished = sorted(row_id for row_id, org in stored if org not in organizations)
    if vanished:
        cur.execute(_DELETE_BY_ID_SQL, (vanished,))


@dataclass(frozen=True)
class SummedParts:
    """The parts of several snapshot rows of one organization (None = platform) added up."""

    parts: Parts
    windows: int
    name: str | None  # the organization's name, None when unknown (or for the platform)


_IN_RANGE = "s.period_type = %(period_type)s AND s.period_start >= %(lo)s AND s.period_start < %(hi)s"
# Three aggregates over the same rows, joined per organization, in one statement (one
# snapshot of the data); docs/profiling.md has the measurements behind each choice:
# - Exact parts, in any order, in a hash aggregate. Integer parts are summed as float8
#   and cast back: every partial sum of integers below 2**53 (9e15) is an integer a
#   double holds exactly, so the result is exact whatever the order, at half the cost
#   of a bigint sum. Decimal sums are exact in any order. HASHED_GROUP in the group key
#   makes hashing the only way to group, whatever the statistics expect.
# - Float parts, in a fixed order: floating-point addition is not associative, so a
#   day's averages would change in the last digits from one run to the next. They are
#   summed from a narrow subquery ordered by (organization, window start), by byte
#   ("C" collation), so the sort carries only those columns and no locale.
# - Sketches: the rows read in organization order (the id and the sketch only, by
#   byte), each organization's sketches concatenated as they stream by (vp_sketch_concat,
#   migration 0012) and that one array's entries counted per key in a hash of its own (as
#   float8, exact as above), then packed again. Memory is one organization's entries,
#   whatever the number of organizations: one hash of every (organization, key) spilled
#   1.8 GB to disk at 10,000 organizations' wide sketches. The grouping by organization
#   streams over the rows in their order (hashing rows already in order costs more, so
#   the planner does not). unnest() is called in the select list: a lateral function
#   scan first copies the entries into a tuplestore.
# The join key maps the platform (organization NULL) to '', which no organization id
# can be (ids are never blank); names are joined after summing.
_FLOAT_SUMS = ", ".join(f"sum(s.{n}) AS {n}" for n in FLOAT_PARTS)
_FLOAT_COLUMNS = ", ".join(f"s.{n}" for n in FLOAT_PARTS)
_BITS = sketch.COUNT_BITS
_SUMS = ", ".join(
    [f"sum(s.{n}::float8)::bigint AS {n}" for n in INT_PARTS]
    + [f"sum(s.{n}) AS {n}" for n in DECIMAL_PARTS]
    + [f"bool_or(s.{COARSE_PART}) AS {COARSE_PART}"]
)


def counted_keys_sql(entries_of: str, where: str = "true") -> str:
    """The sketch entries (column `b`) of the query ENTRIES_OF that satisfy WHERE, counted
    per key as float8 in a hash aggregate (exact, as above) and packed again: one bigint[],
    NULL when there are none."""
    return (
        f"SELECT array_agg((key << {_BITS}) + n) FROM (SELECT b >> {_BITS} AS key,"
        f" sum((b & {(1 << _BITS) - 1})::float8)::bigint AS n FROM ({entries_of}) AS x WHERE {where}"
        f" GROUP BY 1, {HASHED_GROUP}) AS u"
    )


def _sum_sql(kind: int | None) -> str:
    """The summing statement; with a kind, only that kind's sketch entries are summed."""
    only = "true" if kind is None else sketch.kind_sql("b", kind)
    return (
        "SELECT e.organization_id, o.name, e.windows, "
        + ", ".join(f"f.{n}" if n in FLOAT_PARTS else f"e.{n}" for n in SCALAR_PARTS)
        + f", coalesce(h.sketch, '{{}}'), e.{COARSE_PART}"
        + " FROM (SELECT s.organization_id, coalesce(s.organization_id, '') AS k, count(*) AS windows, "
        + f"{_SUMS} FROM metrics_snapshots s WHERE {_IN_RANGE} GROUP BY s.organization_id, {HASHED_GROUP}) e"
        + f" JOIN (SELECT coalesce(s.organization_id, '') AS k, {_FLOAT_SUMS}"
        + f" FROM (SELECT s.organization_id COLLATE \"C\" AS organization_id, {_FLOAT_COLUMNS}"
        + f" FROM metrics_snapshots s WHERE {_IN_RANGE}"
        + " ORDER BY 1, s.period_start) s GROUP BY s.organization_id) f ON f.k = e.k"
        + f" LEFT JOIN (SELECT k, ({counted_keys_sql('SELECT unnest(g.entries) AS b', only)}) AS sketch"
        + f" FROM (SELECT k, vp_sketch_concat(s.{SKETCH_PART}) AS entries"
        + f" FROM (SELECT coalesce(s.organization_id, '') COLLATE \"C\" AS k, s.{SKETCH_PART}"
        + f" FROM metrics_snapshots s WHERE {_IN_RANGE} ORDER BY 1) s GROUP BY k) g) h ON h.k = e.k"
        + " LEFT JOIN organizations o ON o.id = e.organization_id"
    )


_SUM_SQL = {kind: _sum_sql(kind) for kind in (None, sketch.END_TO_END)}
_N_SCALARS = len(SCALAR_PARTS)
_E2E_COUNT = SCALAR_PARTS.index("end_to_end_latency_count")
SUM_WORK_MEM = "64MB"


@contextmanager
def sum_plan_settings(cur: Any) -> Iterator[None]:
    """The planner settings of the summing statement, restored after it.

    - work_mem: room for the per-organization hash of ~100 sums and the float sort,
      which spill to disk at the default 4 MB.
    - No nested loop: with statistics taken before a burst of rows the planner expects
      one row from each aggregate and re-runs the ordered one once per organization;
      the aggregates are joined by hash whatever the statistics say.
    """
    previous = cur.execute("SELECT current_setting('work_mem'), current_setting('enable_nestloop')").fetchone()
    cur.execute("SELECT set_config('work_mem', %s, true), set_config('enable_nestloop', 'off', true)", (SUM_WORK_MEM,))
    yield
    cur.execute("SELECT set_config('work_mem', %s, true), set_config('enable_nestloop', %s, true)", tuple(previous))


@without_cyclic_gc
def sum_snapshot_parts(
    session: Session, period_type: str, lo: datetime, hi: datetime, *, end_to_end_only: bool = False
) -> dict[str | None, SummedParts]:
    """Additive parts of the snapshots of one period type with period_start in [lo, hi),
    summed per organization in SQL, with organization names.

    Key None is the platform: the sum of the platform rows, which include the events
    without an organization (never the sum of organization rows alone). With
    end_to_end_only, the sketches keep only end-to-end latency: all that derive() reads
    from them, and up to a fifth of the entries to sum (the organization breakdown's case).
    """
    params = {"period_type": period_type, "lo": lo, "hi": hi}
    sums: dict[str | None, SummedParts] = {}
    with dbapi_connection(session).cursor(binary=True) as cur, sum_plan_settings(cur):
        for org, name, windows, *values in cur.execute(_SUM_SQL[sketch.END_TO_END if end_to_end_only else None],
                                                         params):
            parts: Parts = dict(zip(SCALAR_PARTS, values[:_N_SCALARS], strict=True))
            parts[SKETCH_PART] = values[_N_SCALARS]
            parts[COARSE_PART] = bool(values[_N_SCALARS + 1])
            sums[org] = SummedParts(parts, windows, name)
    return sums
