"""Write one window's snapshot rows: the single code path for hourly and daily, org and platform."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.metrics import MetricsSnapshot
from voicepipe.events.parts import ALL_PARTS, HISTOGRAM_PART, Parts
from voicepipe.metrics.derive import METRIC_COLUMNS, derive

PART_COLUMNS: tuple[str, ...] = ALL_PARTS
SNAPSHOT_KEY = "uq_metrics_snapshots_organization_id_period_type_period_start"


def snapshot_row(
    organization_id: str | None, period_type: str, start: datetime, end: datetime, parts: Parts
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "organization_id": organization_id,
        "period_type": period_type,
        "period_start": start,
        "period_end": end,
    }
    row.update({name: parts[name] for name in PART_COLUMNS})
    row[HISTOGRAM_PART] = list(parts[HISTOGRAM_PART])
    row.update(derive(parts))
    return row


def write_window(
    session: Session,
    period_type: str,
    start: datetime,
    end: datetime,
    org_parts: Mapping[str, Parts],
    platform_parts: Parts,
) -> int:
    """Upsert one row per organization plus the platform row (organization NULL).

    Organization rows of this window that are not in ``org_parts`` any more are deleted
    (their counters went away, e.g. after a rebuild). Returns the number of rows written.
    """
    rows = [snapshot_row(org, period_type, start, end, parts) for org, parts in sorted(org_parts.items())]
    rows.append(snapshot_row(None, period_type, start, end, platform_parts))
    # One statement compiled once and sent as executemany: SQLAlchemy batches the
    # parameter sets into multi-row VALUES itself ("insertmanyvalues"), which is far
    # cheaper than compiling a literal 1,000-row VALUES clause.
    stmt = pg_insert(MetricsSnapshot)
    upsert = stmt.on_conflict_do_update(
        # The unique constraint treats NULLs as equal, so the platform row
        # (organization NULL) conflicts with itself too: one row a window.
        constraint=SNAPSHOT_KEY,
        set_={
            **{name: stmt.excluded[name] for name in (*PART_COLUMNS, *METRIC_COLUMNS, "period_end")},
            "computed_at": func.now(),
        },
    )
    session.connection().execute(upsert, rows)
    session.execute(
        delete(MetricsSnapshot).where(
            MetricsSnapshot.period_type == period_type,
            MetricsSnapshot.period_start == start,
            MetricsSnapshot.organization_id.is_not(None),
            MetricsSnapshot.organization_id.not_in(list(org_parts)),
        )
    )
    return len(rows)
