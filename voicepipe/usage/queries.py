"""An organization's AI usage over a date range, the same fields from rollups or raw rows.

Ranges longer than 7 days read the daily rollups (one row per active day), shorter
ones the raw log. Rollups of the last two days may not exist yet (the daily run is at
01:30 UTC), so even a long range reads those recent days from the raw log; no day
is read twice and none is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.usage import AiUsageDailyAggregate, AiUsageLog
from voicepipe.clock import utcnow
from voicepipe.errors import InvalidInput
from voicepipe.usage.rollup import UsageGroup, UsageTotals, group_rows, grouped_calls
from voicepipe.windows import DAY, day_start

RAW_MAX_DAYS = 7
TOP = 10


@dataclass(frozen=True)
class UsageSummary:
    organization_id: str
    start: date
    end: date  # inclusive
    source: str  # "raw" or "rollups" (with the most recent days read raw)
    totals: UsageTotals
    cache_hit_rate: float
    by_operation: dict[str, UsageTotals]
    top_coaches: list[tuple[str, UsageTotals]]
    top_players: list[tuple[str, UsageTotals]]

    def to_json(self) -> dict[str, Any]:
        return {
            "organization_id": self.organization_id,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "source": self.source,
            "totals": self.totals.to_json(),
            "cache_hit_rate": self.cache_hit_rate,
            "by_operation": {k: v.to_json() for k, v in self.by_operation.items()},
            "top_coaches": [{"coach_id": k, **v.to_json()} for k, v in self.top_coaches],
            "top_players": [{"player_id": k, **v.to_json()} for k, v in self.top_players],
        }


def _top(items: dict[str, UsageTotals], n: int) -> list[tuple[str, UsageTotals]]:
    return sorted(items.items(), key=lambda kv: (-kv[1].cost, -kv[1].calls, kv[0]))[:n]


def _raw(session: Session, organization_id: str, first: date, last: date, into: UsageGroup) -> None:
    lo, hi = day_start(first), day_start(last) + DAY
    rows = grouped_calls(
        session,
        [AiUsageLog.organization_id == organization_id, AiUsageLog.occurred_at >= lo, AiUsageLog.occurred_at < hi],
    )
    group = group_rows(rows).get(organization_id)
    if group is None:
        return
    into.totals.add(group.totals)
    for target, source in (
        (into.by_operation, group.by_operation),
        (into.by_coach, group.by_coach),
        (into.by_player, group.by_player),
    ):
        for key, totals in source.items():
            target[key].add(totals)


def usage_for_organization(
    session: Session,
    organization_id: str,
    start: date,
    end: date,
    *,
    now: datetime | None = None,
    top: int = TOP,
) -> UsageSummary:
    """Totals, by operation, top coaches and players over [start, end] (both inclusive, UTC days)."""
    if end < start:
        raise InvalidInput.field("end", f"{end.isoformat()} is before start {start.isoformat()}")
    group = UsageGroup()
    n_days = (end - start).days + 1
    if n_days <= RAW_MAX_DAYS:
        source = "raw"
        _raw(session, organization_id, start, end, group)
    else:
        source = "rollups"
        raw_from = max(start, (now or utcnow()).date() - timedelta(days=1))
        rollup_last = min(end, raw_from - timedelta(days=1))
        if rollup_last >= start:
            for row in session.execute(
                select(AiUsageDailyAggregate).where(
                    AiUsageDailyAggregate.organization_id == organization_id,
                    AiUsageDailyAggregate.day >= start,
                    AiUsageDailyAggregate.day <= rollup_last,
                )
            ).scalars():
                group.merge_rollup(row)
        if raw_from <= end:
            _raw(session, organization_id, raw_from, end, group)
    return UsageSummary(
        organization_id=organization_id,
        start=start,
        end=end,
        source=source,
        totals=group.totals,
        cache_hit_rate=group.totals.cache_hit_rate,
        by_operation=dict(sorted(group.by_operation.items())),
        top_coaches=_top(group.by_coach, top),
        top_players=_top(group.by_player, top),
    )
