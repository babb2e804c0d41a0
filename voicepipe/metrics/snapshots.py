"""Write one window's snapshot rows: the single code path for hourly and daily, org and platform."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from voicepipe.bulk import copy_then, dbapi_connection
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
from voicepipe.metrics.derive import METRIC_COLUMNS, derive

PART_COLUMNS: tuple[str, ...] = ALL_PARTS
SNAPSHOT_KEY = "uq_metrics_snapshots_organization_id_period_type_period_start"


SNAPSHOT_COLUMNS: tuple[str, ...] = (
    "organization_id", "period_type", "period_start", "period_end", *PART_COLUMNS, *METRIC_COLUMNS,
)
# The unique constraint treats NULLs as equal, so the platform row (organization NULL)
# conflicts with itself too: one row a window. ORDER BY gives concurrent writers one lock order.
# A row whose values are all unchanged is left alone (its computed_at says when its figures
# last changed): a window is re-run when a late event touches one organization, and
# rewriting the other rows unchanged cost 150 ms for 10,000 organizations (new row
# versions, index entries and WAL for nothing).
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
    # columns in about 20 ms (voicepipe/bulk.py says why not parameterised INSERTs).
    copy_then(session, "vp_stage_snapshots", "metrics_snapshots", SNAPSHOT_COLUMNS, rows, _UPSERT_SQL, binary=True)
    with dbapi_connection(session).cursor() as cur:
        stored = cur.execute(_STORED_ORGS_SQL, (period_type, start)).fetchall()
        vanished = sorted(org for (org,) in stored if org not in org_parts)
        if vanished:
            cur.execute(_DELETE_VANISHED_SQL, (period_type, start, vanished))
    return len(rows)


@dataclass(frozen=True)
class SummedParts:
    """The parts of several snapshot rows of one organization (None = platform) added up."""

    parts: Parts
    windows: int
    name: str | None  # the organization's name, None when unknown (or for the platform)


_IN_RANGE = "s.period_type = %(period_type)s AND s.period_start >= %(lo)s AND s.period_start < %(hi)s"
# Two aggregates over the same rows, joined per organization, in one statement (one
# snapshot of the data):
# - Exact parts, in any order. Integer parts and histogram buckets are summed as float8
#   and cast back: every partial sum of integers below 2**53 (9e15) is an integer a
#   double holds exactly, so the result is exact whatever the order, and PostgreSQL's
#   float8 sum costs half its bigint sum (which accumulates in numeric): 0.43 s instead
#   of 0.89 s for the 64 buckets of 300,000 rows. Histograms are summed one sum per
#   subscript (a bucket past an array's end is NULL, which sum skips); an unnest of
#   every bucket grouped by (organization, bucket) cost twice as much again. Decimal
#   sums are exact in any order.
# - Float parts, in a fixed order: floating-point addition is not associative, and
#   summing in whatever order the scan delivered rows changed a day's averages in the
#   last digits from one run to the next. They are summed from a subquery ordered by
#   (organization, window start) that carries only those columns: sorting whole rows
#   spilled 270 MB to disk for 10,000 organizations x 30 days.
# The join key maps the platform (organization NULL) to '', which no organization id
# can be (ids are never blank); names are joined after summing.
_SUMS = ", ".join(
    [f"sum(s.{n}::float8)::bigint AS {n}" for n in INT_PARTS]
    + [f"sum(s.{n}) AS {n}" for n in DECIMAL_PARTS]
    + [f"coalesce(sum(s.{HISTOGRAM_PART}[{i}]::float8), 0)::bigint AS b{i}" for i in range(1, N_BUCKETS + 1)]
)
_FLOAT_SUMS = ", ".join(f"sum(s.{n}) AS {n}" for n in FLOAT_PARTS)
_SUM_SQL = (
    "SELECT e.organization_id, o.name, e.windows, "
    + ", ".join(f"f.{n}" if n in FLOAT_PARTS else f"e.{n}" for n in SCALAR_PARTS)
    + ", " + ", ".join(f"e.b{i}" for i in range(1, N_BUCKETS + 1))
    + " FROM (SELECT s.organization_id, coalesce(s.organization_id, '') AS k, count(*) AS windows, "
    + f"{_SUMS} FROM metrics_snapshots s WHERE {_IN_RANGE} GROUP BY s.organization_id) e"
    + f" JOIN (SELECT coalesce(s.organization_id, '') AS k, {_FLOAT_SUMS}"
    + f" FROM (SELECT s.organization_id, {', '.join('s.' + n for n in FLOAT_PARTS)}"
    + f" FROM metrics_snapshots s WHERE {_IN_RANGE}"
    + " ORDER BY s.organization_id, s.period_start) s GROUP BY s.organization_id) f ON f.k = e.k"
    + " LEFT JOIN organizations o ON o.id = e.organization_id"
)
_N_SCALARS = len(SCALAR_PARTS)
SUM_WORK_MEM = "64MB"


def sum_snapshot_parts(
    session: Session, period_type: str, lo: datetime, hi: datetime
) -> dict[str | None, SummedParts]:
    """Additive parts of the snapshots of one period type with period_start in [lo, hi),
    summed per organization in SQL, with organization names.

    Key None is the platform: the sum of the platform rows, which include the events
    without an organization (never the sum of organization rows alone).
    """
    params = {"period_type": period_type, "lo": lo, "hi": hi}
    sums: dict[str | None, SummedParts] = {}
    with dbapi_connection(session).cursor() as cur:
        # Room for the per-organization hash of ~100 sums (25 MB for 10,000 organizations)
        # and the float sort: at the default 4 MB both spilled to disk. For this
        # transaction only.
        cur.execute("SELECT set_config('work_mem', %s, true)", (SUM_WORK_MEM,))
        for org, name, windows, *values in cur.execute(_SUM_SQL, params):
            parts: Parts = dict(zip(SCALAR_PARTS, values[:_N_SCALARS], strict=True))
            parts[HISTOGRAM_PART] = values[_N_SCALARS:]
            sums[org] = SummedParts(parts, windows, name)
    return sums
