"""AI usage: daily rollups with breakdowns, due days, and the range query from rollups or raw rows."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import AiUsageDailyAggregate
from tests.support.helpers import Proc, wait_for
from tests.support.metrics import midnight, recent_day
from voicepipe.usage.queries import usage_for_organization
from voicepipe.usage.recording import record_usage
from voicepipe.usage.rollup import aggregate_usage_day, due_usage_days

OPS = ["parent_summary", "voice_note_transcription", "claims"]


def random_calls(rng: random.Random, first: date, days: int, n: int) -> list[dict[str, Any]]:
    calls = []
    for _ in range(n):
        inp = rng.randint(0, 5000)
        calls.append({
            "id": str(uuid.UUID(int=rng.getrandbits(128))),
            "occurred_at": (midnight(first) + timedelta(seconds=rng.uniform(0, days * 86400 - 1))).isoformat(),
            "organization_id": rng.choice(["org-1", "org-2", "org-3"]),
            "coach_id": rng.choice(["c1", "c2", "c3", "c4", None]),
            "player_id": rng.choice(["p1", "p2", None, None]),
            "operation": rng.choice(OPS),
            "model": "m",
            "input_tokens": inp,
            "cached_tokens": rng.randint(0, inp),
            "output_tokens": rng.randint(0, 800),
            "cost": round(rng.uniform(0, 0.02), 6),
        })
    return calls


def totals(calls: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "cost": sum((Decimal(str(c["cost"])) for c in calls), Decimal(0)),
        "calls": len(calls),
        "input_tokens": sum(c["input_tokens"] for c in calls),
        "cached_tokens": sum(c["cached_tokens"] for c in calls),
        "output_tokens": sum(c["output_tokens"] for c in calls),
    }


def by(calls: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in calls:
        if c[key] is not None:
            groups[c[key]].append(c)
    return {k: totals(v) for k, v in groups.items()}


def day_of(call: dict[str, Any]) -> date:
    return datetime.fromisoformat(call["occurred_at"]).astimezone(UTC).date()


def as_numbers(t: Any) -> dict[str, Any]:
    return {"cost": t.cost, "calls": t.calls, "input_tokens": t.input_tokens,
            "cached_tokens": t.cached_tokens, "output_tokens": t.output_tokens}


def test_rollups_keep_totals_and_breakdowns_and_rerunning_changes_nothing(session: Session) -> None:
    rng = random.Random(1)
    first = recent_day(5)
    calls = random_calls(rng, first, 3, 600)
    record_usage(session, calls)
    session.commit()
    now = midnight(first) + timedelta(days=3, hours=2)
    assert due_usage_days(session, now, 3) == [first, first + timedelta(days=1), first + timedelta(days=2)]
    for day in due_usage_days(session, now, 3):
        aggregate_usage_day(session, day)
    session.commit()
    assert due_usage_days(session, now, 3) == []
    rows = {(r.day, r.organization_id): r for r in session.execute(select(AiUsageDailyAggregate)).scalars()}
    for (day, org), row in rows.items():
        mine = [c for c in calls if day_of(c) == day and c["organization_id"] == org]
        want = totals(mine)
        assert (Decimal(row.total_cost), row.total_calls, row.total_input_tokens, row.total_cached_tokens,
                row.total_output_tokens) == (want["cost"], want["calls"], want["input_tokens"],
                                             want["cached_tokens"], want["output_tokens"])
        assert row.cache_hit_rate == want["cached_tokens"] / want["input_tokens"]
        for column, key in (("by_operation", "operation"), ("by_coach", "coach_id"), ("by_player", "player_id")):
            stored = {k: {**v, "cost": Decimal(v["cost"])} for k, v in getattr(row, column).items()}
            assert stored == by(mine, key), column
    assert len(rows) == 9
    before = sorted((r.day, r.organization_id, r.total_cost, r.by_coach) for r in rows.values())
    aggregate_usage_day(session, first)
    session.commit()
    session.expire_all()
    after = sorted((r.day, r.organization_id, r.total_cost, r.by_coach)
                   for r in session.execute(select(AiUsageDailyAggregate)).scalars())
    assert after == before
    assert session.scalar(select(func.count()).select_from(AiUsageDailyAggregate)) == 9

    # A late call makes its day due again.
    record_usage(session, random_calls(random.Random(2), first + timedelta(days=1), 1, 1))
    session.commit()
    assert due_usage_days(session, now, 3) == [first + timedelta(days=1)]


def test_the_range_query_returns_the_same_fields_from_rollups_and_from_raw_rows(session: Session) -> None:
    rng = random.Random(3)
    first = recent_day(12)
    calls = random_calls(rng, first, 12, 1500)  # up to today - 1
    record_usage(session, calls)
    session.commit()
    now = datetime.now(UTC)
    for offset in range(12):
        day = first + timedelta(days=offset)
        if day < now.date() - timedelta(days=1):
            aggregate_usage_day(session, day)
    session.commit()
    last = first + timedelta(days=11)
    mine = [c for c in calls if c["organization_id"] == "org-2"]

    long = usage_for_organization(session, "org-2", first, last, now=now)
    assert long.source == "rollups"
    want = totals(mine)
    assert as_numbers(long.totals) == want
    assert long.cache_hit_rate == want["cached_tokens"] / want["input_tokens"]
    assert {k: as_numbers(v) for k, v in long.by_operation.items()} == by(mine, "operation")
    coaches = by(mine, "coach_id")
    assert [k for k, _ in long.top_coaches] == sorted(coaches, key=lambda k: (-coaches[k]["cost"],
                                                                              -coaches[k]["calls"], k))
    assert {k: as_numbers(v) for k, v in long.top_players} == by(mine, "player_id")

    week_end = first + timedelta(days=6)
    short = usage_for_organization(session, "org-2", first, week_end, now=now)
    assert short.source == "raw"
    week = [c for c in mine if day_of(c) <= week_end]
    assert as_numbers(short.totals) == totals(week)
    assert {k: as_numbers(v) for k, v in short.by_operation.items()} == by(week, "operation")
    assert set(short.to_json()) == set(long.to_json())


# Keys whose order differs between code points (Python's str order) and a locale's
# collation, and costs from a small set so sums tie on cost, and on cost and calls.
TIED_KEYS = ["p1", "P1", "p10", "p2", "Zoe", "zoë", "Émile", "emile", "ß", "ss", "a b", "a-b"]


def ranked(calls: list[dict[str, Any]], key: str, n: int) -> list[tuple[str, dict[str, Any]]]:
    groups = by(calls, key)
    return sorted(groups.items(), key=lambda kv: (-kv[1]["cost"], -kv[1]["calls"], kv[0]))[:n]


def tied_calls(rng: random.Random, first: date, days: int) -> list[dict[str, Any]]:
    calls = []
    for d in range(days):
        for _ in range(rng.randint(20, 60)):
            inp = rng.randint(0, 3000)
            calls.append({
                "id": str(uuid.UUID(int=rng.getrandbits(128))),
                "occurred_at": (midnight(first + timedelta(days=d)) + timedelta(seconds=rng.uniform(0, 86399))
                                ).isoformat(),
                "organization_id": "org-t",
                "coach_id": rng.choice(TIED_KEYS[:6] + [None]),
                "player_id": rng.choice(TIED_KEYS + [None]),
                "operation": rng.choice(OPS),
                "model": "m",
                "input_tokens": inp,
                "cached_tokens": rng.randint(0, inp),
                "output_tokens": rng.randint(0, 800),
                "cost": rng.choice([0.01, 0.02, 0.03]),
            })
    # Exact ties at the top, on the first day: three players of cost 2, two of them with
    # 40 calls (ordered by key alone), one with a single call.
    for player, n, cost in (("tie-b", 40, 0.05), ("tie-a", 40, 0.05), ("tie-c", 1, 2.0)):
        calls += [{**calls[0], "id": str(uuid.UUID(int=rng.getrandbits(128))), "player_id": player,
                   "coach_id": None, "cost": cost} for _ in range(n)]
    return calls


def test_the_top_coaches_and_players_match_the_calls_with_ties_and_any_limit(session: Session) -> None:
    # A range read wholly from rollups chooses the top in SQL; one ending yesterday adds
    # a raw day and chooses them in Python. Both against sums of the calls themselves.
    rng = random.Random(6)
    first = recent_day(13)
    calls = tied_calls(rng, first, 13)  # up to yesterday
    record_usage(session, calls)
    session.commit()
    now = datetime.now(UTC)
    for offset in range(12):  # yesterday is read raw, not rolled up
        aggregate_usage_day(session, first + timedelta(days=offset))
    session.commit()
    for last in (first + timedelta(days=9), first + timedelta(days=12)):
        mine = [c for c in calls if day_of(c) <= last]
        for n in (0, 1, 3, 5, 10, 11, 12, 14, 15, 100):
            summary = usage_for_organization(session, "org-t", first, last, now=now, top=n)
            assert summary.source == "rollups"
            assert as_numbers(summary.totals) == totals(mine)
            assert {k: as_numbers(v) for k, v in summary.by_operation.items()} == by(mine, "operation")
            assert [(k, as_numbers(v)) for k, v in summary.top_coaches] == ranked(mine, "coach_id", n), n
            assert [(k, as_numbers(v)) for k, v in summary.top_players] == ranked(mine, "player_id", n), n
            assert all(type(v.cost) is Decimal for _, v in summary.top_players + summary.top_coaches)
        # The ties are there to be broken: equal cost at the top, and equal cost and calls.
        assert [k for k, _ in ranked(mine, "player_id", 3)] == ["tie-a", "tie-b", "tie-c"]


def test_the_usage_wrapper_rolls_up_due_days_through_a_worker(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    first = recent_day(3)
    record_usage(session, random_calls(random.Random(4), first, 2, 200))
    session.commit()
    start_worker(queues="metrics", VOICEPIPE_DAILY_HORIZON_DAYS="3")
    client.send_task("voicepipe.usage.aggregate_daily_due", queue="metrics")

    def rolled() -> bool:
        session.rollback()
        return due_usage_days(session, datetime.now(UTC), 3) == [] and bool(
            session.scalar(select(func.count()).select_from(AiUsageDailyAggregate)))

    wait_for(rolled, timeout=30, what="usage rollups")
    assert session.scalar(select(func.sum(AiUsageDailyAggregate.total_calls))) == 200
