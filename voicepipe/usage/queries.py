"""An organization's AI usage over a date range, the same fields from rollups or raw rows.

Ranges longer than 7 days read the daily rollups (one row per active day), shorter
ones the raw log. Rollups of the last two days may not exist yet (the daily run is at
01:30 UTC), so even a long range reads those recent days from the raw log. Days older
than the raw log's retention are read from rollups whatever the range's length (the
log of those days may be gone). No day is read twice and none is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from models.usage import AiUsageLog
from voicepipe.clock import utcnow
from voicepipe.errors import InvalidInput
from voicepipe.infra.bulk import HASHED_GROUP
from voicepipe.maintenance.cleanup import usage_recomputable_from
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


def ranked(items: dict[str, UsageTotals]) -> list[tuple[str, UsageTotals]]:
    """Costliest first, then most calls, then by key."""
    return sorted(items.items(), key=lambda kv: (-kv[1].cost, -kv[1].calls, kv[0]))


def _top(items: dict[str, UsageTotals], n: int) -> list[tuple[str, UsageTotals]]:
    return ranked(items)[:n]


_SUMS = "sum(b.cost), sum(b.calls), sum(b.input_tokens), sum(b.cached_tokens), sum(b.output_tokens)"
# The range's rollups (materialized: read once by every part), joined to their breakdown rows.
_RANGE = (
    "WITH r AS MATERIALIZED (SELECT id, total_cost, total_calls, total_input_tokens, total_cached_tokens, "
    "total_output_tokens FROM ai_usage_daily_aggregates "
    "WHERE organization_id = :org AND day >= :first AND day <= :last) "
    "SELECT 'totals', NULL, coalesce(sum(total_cost), 0), coalesce(sum(total_calls), 0), "
    "coalesce(sum(total_input_tokens), 0), coalesce(sum(total_cached_tokens), 0), "
    "coalesce(sum(total_output_tokens), 0) FROM r"
)
_ROWS = "FROM r JOIN ai_usage_daily_breakdowns AS b ON b.rollup_id = r.id"

# Every key of every breakdown, for a range whose last days are read raw too (the raw
# days' calls are added in Python, so the ranking needs every coach and player).
_ROLLUPS = text(f"{_RANGE} UNION ALL SELECT b.kind, b.key, {_SUMS} {_ROWS} GROUP BY b.kind, b.key, {HASHED_GROUP}")

# Only the top coaches and players, for a range read wholly from rollups, ordered as _top
# orders them (cost, calls, key; "C" is code point order, as Python's). The breakdowns
# are rows with their sums in columns (voicepipe/usage/rollup.py): the statement took 9.0 ms
# ranking 30 days x 400 players from each day's jsonb, 5.7 ms from rows (docs/profiling.md).
# Grouped by hash (HASHED_GROUP) whatever the statistics: rows just written by the
# day's rollup, not yet analyzed, were estimated at one a day and sorted (4 ms more).
_ROLLUPS_TOP = text(
    f"{_RANGE} UNION ALL SELECT 'operation', b.key, {_SUMS} {_ROWS} WHERE b.kind = 'operation' "
    f"GROUP BY b.key, {HASHED_GROUP}"
    + "".join(
        f" UNION ALL (SELECT '{kind}', b.key, {_SUMS} {_ROWS} WHERE b.kind = '{kind}' GROUP BY b.key, "
        f'{HASHED_GROUP} ORDER BY 3 DESC, 4 DESC, b.key COLLATE "C" LIMIT :top)'
        for kind in ("coach", "player")
    )
)


def _rollups(
    session: Session, organization_id: str, first: date, last: date, into: UsageGroup, top: int | None = None
) -> None:
    """Add the rollups of [first, last] into into; with top, only the top coaches and players."""
    targets = {"operation": into.by_operation, "coach": into.by_coach, "player": into.by_player}
    params: dict[str, Any] = {"org": organization_id, "first": first, "last": last}
    statement = _ROLLUPS
    if top is not None:
        statement, params["top"] = _ROLLUPS_TOP, top
    for part, key, cost, calls, inp, cached, out in session.execute(statement, params):
        totals = UsageTotals(Decimal(cost), int(calls), int(inp), int(cached), int(out))
        if part == "totals":
            into.totals.add(totals)
        else:
            targets[part][key].add(totals)


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
    now = now or utcnow()
    # Days before the raw log's retention cutoff may be deleted (wholly or in part)
    # from the log: they are read from their rollups, whatever the range's length,
    # so an old short range is never zero and a range across the cutoff never partial.
    raw_kept_from = usage_recomputable_from(now).date()
    if (end - start).days + 1 > RAW_MAX_DAYS:
        # Long ranges read rollups, except the last two days (rollups may not exist yet).
        raw_from = max(start, now.date() - timedelta(days=1), raw_kept_from)
    else:
        raw_from = max(start, raw_kept_from)
    rollup_last = min(end, raw_from - timedelta(days=1))
    source = "raw"
    if rollup_last >= start:
        source = "rollups"
        # Read wholly from rollups, the top coaches and players can be chosen in SQL;
        # with raw days added they are chosen after the sums are merged. (A negative
        # top slices in Python, which LIMIT cannot.)
        alone = raw_from > end and top >= 0
        _rollups(session, organization_id, start, rollup_last, group, top if alone else None)
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
