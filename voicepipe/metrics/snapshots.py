"""Write one window's snapshot rows: the single code path for hourly and daily, org and platform."""

from __future__ import annotations

import functools
import operator
from collections.abc import Container, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from voicepipe.events.histogram import N_BUCKETS
from voicepipe.events.parts import (
    ALL_PARTS,
    DECIMAL_PARTS,
    FLOAT_PARTS,
    HISTOGRAM_PART,
    INT_PARTS,
    SCALAR_PARTS,
    Parts,
)
from voicepipe.infra.bulk import copy_then, dbapi_connection, stage
from voicepipe.infra.gcpause import without_cyclic_gc
from voicepipe.metrics.derive import METRIC_COLUMNS, derive

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
_UPSERT_SQL = (
    f"INSERT INTO metrics_snapshots ({', '.join(SNAPSHOT_COLUMNS)}) "
    f"SELECT {', '.join(SNAPSHOT_COLUMNS)} FROM vp_stage_snapshots "
    "ORDER BY organization_id NULLS FIRST "
    f"ON CONFLICT ON CONSTRAINT {SNAPSHOT_KEY} DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _UPDATED)
    + ", computed_at = now()"
    + f" WHERE ({', '.join(f'metrics_snapshots.{c}' for c in _UPDATED)})"
    + f" IS DISTINCT FROM ({', '.join(f'excluded.{c}' for c in _UPDATED)})"
)
# Vanished organizations are found in Python, from the window's stored organization ids:
# `organization_id <> ALL(array)` compared every row with every element (0.55 s for
# 10,000 organizations), and the list is nearly always empty.
_STORED_ORGS_SQL = (
    "SELECT organization_id FROM metrics_snapshots WHERE period_type = %s AND period_start = %s "
    "AND organization_id IS NOT NULL"
)
_DELETE_VANISHED_SQL = (
    "DELETE FROM metrics_snapshots WHERE period_type = %s AND period_start = %s "
    "AND organization_id = ANY(%s::text[])"
)


# A row's values in column order, in one C call each (10,000 rows an hour at 10,000 organizations).
_parts_of = operator.itemgetter(*PART_COLUMNS)
_figures_of = operator.itemgetter(*METRIC_COLUMNS)


def snapshot_values(
    organization_id: str | None, period_type: str, start: datetime, end: datetime, parts: Parts
) -> tuple[Any, ...]:
    """One snapshot row in SNAPSHOT_COLUMNS order: the parts as given, then their figures."""
    return (organization_id, period_type, start, end, *_parts_of(parts), *_figures_of(derive(parts)))


def write_window(
    session: Session,
    period_type: str,
    start: datetime,
    end: datetime,
    org_parts: Mapping[str, Parts],
    platform_parts: Parts,
) -> int:
    """Upsert one row per organization plus the platform row (organization NULL).

    Parts must be complete (every bucket of the histogram present), as empty_parts()
    makes them: they are stored as given. Rows whose values would not change are not
    rewritten. Organization rows of this window that are not in ``org_parts`` any more
    are deleted (their counters went away, e.g. after a rebuild). Returns the number of
    rows of the window (organizations plus the platform).
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
# snapshot), so the caller knows whether every row was written.
_HOUR_STAGE_COLUMNS: tuple[str, ...] = ("organization_id", "revision", *METRIC_COLUMNS)
_HOUR_STAGE_LIKE = "metrics_snapshots CROSS JOIN (SELECT revision FROM event_counters) r"
_HOUR_FROM_COUNTERS_SQL = (
    # Named up front: pg_stat_activity shows the first 1 kB of a statement, and the
    # column lists push the INSERT far past it.
    "/* upsert metrics_snapshots of an hour from event_counters and vp_stage_hour */"
    " WITH src AS (SELECT st.organization_id, CAST(%(period_type)s AS varchar) AS period_type,"
    " CAST(%(start)s AS timestamptz) AS period_start, CAST(%(end)s AS timestamptz) AS period_end, "
    + ", ".join(f"c.{n}" for n in SCALAR_PARTS)
    # Counters store an all-zero histogram empty; snapshot rows carry every bucket.
    + f", c.{HISTOGRAM_PART} || array_fill(0::bigint, ARRAY[{N_BUCKETS} - cardinality(c.{HISTOGRAM_PART})])"
    + f" AS {HISTOGRAM_PART}, "
    + ", ".join(f"st.{n}" for n in METRIC_COLUMNS)
    + " FROM vp_stage_hour st JOIN event_counters c ON c.hour_start = %(start)s"
    " AND c.organization_id = st.organization_id AND c.revision = st.revision),"
    f" up AS ({_UPSERT_SQL.replace('vp_stage_snapshots', 'src')})"
    " SELECT count(*) FROM src"
)


def write_hour_from_counters(
    session: Session, period_type: str, start: datetime, end: datetime,
    org_rows: Sequence[tuple[str, int, Parts]], platform_parts: Parts,
) -> bool:
    """Upsert an hour's rows, the organizations' parts read from their counter rows.

    ``org_rows`` are (organization, counter revision, parts as read at that revision).
    Returns False, having written only the rows whose counter kept its revision, if a
    counter changed since it was read: the caller then writes the window with
    write_window, from the parts it read. Vanished organizations are not handled here.
    """
    platform = snapshot_values(None, period_type, start, end, platform_parts)
    copy_then(session, "vp_stage_snapshots", "metrics_snapshots", SNAPSHOT_COLUMNS, [platform], _UPSERT_SQL,
              binary=True)
    rows = [(org, revision, *_figures_of(derive(parts))) for org, revision, parts in sorted(org_rows)]
    params = {"period_type": period_type, "start": start, "end": end}
    with stage(session, "vp_stage_hour", _HOUR_STAGE_LIKE, _HOUR_STAGE_COLUMNS, rows, binary=True) as cur:
        (written,) = cur.execute(_HOUR_FROM_COUNTERS_SQL, params).fetchone()
    return int(written) == len(rows)


def delete_vanished(session: Session, period_type: str, start: datetime, organizations: Container[str]) -> None:
    """Delete the window's organization rows whose organization is not in ORGANIZATIONS."""
    with dbapi_connection(session).cursor() as cur:
        stored = cur.execute(_STORED_ORGS_SQL, (period_type, start)).fetchall()
        vanished = sorted(org for (org,) in stored if org not in organizations)
        if vanished:
            cur.execute(_DELETE_VANISHED_SQL, (period_type, start, vanished))


@dataclass(frozen=True)
class SummedParts:
    """The parts of several snapshot rows of one organization (None = platform) added up."""

    parts: Parts
    windows: int
    name: str | None  # the organization's name, None when unknown (or for the platform)


_IN_RANGE = "s.period_type = %(period_type)s AND s.period_start >= %(lo)s AND s.period_start < %(hi)s"
# Two aggregates over the same rows, joined per organization, in one statement (one
# snapshot of the data); docs/profiling.md has the measurements behind each choice:
# - Exact parts, in any order, in a hash aggregate. Integer parts and histogram buckets
#   are summed as float8 and cast back: every partial sum of integers below 2**53 (9e15)
#   is an integer a double holds exactly, so the result is exact whatever the order, at
#   half the cost of a bigint sum. Histograms are summed one sum per subscript in use
#   (a bucket past an array's end is NULL, which sum skips). Decimal sums are exact in
#   any order. The constant xid group key changes no group but makes hashing the only
#   way to group (xid has no ordering), whatever the statistics expect.
# - Float parts, in a fixed order: floating-point addition is not associative, so a
#   day's averages would change in the last digits from one run to the next. They are
#   summed from a narrow subquery ordered by (organization, window start), by byte
#   ("C" collation), so the sort carries only those columns and no locale.
# The join key maps the platform (organization NULL) to '', which no organization id
# can be (ids are never blank); names are joined after summing.
_ALL_BUCKETS: tuple[int, ...] = tuple(range(1, N_BUCKETS + 1))  # PostgreSQL subscripts
_FLOAT_SUMS = ", ".join(f"sum(s.{n}) AS {n}" for n in FLOAT_PARTS)
_FLOAT_COLUMNS = ", ".join(f"s.{n}" for n in FLOAT_PARTS)
_H = f"s.{HISTOGRAM_PART}"


@functools.lru_cache(maxsize=128)
def _sum_sql(buckets: tuple[int, ...]) -> str:
    """The summing statement, with one sum per histogram subscript in BUCKETS.

    The subscripts left out are summed for the platform rows only, in the column
    `unseen` (0 when none is left out): sum_snapshot_parts checks that it is 0.
    """
    unseen = [i for i in _ALL_BUCKETS if i not in buckets]
    unseen_sum = (
        "sum(CASE WHEN s.organization_id IS NULL THEN ("
        + " + ".join(f"coalesce({_H}[{i}], 0)" for i in unseen)
        + ")::float8 END)" if unseen else "0"
    )
    sums = ", ".join(
        [f"sum(s.{n}::float8)::bigint AS {n}" for n in INT_PARTS]
        + [f"sum(s.{n}) AS {n}" for n in DECIMAL_PARTS]
        + [f"coalesce(sum({_H}[{i}]::float8), 0)::bigint AS b{i}" for i in buckets]
        + [f"{unseen_sum} AS unseen"]
    )
    return (
        "SELECT e.organization_id, o.name, e.windows, e.unseen, "
        + ", ".join(f"f.{n}" if n in FLOAT_PARTS else f"e.{n}" for n in SCALAR_PARTS)
        + "".join(f", e.b{i}" for i in buckets)
        + " FROM (SELECT s.organization_id, coalesce(s.organization_id, '') AS k, count(*) AS windows, "
        + f"{sums} FROM metrics_snapshots s WHERE {_IN_RANGE} GROUP BY s.organization_id, CAST('0' AS xid)) e"
        + f" JOIN (SELECT coalesce(s.organization_id, '') AS k, {_FLOAT_SUMS}"
        + f" FROM (SELECT s.organization_id COLLATE \"C\" AS organization_id, {_FLOAT_COLUMNS}"
        + f" FROM metrics_snapshots s WHERE {_IN_RANGE}"
        + " ORDER BY 1, s.period_start) s GROUP BY s.organization_id) f ON f.k = e.k"
        + " LEFT JOIN organizations o ON o.id = e.organization_id"
    )


# The histogram buckets in use over the range, from the platform rows (30 rows for 30
# days): a bucket empty for the platform is empty for every organization.
_USED_BUCKETS_SQL = (
    "SELECT coalesce(array_agg(i ORDER BY i), '{}') FROM (SELECT i FROM metrics_snapshots s"
    f" CROSS JOIN LATERAL generate_subscripts({_H}, 1) i"
    f" WHERE {_IN_RANGE} AND s.organization_id IS NULL GROUP BY i HAVING sum({_H}[i]) > 0) u"
)
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
    session: Session, period_type: str, lo: datetime, hi: datetime
) -> dict[str | None, SummedParts]:
    """Additive parts of the snapshots of one period type with period_start in [lo, hi),
    summed per organization in SQL, with organization names.

    Key None is the platform: the sum of the platform rows, which include the events
    without an organization (never the sum of organization rows alone).

    Only the histogram buckets in use are summed per organization (a sum per bucket
    per row was half the statement's cost, and latencies fill a few of the 64). Which
    ones are in use is read first, from the platform rows, whose every bucket is at
    least any organization's in the same window (both are written in one transaction).
    A window that changed between the two statements shows in the platform rows'
    left-out buckets (`unseen`); a histogram that does not add up to its end-to-end
    count shows a left-out bucket too: either way the sum runs again over all 64.
    """
    params = {"period_type": period_type, "lo": lo, "hi": hi}
    with dbapi_connection(session).cursor() as cur:
        used = tuple(cur.execute(_USED_BUCKETS_SQL, params).fetchone()[0])
        with sum_plan_settings(cur):
            sums = _sums(cur, used, params)
            if used != _ALL_BUCKETS and sums is None:
                sums = _sums(cur, _ALL_BUCKETS, params)
    return sums or {}


def _sums(cur: Any, buckets: tuple[int, ...], params: Mapping[str, Any]) -> dict[str | None, SummedParts] | None:
    """The sums with BUCKETS summed and the others zero; None if a left-out bucket is not empty."""
    complete = buckets == _ALL_BUCKETS
    sums: dict[str | None, SummedParts] = {}
    for org, name, windows, unseen, *values in cur.execute(_sum_sql(buckets), params):
        counts = values[_N_SCALARS:]
        if complete:
            hist = counts
        else:
            if unseen or sum(counts) != values[_E2E_COUNT]:
                return None
            hist = [0] * N_BUCKETS
            for i, count in zip(buckets, counts, strict=True):
                hist[i - 1] = count
        parts: Parts = dict(zip(SCALAR_PARTS, values[:_N_SCALARS], strict=True))
        parts[HISTOGRAM_PART] = hist
        sums[org] = SummedParts(parts, windows, name)
    if not complete and sums and None not in sums:
        return None  # organization rows without platform rows: nothing says which buckets they use
    return sums
