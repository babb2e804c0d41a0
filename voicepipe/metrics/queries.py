"""Dashboard reads over metrics snapshots.

- ``historical_snapshots``: one organization's rows, or the platform rows when no
  organization is given (never a mix).
- ``organization_breakdown``: every organization over a range, with its name, in one
  query; figures are re-derived from the summed additive parts (exact, no averaging
  of averages).
- ``stage_breakdown``: per stage, from platform rows only (or one organization's), so
  nothing is counted twice.
- ``range_figures``: every figure over a whole range, derived from the summed parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.metrics import PERIOD_TYPES, MetricsSnapshot
from voicepipe.errors import InvalidInput
from voicepipe.events.parts import ALL_PARTS, sum_parts
from voicepipe.infra.gcpause import without_cyclic_gc
from voicepipe.metrics.derive import derive, stage_figures
from voicepipe.metrics.snapshots import sum_snapshot_parts

UNKNOWN_ORGANIZATION = "Unknown"
_PART_COLUMNS: list[Any] = [MetricsSnapshot.__table__.c[name] for name in ALL_PARTS]


def _check(period_type: str, start: datetime, end: datetime) -> None:
    if period_type not in PERIOD_TYPES:
        raise InvalidInput.field("period_type", f"expected one of {', '.join(PERIOD_TYPES)}, got {period_type!r}")
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidInput.field("start", "start and end must carry a UTC offset")
    if end < start:
        raise InvalidInput.field("end", "end is before start")


def historical_snapshots(
    session: Session,
    period_type: str,
    start: datetime,
    end: datetime,
    organization_id: str | None = None,
) -> list[MetricsSnapshot]:
    """Snapshots with period_start in [start, end), oldest first; platform rows when no organization."""
    _check(period_type, start, end)
    org_filter = (
        MetricsSnapshot.organization_id.is_(None)
        if organization_id is None
        else MetricsSnapshot.organization_id == organization_id
    )
    return list(
        session.execute(
            select(MetricsSnapshot)
            .where(
                MetricsSnapshot.period_type == period_type,
                MetricsSnapshot.period_start >= start,
                MetricsSnapshot.period_start < end,
                org_filter,
            )
            .order_by(MetricsSnapshot.period_start)
        ).scalars()
    )


@dataclass(frozen=True)
class OrganizationFigures:
    organization_id: str
    name: str
    windows: int
    metrics: dict[str, Any]  # every SnapshotMetrics column, derived over the whole range


@without_cyclic_gc
def organization_breakdown(
    session: Session, period_type: str, start: datetime, end: datetime
) -> list[OrganizationFigures]:
    """Per organization over [start, end), busiest first, with names ("Unknown" when missing).

    Summed in PostgreSQL (one statement: the parts and latency sketches, names joined
    in), then derived from the summed parts: never an average of averages.
    """
    _check(period_type, start, end)
    sums = sum_snapshot_parts(session, period_type, start, end, end_to_end_only=True)
    result = [
        OrganizationFigures(org, summed.name or UNKNOWN_ORGANIZATION, summed.windows, derive(summed.parts))
        for org, summed in sums.items()
        if org is not None
    ]
    result.sort(key=lambda f: (-f.metrics["artifacts_received"], f.name, f.organization_id))
    return result


def range_parts(
    session: Session, period_type: str, start: datetime, end: datetime, organization_id: str | None = None
) -> dict[str, Any]:
    """The additive parts of the platform rows (or one organization's) over [start, end), summed."""
    _check(period_type, start, end)
    org_filter = (
        MetricsSnapshot.organization_id.is_(None)
        if organization_id is None
        else MetricsSnapshot.organization_id == organization_id
    )
    rows = cast(
        Sequence[Mapping[str, Any]],
        session.execute(
            select(*_PART_COLUMNS).where(
                MetricsSnapshot.period_type == period_type,
                MetricsSnapshot.period_start >= start,
                MetricsSnapshot.period_start < end,
                org_filter,
            )
        ).mappings().all(),
    )
    return sum_parts(rows)


def range_figures(
    session: Session, period_type: str, start: datetime, end: datetime, organization_id: str | None = None
) -> dict[str, Any]:
    """Every snapshot figure over the whole range [start, end), derived from the summed parts
    (platform rows, or one organization's): never an average of averages."""
    return derive(range_parts(session, period_type, start, end, organization_id))


def stage_breakdown(
    session: Session, period_type: str, start: datetime, end: datetime, organization_id: str | None = None
) -> list[dict[str, Any]]:
    """Per stage over [start, end): completed, failed, failure rate, mean latency.

    From platform rows only (or one organization's rows only), so nothing is counted twice.
    """
    return stage_figures(range_parts(session, period_type, start, end, organization_id))
