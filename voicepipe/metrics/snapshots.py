"""Write one window's snapshot rows: the single code path for hourly and daily, org and platform."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from voicepipe.bulk import copy_then, dbapi_connection
from voicepipe.events.histogram import empty as empty_histogram
from voicepipe.events.parts import (
    ALL_PARTS,
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
_UPSERT_SQL = (
    f"INSERT INTO metrics_snapshots ({', '.join(SNAPSHOT_COLUMNS)}) "
    f"SELECT {', '.join(SNAPSHOT_COLUMNS)} FROM vp_stage_snapshots "
    "ORDER BY organization_id NULLS FIRST "
    f"ON CONFLICT ON CONSTRAINT {SNAPSHOT_KEY} DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*PART_COLUMNS, *METRIC_COLUMNS, "period_end"))
    + ", computed_at = now()"
)
# One array parameter, not one bound parameter per organization: an IN list of
# 1,000 values cost more to compile than the delete itself.
_DELETE_VANISHED_SQL = (
    "DELETE FROM metrics_snapshots WHERE period_type = %s AND period_start = %s "
    "AND organization_id IS NOT NULL AND organization_id <> ALL(%s::text[])"
)


def snapshot_values(
    organization_id: str | None, period_type: str, start: datetime, end: datetime, parts: Parts
) -> tuple[Any, ...]:
    """One snapshot row in SNAPSHOT_COLUMNS order: the parts as given, then their figures."""
    figures = derive(parts)
    return (
        organization_id, period_type, start, end,
        *[parts[name] for name in PART_COLUMNS],
        *[figures[name] for name in METRIC_COLUMNS],
    )


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
    makes them: they are stored as given. Organization rows of this window that are
    not in ``org_parts`` any more are deleted (their counters went away, e.g. after a
    rebuild). Returns the number of rows written.
    """
    rows = [snapshot_values(org, period_type, start, end, parts) for org, parts in sorted(org_parts.items())]
    rows.append(snapshot_values(None, period_type, start, end, platform_parts))
    # Binary COPY into a staging table and one INSERT ... SELECT: 1,001 rows of ~90
    # columns in about 20 ms (voicepipe/bulk.py says why not parameterised INSERTs).
    copy_then(session, "vp_stage_snapshots", "metrics_snapshots", SNAPSHOT_COLUMNS, rows, _UPSERT_SQL, binary=True)
    with dbapi_connection(session).cursor() as cur:
        cur.execute(_DELETE_VANISHED_SQL, (period_type, start, list(org_parts)))
    return len(rows)


@dataclass(frozen=True)
class SummedParts:
    """The parts of several snapshot rows of one organization (None = platform) added up."""

    parts: Parts
    windows: int
    name: str | None  # the organization's name, None when unknown (or for the platform)


_IN_RANGE = "s.period_type = %(period_type)s AND s.period_start >= %(lo)s AND s.period_start < %(hi)s"
# Sums come back in the parts' own types (sum(bigint) is numeric in PostgreSQL), so
# rows become parts without a conversion per value. Float sums run in a fixed order:
# floating-point addition is not associative, and summing in whatever order the scan
# delivered rows changed a day's averages in the last digits from one run to the next.
# The rows are summed from a subquery ordered by (organization, window start), which the
# unique index already delivers in that order (no sort; an ORDER BY inside each float
# sum cost a sort per aggregate, twice the time); names are joined after summing, so no
# join can reorder the rows. Integer and decimal sums are exact in any order.
_SUMS = ", ".join(f"sum(s.{n})::bigint AS {n}" if n in INT_PARTS else f"sum(s.{n}) AS {n}" for n in SCALAR_PARTS)
_SUM_SQL = (
    "SELECT a.organization_id, o.name, a.windows, " + ", ".join(f"a.{n}" for n in SCALAR_PARTS)
    + f" FROM (SELECT s.organization_id, count(*) AS windows, {_SUMS}"
    + f" FROM (SELECT * FROM metrics_snapshots s WHERE {_IN_RANGE}"
    + " ORDER BY s.organization_id, s.period_start) s GROUP BY s.organization_id) a"
    + " LEFT JOIN organizations o ON o.id = a.organization_id"
)
# Histograms are summed bucket by bucket in SQL, skipping empty buckets (latency
# histograms are sparse): summing 24,000 rows in Python cost seconds for 1,000 orgs.
_HIST_SQL = (
    "SELECT s.organization_id, b.i::int, sum(b.n)::bigint FROM metrics_snapshots s"
    f" CROSS JOIN LATERAL unnest(s.{HISTOGRAM_PART}) WITH ORDINALITY AS b(n, i)"
    f" WHERE {_IN_RANGE} AND b.n <> 0 GROUP BY s.organization_id, b.i"
)


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
        for org, name, windows, *values in cur.execute(_SUM_SQL, params):
            parts: Parts = dict(zip(SCALAR_PARTS, values, strict=True))
            parts[HISTOGRAM_PART] = empty_histogram()
            sums[org] = SummedParts(parts, windows, name)
        for org, index, count in cur.execute(_HIST_SQL, params):
            sums[org].parts[HISTOGRAM_PART][index - 1] = count
    return sums
