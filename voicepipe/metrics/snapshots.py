"""Write one window's snapshot rows: the single code path for hourly and daily, org and platform."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from voicepipe.bulk import copy_then, dbapi_connection
from voicepipe.events.parts import ALL_PARTS, Parts
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
