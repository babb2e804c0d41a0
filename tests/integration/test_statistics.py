"""The bulk statements keep sane plans whatever the statistics say.

Each bulk path (hour, catch-up of several hours, day, organization breakdown, usage
rollup and usage read) runs on data loaded after an ANALYZE that saw a tenth of the
organizations, with autovacuum off (what production has right after a burst), then
again after ANALYZE. auto_explain reports every statement's plan with its actual row
counts: no plan node may handle more than a few times the rows the database holds.
A plan that re-runs an aggregate once per organization (the daily sum's nested loop
did) handles about as many times more rows as there are organizations. Two plans
are checked by their shape: the index an hour reads its window's rows through (PostgreSQL
18 chose another than 15), and how the usage ranking groups its rows.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from models.metrics import MetricsSnapshot
from tests.support.helpers import RECENT
from voicepipe.events.recording import record_events
from voicepipe.infra.bulk import dbapi_connection
from voicepipe.metrics import snapshots
from voicepipe.metrics.daily import aggregate_day
from voicepipe.metrics.hourly import aggregate_hour
from voicepipe.metrics.queries import organization_breakdown
from voicepipe.usage.queries import usage_for_organization
from voicepipe.usage.recording import record_usage
from voicepipe.usage.rollup import aggregate_usage_day

ORGS = 300  # the burst; the statistics saw ORGS // 10
HOURS = 24
DAY = RECENT.date()  # two days ago: closed, within every retention
BEFORE = DAY - timedelta(days=1)
# Rows a plan node may handle, as a multiple of the rows in the database (with a floor
# for small tables): a per-organization rescan is ~ORGS times.
ROWS_FACTOR = 4
ROWS_FLOOR = 20_000


def events(orgs: int, day: date, hours: int, rng: random.Random) -> list[dict[str, Any]]:
    start = datetime.combine(day, datetime.min.time(), RECENT.tzinfo)
    out = []
    for h in range(hours):
        for o in range(orgs):
            at = start + timedelta(hours=h, seconds=rng.randrange(3600))
            for event_type, duration in (("artifact_received", None), ("transcription_completed", 20_000.0),
                                         ("artifact_completed", 45_000.0)):
                out.append({"event_id": str(uuid.UUID(int=rng.getrandbits(128))), "event_type": event_type,
                            "organization_id": f"org-{o:04d}", "occurred_at": at.isoformat(),
                            **({"duration_ms": duration * rng.uniform(0.5, 2)} if duration else {}),
                            "metadata": {"aiCost": round(rng.uniform(0, 0.02), 6)}})
    return out


def calls(orgs: int, day: date, rng: random.Random) -> list[dict[str, Any]]:
    noon = datetime.combine(day, datetime.min.time(), RECENT.tzinfo) + timedelta(hours=12)
    return [{"organization_id": f"org-{o:04d}", "operation": rng.choice(["transcribe", "extract", "draft"]),
             "model": "m", "coach_id": f"coach-{o % 40}", "player_id": f"player-{rng.randrange(400)}",
             "input_tokens": 1000, "cached_tokens": 100, "output_tokens": 200, "cost": round(rng.uniform(0, 0.02), 6),
             "occurred_at": (noon + timedelta(seconds=i)).isoformat()}
            for o in range(orgs) for i in range(5)]


def load(session: Session, orgs: int, day: date, rng: random.Random) -> None:
    record_events(session, events(orgs, day, HOURS, rng))
    record_usage(session, calls(orgs, day, rng))
    session.commit()


@contextmanager
def plans(session: Session) -> Iterator[list[dict[str, Any]]]:
    """Every statement's plan, with actual rows, as auto_explain reports it to this session."""
    session.execute(text("SELECT 1"))
    conn = dbapi_connection(session)
    reported: list[str] = []
    handler: Callable[[Any], None] = lambda d: reported.append(d.message_primary or "")  # noqa: E731
    conn.add_notice_handler(handler)
    conn.execute("LOAD 'auto_explain'")
    for name, value in (("auto_explain.log_min_duration", "0"), ("auto_explain.log_analyze", "on"),
                        ("auto_explain.log_buffers", "on"), ("auto_explain.log_format", "json"),
                        ("auto_explain.log_nested_statements", "on"), ("client_min_messages", "log")):
        conn.execute(f"SET {name} = '{value}'")
    found: list[dict[str, Any]] = []
    try:
        yield found
    finally:
        conn.remove_notice_handler(handler)
    for message in reported:
        if "plan:" in message:
            found.append(json.loads(message.split("plan:", 1)[1]))


def busiest_node(plan: dict[str, Any]) -> tuple[float, str]:
    """(rows handled, node) of the plan node that handled the most rows over all its runs."""
    node = plan.get("Plan", plan)
    here = (float(node.get("Actual Rows", 0)) * float(node.get("Actual Loops", 0)),
            f"{node['Node Type']} loops={node.get('Actual Loops')}")
    return max([here, *(busiest_node(child) for child in node.get("Plans", []))])


def rows_held(session: Session) -> int:
    tables = session.execute(text("SELECT relname FROM pg_stat_user_tables")).scalars().all()
    return sum(int(session.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one()) for t in tables)


def bulk_paths(session: Session, day: date) -> None:
    """Every bulk statement over DAY, as the tasks and the dashboard run them."""
    first_hour = datetime.combine(day, datetime.min.time(), RECENT.tzinfo)
    for h in range(HOURS):  # a catch-up: the hours one after another
        aggregate_hour(session, first_hour + timedelta(hours=h))
    aggregate_day(session, day)
    aggregate_usage_day(session, day)
    session.commit()
    aggregate_usage_day(session, day)  # a re-run replaces each rollup's breakdown rows
    session.commit()
    start = datetime.combine(BEFORE, datetime.min.time(), RECENT.tzinfo)
    organization_breakdown(session, "daily", start, start + timedelta(days=2))
    organization_breakdown(session, "hourly", first_hour, first_hour + timedelta(hours=HOURS))
    usage_for_organization(session, "org-0001", BEFORE, DAY)
    session.rollback()


@pytest.mark.parametrize("analyzed", [False, True], ids=["statistics-before-the-burst", "analyzed"])
def test_no_bulk_statement_rescans_per_organization(db_url: str, analyzed: bool) -> None:
    # One connection, kept: auto_explain and the notice handler stay on it across commits.
    engine = create_engine(db_url, pool_size=1, max_overflow=0)
    rng = random.Random(7)
    try:
        with Session(engine) as session:
            for table in session.execute(text("SELECT relname FROM pg_stat_user_tables")).scalars().all():
                session.execute(text(f'ALTER TABLE "{table}" SET (autovacuum_enabled = false)'))
            # The directory knows every organization (its sync runs ahead of their events).
            session.execute(text("INSERT INTO organizations (id, name) SELECT 'org-' || lpad(g::text, 4, '0'), "
                                 "'Organization ' || g FROM generate_series(0, :n - 1) g"), {"n": ORGS})
            session.commit()
            load(session, ORGS // 10, BEFORE, rng)
            bulk_paths(session, BEFORE)  # the day before, at a tenth of the organizations
            session.execute(text("ANALYZE"))
            session.commit()
            load(session, ORGS, DAY, rng)
            if analyzed:
                session.execute(text("ANALYZE"))
                session.commit()
            held = rows_held(session)
            session.commit()
            with plans(session) as found:
                bulk_paths(session, DAY)
            day_rows = session.scalar(text(
                "SELECT count(*) FROM ai_usage_daily_breakdowns b JOIN ai_usage_daily_aggregates a "
                "ON a.id = b.rollup_id WHERE a.day = :day"), {"day": DAY})
        assert len(found) > 20, "auto_explain reported no plans"
        limit = max(ROWS_FACTOR * held, ROWS_FLOOR)
        worst = sorted(((busiest_node(p), p.get("Query Text", "")[:160]) for p in found), reverse=True)[:3]
        assert worst[0][0][0] <= limit, f"{held} rows held; the busiest plans: {worst}"
        # The day's usage rollups are one statement, so their breakdown rows' triggers ran once
        # a run (not once per organization), and the re-run found the rows it replaced through
        # the primary key.
        deletes = [p for p in found if p.get("Query Text", "").startswith("DELETE FROM ai_usage_daily_breakdowns")]
        assert len(deletes) == 2, len(deletes)
        rerun = nodes(deletes[1])
        replaced = [n["Actual Rows"] for n in rerun if n.get("Relation Name") == "ai_usage_daily_breakdowns"
                    and n["Node Type"] != "ModifyTable"]
        assert replaced == [day_rows] and day_rows > 0, (replaced, day_rows)
        read = [(n["Node Type"], n.get("Relation Name"), n.get("Index Name")) for n in rerun]
        assert ("Seq Scan", "ai_usage_daily_breakdowns", None) not in read, read
        assert any(index == "pk_ai_usage_daily_breakdowns" for _, _, index in read), read
    finally:
        engine.dispose()


@pytest.mark.parametrize("analyzed", [False, True], ids=["never-analyzed", "analyzed"])
def test_each_chunk_of_an_hour_finds_only_its_own_counter_rows(
    db_url: str, analyzed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An hour's organization rows are written in chunks, each statement joining its chunk
    to the hour's counter rows: each must find its own rows by index, not read all the
    hour's (chunks x organizations rows, quadratic in organizations)."""
    chunk = 40
    monkeypatch.setattr(snapshots, "HOUR_CHUNK", chunk)
    engine = create_engine(db_url, pool_size=1, max_overflow=0)
    try:
        with Session(engine) as session:
            record_events(session, events(ORGS, DAY, 1, random.Random(11)))
            session.commit()
            if analyzed:
                session.execute(text("ANALYZE"))
                session.commit()
            with plans(session) as found:
                aggregate_hour(session, datetime.combine(DAY, datetime.min.time(), RECENT.tzinfo))
                session.commit()
        chunks = [p for p in found if "upsert metrics_snapshots of an hour" in p.get("Query Text", "")]
        assert len(chunks) == -(-ORGS // chunk)
        busiest = max(busiest_node(p) for p in chunks)
        assert busiest[0] <= chunk, f"a chunk of {chunk} rows handled {busiest}"
    finally:
        engine.dispose()


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of a plan."""
    node = plan.get("Plan", plan)
    return [node] + [n for child in node.get("Plans", []) for n in nodes(child)]


def test_an_hour_reads_its_window_rows_through_the_window_index(db_url: str) -> None:
    """Re-running an hour reads that window's stored rows (for organizations gone since)
    through the index on (period_type, period_start): a read that grows with the window.
    With organization ids alone, PostgreSQL 18 chose an index-only skip scan of the unique
    index (organization first) once a window held a few hundred organizations: at 10,000
    organizations and 1.4M rows it read the whole index, 100 ms against 7 ms."""
    orgs, windows = 300, 144
    hour = datetime.combine(DAY, datetime.min.time(), RECENT.tzinfo)
    window_index = next(ix.name for ix in MetricsSnapshot.__table__.indexes
                        if [c.name for c in ix.columns] == ["period_type", "period_start"])
    engine = create_engine(db_url, pool_size=1, max_overflow=0)
    try:
        with Session(engine) as session:
            record_events(session, events(orgs, DAY, 1, random.Random(5)))
            aggregate_hour(session, hour)
            # The same rows in WINDOWS older hours: a table of many windows, as production's.
            session.execute(text(
                "INSERT INTO metrics_snapshots (organization_id, period_type, period_start, period_end) "
                "SELECT s.organization_id, 'hourly', s.period_start - w * interval '1 hour', "
                "s.period_end - w * interval '1 hour' FROM metrics_snapshots s, generate_series(1, :n) w "
                "WHERE s.period_type = 'hourly' AND s.period_start = :h"), {"n": windows, "h": hour})
            session.commit()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE metrics_snapshots"))  # all-visible: index-only scans look cheap
        with Session(engine) as session, plans(session) as found:
            aggregate_hour(session, hour)
            session.commit()
        reads = [p for p in found if p.get("Query Text", "").startswith(snapshots._STORED_ROWS_SQL[:40])]
        assert len(reads) == 1, [p.get("Query Text", "")[:80] for p in found]
        used = [node.get("Index Name") for node in nodes(reads[0]) if "Relation Name" in node]
        assert used == [window_index], json.dumps(reads[0]["Plan"])[:600]
    finally:
        engine.dispose()



def test_usage_ranks_its_breakdown_rows_by_hash_before_they_are_analyzed(db_url: str) -> None:
    """An organization's top coaches and players over a range of rollups: the breakdown
    rows are grouped by hash. Just written by the rollups' triggers and not yet analyzed,
    they were estimated at one a day and grouped by sorting 12,000 rows (4 ms more than
    hashing at 400 players over 30 days)."""
    org, days, players = "org-usage", 30, 400
    first = RECENT.date() - timedelta(days=days + 3)
    rng = random.Random(3)

    def breakdown(keys: list[str]) -> str:
        return json.dumps({k: {"cost": str(round(rng.uniform(0, 1), 6)), "calls": rng.randrange(1, 50),
                               "input_tokens": 1000, "cached_tokens": 100, "output_tokens": 200} for k in keys})

    engine = create_engine(db_url, pool_size=1, max_overflow=0)
    try:
        with Session(engine) as session:
            for d in range(days):
                session.execute(text(
                    "INSERT INTO ai_usage_daily_aggregates (day, organization_id, total_cost, total_calls,"
                    " total_input_tokens, total_cached_tokens, total_output_tokens, cache_hit_rate, by_operation,"
                    " by_coach, by_player) VALUES (:day, :org, 1, 1, 1, 1, 1, 0, CAST(:ops AS jsonb),"
                    " CAST(:coaches AS jsonb), CAST(:players AS jsonb))"),
                    {"day": first + timedelta(days=d), "org": org, "ops": breakdown(["transcribe", "draft"]),
                     "coaches": breakdown([f"coach-{i}" for i in range(40)]),
                     "players": breakdown([f"player-{i}" for i in range(players)])})
            session.commit()
            with plans(session) as found:
                summary = usage_for_organization(session, org, first, first + timedelta(days=days - 1))
                session.execute(text("SELECT 1"))  # the last statement's plan arrives with the next
        assert summary.source == "rollups" and len(summary.top_players) == 10
        reads = [p for p in found if "ai_usage_daily_breakdowns" in p.get("Query Text", "")]
        assert len(reads) == 1, [p.get("Query Text", "")[:80] for p in found]
        grouping = [(n["Node Type"], n.get("Strategy")) for n in nodes(reads[0])
                    if n["Node Type"] in ("Aggregate", "Incremental Sort")]
        assert ("Aggregate", "Sorted") not in grouping and ("Incremental Sort", None) not in grouping, grouping
    finally:
        engine.dispose()
