"""Usage breakdowns as rows: equal to the calls' own sums whoever writes the rollup, and after an upgrade.

The range query ranks coaches and players from ai_usage_daily_breakdowns, rows derived
from each rollup's jsonb by triggers. Every check here is against sums of the calls
computed in the test, never against the jsonb the rows come from.
"""

from __future__ import annotations

import json
import random
import threading
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tests.integration.test_usage_rollup import as_numbers, by, day_of, random_calls, ranked, totals
from tests.support.helpers import wait_for
from tests.support.metrics import recent_day
from voicepipe.migrate import alembic_config, upgrade
from voicepipe.usage import rollup
from voicepipe.usage.queries import usage_for_organization
from voicepipe.usage.recording import record_usage
from voicepipe.usage.rollup import aggregate_usage_day

KINDS = {"operation": "operation", "coach": "coach_id", "player": "player_id"}
Sums = dict[tuple[date, str, str], dict[str, dict[str, Any]]]


def stored_rows(conn: Any) -> Sums:
    """(day, organization, kind) -> {key: sums} as the breakdown rows hold them."""
    rows: Sums = defaultdict(dict)
    for r in conn.execute(text(
            "SELECT a.day, a.organization_id, b.kind, b.key, b.cost, b.calls, b.input_tokens, b.cached_tokens, "
            "b.output_tokens FROM ai_usage_daily_breakdowns b JOIN ai_usage_daily_aggregates a ON a.id = b.rollup_id")):
        rows[(r.day, r.organization_id, r.kind)][r.key] = {
            "cost": Decimal(r.cost), "calls": r.calls, "input_tokens": r.input_tokens,
            "cached_tokens": r.cached_tokens, "output_tokens": r.output_tokens}
    return dict(rows)


def expected_rows(calls: list[dict[str, Any]]) -> Sums:
    groups: dict[tuple[date, str], list[dict[str, Any]]] = defaultdict(list)
    for c in calls:
        groups[(day_of(c), c["organization_id"])].append(c)
    out: Sums = {}
    for (day, org), mine in groups.items():
        for kind, field in KINDS.items():
            if sums := by(mine, field):
                out[(day, org, kind)] = sums
    return out


def test_the_rows_equal_the_calls_after_rollups_reruns_and_writes_from_outside(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rollup, "_ROLLUP_CHUNK", 2)  # a day's three organizations in two statements
    rng = random.Random(21)
    first = recent_day(5)
    calls = random_calls(rng, first, 3, 500)
    record_usage(session, calls)
    session.commit()
    for offset in range(3):
        aggregate_usage_day(session, first + timedelta(days=offset))
    session.commit()
    assert stored_rows(session.connection()) == expected_rows(calls)

    # A late call with a new coach and player: the re-run replaces that day's rows (an upsert's update).
    # Costs of 16 significant digits: their day's sums are exact only as decimals.
    late = [{**call, "organization_id": "org-1", "coach_id": "coach-late", "player_id": "player-late",
             "cost": cost} for call, cost in zip(random_calls(random.Random(22), first + timedelta(days=1), 1, 2),
                                                (999999.9999999999, 999999.0000000002), strict=True)]
    record_usage(session, late)
    session.commit()
    aggregate_usage_day(session, first + timedelta(days=1))
    session.commit()
    calls += late
    assert stored_rows(session.connection()) == expected_rows(calls)
    day_total = session.execute(text(
        "SELECT total_cost FROM ai_usage_daily_aggregates WHERE day = :d AND organization_id = 'org-1'"),
        {"d": first + timedelta(days=1)}).scalar_one()
    assert day_total == totals([c for c in calls if c["organization_id"] == "org-1"
                                and day_of(c) == first + timedelta(days=1)])["cost"]

    # A rollup written by plain SQL (a previous release's worker, an operator) gets its rows;
    # the next run finds no calls of that organization and deletes the rollup, rows and all.
    doc = json.dumps({"c-x": {"cost": "0.5", "calls": 2, "input_tokens": 10, "cached_tokens": 3,
                              "output_tokens": 7}})
    session.execute(text(
        "INSERT INTO ai_usage_daily_aggregates (day, organization_id, total_cost, total_calls, total_input_tokens, "
        "total_cached_tokens, total_output_tokens, cache_hit_rate, by_operation, by_coach, by_player) "
        "VALUES (:d, 'org-x', 0.5, 2, 10, 3, 7, 0.3, :doc, :doc, '{}')"), {"d": first, "doc": doc})
    session.commit()
    x_rows = {k: v for k, v in stored_rows(session.connection()).items() if k[1] == "org-x"}
    want = {"c-x": {"cost": Decimal("0.5"), "calls": 2, "input_tokens": 10, "cached_tokens": 3, "output_tokens": 7}}
    assert x_rows == {(first, "org-x", "operation"): want, (first, "org-x", "coach"): want}
    aggregate_usage_day(session, first)
    session.commit()
    assert stored_rows(session.connection()) == expected_rows(calls)

    # An UPDATE of a breakdown from outside: the rows follow it.
    session.execute(text(
        "UPDATE ai_usage_daily_aggregates SET by_player = '{}' WHERE day = :d AND organization_id = 'org-2'"),
        {"d": first})
    session.commit()
    want_rows = expected_rows(calls)
    want_rows.pop((first, "org-2", "player"))
    assert stored_rows(session.connection()) == want_rows


def write_previous_release_rollups(conn: Any, calls: list[dict[str, Any]]) -> None:
    """Rollups as the previous release stored them: totals and jsonb breakdowns, nothing else."""
    groups: dict[tuple[date, str], list[dict[str, Any]]] = defaultdict(list)
    for c in calls:
        groups[(day_of(c), c["organization_id"])].append(c)

    def doc(sums: dict[str, dict[str, Any]]) -> str:
        return json.dumps({k: {**v, "cost": str(v["cost"])} for k, v in sums.items()})

    for (day, org), mine in groups.items():
        t = totals(mine)
        conn.execute(text(
            "INSERT INTO ai_usage_daily_aggregates (day, organization_id, total_cost, total_calls, "
            "total_input_tokens, total_cached_tokens, total_output_tokens, cache_hit_rate, by_operation, "
            "by_coach, by_player) VALUES (:day, :org, :cost, :calls, :inp, :cached, :out, 0, :op, :coach, "
            ":player)"),
            {"day": day, "org": org, "cost": t["cost"], "calls": t["calls"], "inp": t["input_tokens"],
             "cached": t["cached_tokens"], "out": t["output_tokens"], "op": doc(by(mine, "operation")),
             "coach": doc(by(mine, "coach_id")), "player": doc(by(mine, "player_id"))})


def test_the_previous_release_rollups_upgrade_to_rows_and_read_the_same(
    db_url: str, engine: Engine, session: Session
) -> None:
    command.downgrade(alembic_config(db_url), "0012")
    first = recent_day(14)
    calls = random_calls(random.Random(23), first, 10, 1200)
    with engine.begin() as conn:
        write_previous_release_rollups(conn, calls)

    upgrade(db_url)
    with engine.connect() as conn:
        assert stored_rows(conn) == expected_rows(calls)
    last = first + timedelta(days=9)
    mine = [c for c in calls if c["organization_id"] == "org-3"]
    for top in (3, 10):
        summary = usage_for_organization(session, "org-3", first, last, now=datetime.now(UTC), top=top)
        assert summary.source == "rollups"
        assert as_numbers(summary.totals) == totals(mine)
        assert {k: as_numbers(v) for k, v in summary.by_operation.items()} == by(mine, "operation")
        assert [(k, as_numbers(v)) for k, v in summary.top_coaches] == ranked(mine, "coach_id", top)
        assert [(k, as_numbers(v)) for k, v in summary.top_players] == ranked(mine, "player_id", top)

    # And back: the jsonb was never touched, so the rows come back the same.
    session.rollback()  # the reads' locks would hold the downgrade's DROP
    command.downgrade(alembic_config(db_url), "0012")
    upgrade(db_url)
    with engine.connect() as conn:
        assert stored_rows(conn) == expected_rows(calls)


def test_a_rollup_written_while_the_migration_starts_gets_its_rows(db_url: str, engine: Engine) -> None:
    """A previous-release worker's rollup, uncommitted when the migration starts: the migration
    waits for it, and its rows are there after."""
    command.downgrade(alembic_config(db_url), "0012")
    first = recent_day(6)
    calls = random_calls(random.Random(24), first, 2, 300)
    with engine.begin() as conn:
        write_previous_release_rollups(conn, [c for c in calls if c["organization_id"] != "org-3"])
    writer = engine.connect()
    written = writer.begin()
    write_previous_release_rollups(writer, [c for c in calls if c["organization_id"] == "org-3"])
    failed: list[BaseException] = []

    def migrate() -> None:
        try:
            upgrade(db_url)
        except BaseException as e:
            failed.append(e)

    migrating = threading.Thread(target=migrate)
    migrating.start()

    def blocked() -> int:
        with engine.connect() as conn:
            return int(conn.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")) or 0)

    try:
        wait_for(blocked, timeout=60, what="the migration waiting for the open rollup write")
    finally:
        written.commit()
        writer.close()
    migrating.join(timeout=120)
    assert not migrating.is_alive() and not failed, failed
    with engine.connect() as conn:
        assert stored_rows(conn) == expected_rows(calls)
