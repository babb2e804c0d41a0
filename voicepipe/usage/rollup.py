"""Daily AI usage rollups per (day, organization), with their breakdowns.

A rollup keeps the totals and the by-operation, by-coach and by-player breakdowns
(the reference dropped them, defect 9), so a long-range dashboard reads the same
fields from rollups as a short one reads from the raw log. Rows are sparse: an
organization without calls that day has no rollup. Each breakdown key is also a row of
ai_usage_daily_breakdowns, written by triggers from the jsonb (migration 0013): the range
query ranks from those rows.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import BigInteger, Date, cast, delete, func, select, text
from sqlalchemy.orm import Session

from models.usage import AiUsageDailyAggregate, AiUsageLog
from voicepipe.clock import utcnow
from voicepipe.errors import InvalidInput
from voicepipe.maintenance.cleanup import usage_recomputable_from
from voicepipe.metrics import late
from voicepipe.windows import DAY, closed_days, day_start, floor_day, parse_day

log = logging.getLogger(__name__)

ROLLUP_KEY = "uq_ai_usage_daily_aggregates_day_organization_id"
_LOCK_NAMESPACE = 0x76700003
_ROLLUP_COLUMNS = ("day", "organization_id", "total_cost", "total_calls", "total_input_tokens",
                   "total_cached_tokens", "total_output_tokens", "cache_hit_rate", "by_operation", "by_coach",
                   "by_player")
# Organizations per upsert statement (why chunks: aggregate_usage_day).
_ROLLUP_CHUNK = 1000
# Rollups of a day's organizations in one statement, from one jsonb array (numbers as
# exact decimal text); ordered as concurrent writers lock rows.
_UPSERT = text(
    f"INSERT INTO ai_usage_daily_aggregates ({', '.join(_ROLLUP_COLUMNS)}) "
    f"SELECT {', '.join(_ROLLUP_COLUMNS)} FROM jsonb_populate_recordset(NULL::ai_usage_daily_aggregates, :rows) "
    f"ORDER BY organization_id ON CONFLICT ON CONSTRAINT {ROLLUP_KEY} DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _ROLLUP_COLUMNS[2:])
    + ", computed_at = now()"
)


@dataclass
class UsageTotals:
    """Additive usage figures; cache_hit_rate is token-weighted (cached / input tokens)."""

    cost: Decimal = Decimal(0)
    calls: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0

    @property
    def cache_hit_rate(self) -> float:
        return self.cached_tokens / self.input_tokens if self.input_tokens else 0.0

    def add(self, other: UsageTotals) -> None:
        self.cost += other.cost
        self.calls += other.calls
        self.input_tokens += other.input_tokens
        self.cached_tokens += other.cached_tokens
        self.output_tokens += other.output_tokens

    def to_json(self) -> dict[str, Any]:
        return {
            "cost": str(self.cost),
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> UsageTotals:
        return cls(
            cost=Decimal(str(raw.get("cost", "0"))),
            calls=int(raw.get("calls", 0)),
            input_tokens=int(raw.get("input_tokens", 0)),
            cached_tokens=int(raw.get("cached_tokens", 0)),
            output_tokens=int(raw.get("output_tokens", 0)),
        )


@dataclass
class UsageGroup:
    """Totals and breakdowns of a set of AI calls."""

    totals: UsageTotals = field(default_factory=UsageTotals)
    by_operation: dict[str, UsageTotals] = field(default_factory=lambda: defaultdict(UsageTotals))
    by_coach: dict[str, UsageTotals] = field(default_factory=lambda: defaultdict(UsageTotals))
    by_player: dict[str, UsageTotals] = field(default_factory=lambda: defaultdict(UsageTotals))

    def add(self, operation: str, coach: str | None, player: str | None, t: UsageTotals) -> None:
        self.totals.add(t)
        self.by_operation[operation].add(t)
        # Calls without a coach or player count in the totals, not in those breakdowns.
        if coach is not None:
            self.by_coach[coach].add(t)
        if player is not None:
            self.by_player[player].add(t)


def grouped_calls(session: Session, where: Iterable[Any]) -> list[Any]:
    """Sums per (organization, operation, coach, player) of the log rows matching where."""
    return list(
        session.execute(
            select(
                AiUsageLog.organization_id,
                AiUsageLog.operation,
                AiUsageLog.coach_id,
                AiUsageLog.player_id,
                func.sum(AiUsageLog.cost),
                func.count(),
                cast(func.sum(AiUsageLog.input_tokens), BigInteger),
                cast(func.sum(AiUsageLog.cached_tokens), BigInteger),
                cast(func.sum(AiUsageLog.output_tokens), BigInteger),
            )
            .where(*where)
            .group_by(AiUsageLog.organization_id, AiUsageLog.operation, AiUsageLog.coach_id, AiUsageLog.player_id)
        ).all()
    )


def group_rows(rows: Iterable[Any]) -> dict[str, UsageGroup]:
    groups: dict[str, UsageGroup] = defaultdict(UsageGroup)
    for org, operation, coach, player, cost, calls, inp, cached, out in rows:
        groups[org].add(operation, coach, player, UsageTotals(Decimal(cost), calls, inp, cached, out))
    return groups


def check_usage_recomputable(day: date) -> None:
    """Refuse a day that has not closed yet, or whose AI usage log may already be deleted."""
    now = utcnow()
    if day_start(day) + DAY > now:
        raise InvalidInput.field(
            "day", f"{day.isoformat()} has not closed yet (it closes at {(day_start(day) + DAY).isoformat()})")
    oldest = usage_recomputable_from(now)
    if day_start(day) < oldest:
        raise InvalidInput.field(
            "day",
            f"{day.isoformat()} is older than the AI usage log retention "
            f"(kept from {oldest.date().isoformat()}); its rollups are final",
        )


def aggregate_usage_day(session: Session, day: date) -> int:
    """Upsert one rollup per organization with calls that day; returns rows written."""
    day = parse_day(day)
    check_usage_recomputable(day)
    start = day_start(day)
    session.execute(select(func.pg_advisory_xact_lock(_LOCK_NAMESPACE, day.toordinal())))
    groups = group_rows(
        grouped_calls(session, [AiUsageLog.occurred_at >= start, AiUsageLog.occurred_at < start + DAY])
    )
    rows = []
    for org, g in sorted(groups.items()):
        rows.append(
            {
                "day": day.isoformat(),
                "organization_id": org,
                "total_cost": str(g.totals.cost),
                "total_calls": g.totals.calls,
                "total_input_tokens": g.totals.input_tokens,
                "total_cached_tokens": g.totals.cached_tokens,
                "total_output_tokens": g.totals.output_tokens,
                "cache_hit_rate": g.totals.cache_hit_rate,
                "by_operation": {k: v.to_json() for k, v in sorted(g.by_operation.items())},
                "by_coach": {k: v.to_json() for k, v in sorted(g.by_coach.items())},
                "by_player": {k: v.to_json() for k, v in sorted(g.by_player.items())},
            }
        )
    # A statement per chunk of organizations: the breakdown rows' triggers fire once per
    # statement (an executemany of this upsert was one statement per organization), and a
    # jsonb array holds at most 256 MB (a chunk of 400-key organizations is about 60 MB).
    for at in range(0, len(rows), _ROLLUP_CHUNK):
        session.execute(_UPSERT, {"rows": Jsonb(rows[at:at + _ROLLUP_CHUNK])})
    # The log of a day within retention is complete, so a rollup without log rows is wrong.
    session.execute(
        delete(AiUsageDailyAggregate).where(
            AiUsageDailyAggregate.day == day, AiUsageDailyAggregate.organization_id.not_in(list(groups))
        )
    )
    log.info("usage day aggregated day=%s organizations=%d", day.isoformat(), len(rows))
    return len(rows)


def usage_day_mismatches(session: Session, first: date, last: date) -> dict[date, int]:
    """Per day in [first, last]: how many organizations' log counts differ from their rollup."""
    lo, hi = day_start(first), day_start(last) + DAY
    day_of = cast(func.timezone("UTC", AiUsageLog.occurred_at), Date)
    counts: dict[tuple[date, str | None], int] = {
        (d, org): n
        for d, org, n in session.execute(
            select(day_of, AiUsageLog.organization_id, func.count())
            .where(AiUsageLog.occurred_at >= lo, AiUsageLog.occurred_at < hi)
            .group_by(day_of, AiUsageLog.organization_id)
        ).all()
    }
    stored: dict[tuple[date, str | None], int] = {
        (d, org): n
        for d, org, n in session.execute(
            select(AiUsageDailyAggregate.day, AiUsageDailyAggregate.organization_id, AiUsageDailyAggregate.total_calls)
            .where(AiUsageDailyAggregate.day >= first, AiUsageDailyAggregate.day <= last)
        ).all()
    }
    mismatches: dict[date, int] = defaultdict(int)
    for key in set(counts) | set(stored):
        if counts.get(key, 0) != stored.get(key, 0):
            mismatches[key[0]] += 1
    return dict(mismatches)


@dataclass(frozen=True)
class UsagePlan:
    days: list[date]  # closed days whose rollups differ from the log, oldest first
    fresh_marks: list[tuple[datetime, int]]  # marked days found up to date


def usage_plan(session: Session, now: datetime, horizon_days: int) -> UsagePlan:
    """Closed days in the horizon, or marked late at any age, whose log counts differ from their rollups.

    The log is insert-only (a repeated id is a no-op), so a count that differs from
    the stored total_calls means calls were added since (or never rolled up). Calls
    recorded for a closed day mark it (voicepipe.metrics.late), so a late call is found
    however old its day, while the log still holds it.
    """
    oldest = usage_recomputable_from(now)
    marks = {
        floor_day(d): rev for d, rev in late.marked(session, late.USAGE_DAY)
        if d >= oldest and d + DAY <= now
    }
    in_horizon = [day_start(d) for d in closed_days(now, horizon_days) if day_start(d) >= oldest]
    mismatches: dict[date, int] = {}
    if in_horizon:
        mismatches.update(usage_day_mismatches(session, in_horizon[0].date(), in_horizon[-1].date()))
    for start in marks:
        if start not in in_horizon:
            mismatches.update(usage_day_mismatches(session, start.date(), start.date()))
    days = sorted({d for d in in_horizon if mismatches.get(d.date())} | {d for d in marks if mismatches.get(d.date())})
    fresh = [(d, rev) for d, rev in marks.items() if not mismatches.get(d.date())]
    return UsagePlan(days=[d.date() for d in days], fresh_marks=fresh)


def due_usage_days(session: Session, now: datetime, horizon_days: int) -> list[date]:
    """Closed days (in the horizon, or marked late) whose rollups differ from the log."""
    return usage_plan(session, now, horizon_days).days


__all__ = [
    "UsageGroup",
    "UsageTotals",
    "aggregate_usage_day",
    "due_usage_days",
]
