"""Summed snapshot parts per organization: latency sketches exact, key by key.

sum_snapshot_parts adds the organizations' sketches up in PostgreSQL. These tests write
snapshot rows directly, with sketches over every latency kind, from tiny to huge
durations, and rows our writers never produce (an organization using a bucket its
platform rows lack, organization rows without platform rows). Expected sums are added
up here, key by key, from the rows inserted; expected percentiles are read here by
nearest rank from those sums, with the bucket values of the stored format.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from voicepipe.infra.bulk import dbapi_connection
from voicepipe.metrics import snapshots
from voicepipe.metrics.queries import organization_breakdown
from voicepipe.metrics.snapshots import sum_snapshot_parts

START = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=40)
DAYS = 5
# The stored format (voicepipe/events/sketch.py): element (kind << 16 | slot) << 40 | count,
# slot = bucket + 1024, bucket i holding (GAMMA**(i-1), GAMMA**i] and standing for 2 GAMMA**i / (GAMMA + 1).
GAMMA = 1.01 / 0.99
END_TO_END = 4
KINDS = 5
COUNT_BITS = 40
Sketch = dict[int, int]

INSERT = text(
    "INSERT INTO metrics_snapshots (organization_id, period_type, period_start, period_end, "
    "n_artifact_completed, end_to_end_latency_count, end_to_end_latency_sum, latency_sketch, coarse_percentiles) "
    "VALUES (:org, 'daily', :start, :start + interval '1 day', :n, :n, :n * 1000.0, :sketch, :coarse)"
)


def random_sketch(rng: random.Random, buckets: int) -> Sketch:
    """Keys over every kind, buckets from 1 µs to years (and the zero bucket), counts up to 9."""
    return {(rng.randrange(KINDS) << 16) | rng.choice([0, *range(1024 - 345, 1024 + 1500)]): rng.randint(1, 9)
            for _ in range(buckets)}


def insert(session: Session, rows: list[tuple[str | None, int, Sketch]], coarse: set[int] = frozenset()) -> None:
    """Rows of (organization, day index, sketch); coarse: indexes of rows flagged coarse."""
    for i, (org, day, sketch) in enumerate(rows):
        n = sum(c for k, c in sketch.items() if k >> 16 == END_TO_END)
        packed = [(k << COUNT_BITS) | c for k, c in sorted(sketch.items())]
        session.execute(INSERT, {"org": org, "start": START + timedelta(days=day), "n": n, "sketch": packed,
                                 "coarse": i in coarse})
    session.commit()


def expected(rows: list[tuple[str | None, int, Sketch]]) -> dict[str | None, Sketch]:
    sums: dict[str | None, Sketch] = {}
    for org, _, sketch in rows:
        total = sums.setdefault(org, {})
        for key, count in sketch.items():
            total[key] = total.get(key, 0) + count
    return sums


def summed(session: Session) -> dict[str | None, Sketch]:
    got = sum_snapshot_parts(session, "daily", START, START + timedelta(days=DAYS))
    session.rollback()
    return {org: decoded(s.parts["latency_sketch"]) for org, s in got.items()}


def decoded(entries: list[int]) -> Sketch:
    """The stored entries as key -> count, each key once (as the summing statement returns them)."""
    keys = [e >> 40 for e in entries]
    assert len(set(keys)) == len(keys)
    return {e >> 40: e & (2**40 - 1) for e in entries}


def consistent_rows(rng: random.Random, orgs: int = 6) -> list[tuple[str | None, int, Sketch]]:
    """What aggregation writes: each day's platform sketch is its organizations' plus events without one."""
    rows: list[tuple[str | None, int, Sketch]] = []
    for day in range(DAYS):
        platform = random_sketch(rng, 2)  # events without an organization
        for o in range(orgs):
            sketch = random_sketch(rng, rng.randint(1, 40))
            rows.append((f"org-{o}", day, sketch))
            for key, count in sketch.items():
                platform[key] = platform.get(key, 0) + count
        rows.append((None, day, platform))
    return rows


def test_the_usual_rows_sum_exactly_key_by_key(session: Session) -> None:
    rows = consistent_rows(random.Random(5))
    insert(session, rows)
    assert summed(session) == expected(rows)


def test_end_to_end_only_sums_exactly_the_end_to_end_keys_and_every_other_part(session: Session) -> None:
    rows = consistent_rows(random.Random(9))
    insert(session, rows)
    full = sum_snapshot_parts(session, "daily", START, START + timedelta(days=DAYS))
    e2e = sum_snapshot_parts(session, "daily", START, START + timedelta(days=DAYS), end_to_end_only=True)
    session.rollback()
    want = {org: {k: c for k, c in sketch.items() if k >> 16 == END_TO_END} for org, sketch in expected(rows).items()}
    assert {org: decoded(s.parts["latency_sketch"]) for org, s in e2e.items()} == want
    assert any(len(sketch) < len(expected(rows)[org]) for org, sketch in want.items())  # other kinds were there
    for org, summed_parts in e2e.items():
        rest = {k: v for k, v in summed_parts.parts.items() if k != "latency_sketch"}
        assert rest == {k: v for k, v in full[org].parts.items() if k != "latency_sketch"}
        assert (summed_parts.windows, summed_parts.name) == (full[org].windows, full[org].name)


def test_an_organization_using_a_bucket_its_platform_rows_lack_is_still_summed_exactly(session: Session) -> None:
    rows = consistent_rows(random.Random(6))
    stray_key = (END_TO_END << 16) | 3000
    rows.append(("org-stray", 2, {stray_key: 4}))
    insert(session, rows)
    got = summed(session)
    assert got == expected(rows)
    assert got["org-stray"] == {stray_key: 4}


def test_organization_rows_without_platform_rows_are_summed_exactly(session: Session) -> None:
    rng = random.Random(7)
    rows = [(f"org-{o}", day, random_sketch(rng, 3)) for o in range(4) for day in range(DAYS)]
    insert(session, rows)
    got = summed(session)
    assert None not in got
    assert got == expected(rows)


def test_one_coarse_row_makes_its_organization_and_the_platform_coarse(session: Session) -> None:
    rows = consistent_rows(random.Random(8), orgs=3)
    coarse = {i for i, (org, day, _) in enumerate(rows) if day == 1 and org in ("org-1", None)}
    insert(session, rows, coarse)
    got = sum_snapshot_parts(session, "daily", START, START + timedelta(days=DAYS))
    session.rollback()
    assert {org: s.parts["coarse_percentiles"] for org, s in got.items()} == {
        "org-0": False, "org-1": True, "org-2": False, None: True}


def test_a_range_without_rows_sums_to_nothing(session: Session) -> None:
    assert summed(session) == {}


def bucket_value(key: int) -> float:
    slot = key & 0xFFFF
    return 0.0 if slot == 0 else 2 * GAMMA ** (slot - 1024) / (GAMMA + 1)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_breakdown_percentiles_equal_the_nearest_rank_of_the_exact_sum(session: Session, seed: int) -> None:
    """The figures the table shows, from keys added up here."""
    rows = consistent_rows(random.Random(seed))
    insert(session, rows)
    want = expected(rows)
    breakdown = organization_breakdown(session, "daily", START, START + timedelta(days=DAYS))
    session.rollback()
    assert {b.organization_id for b in breakdown} == {org for org in want if org is not None}
    for figures in breakdown:
        values = sorted((bucket_value(k), c) for k, c in want[figures.organization_id].items() if k >> 16 == END_TO_END)
        ordered = [v for v, c in values for _ in range(c)]
        for p in (50, 90, 95, 99):
            exact = ordered[max(1, -(-p * len(ordered) // 100)) - 1] if ordered else 0.0
            got = figures.metrics[f"p{p}_end_to_end_latency"]
            assert got == pytest.approx(exact, rel=1e-12), (figures.organization_id, p)


BURST_ORGS = 200
KEY_A, KEY_B = (END_TO_END << 16) | 1400, (END_TO_END << 16) | 1401
HOURLY_ROWS = text(
    "INSERT INTO metrics_snapshots (organization_id, period_type, period_start, period_end, "
    "n_artifact_completed, end_to_end_latency_count, end_to_end_latency_sum, latency_sketch) "
    "SELECT o, 'hourly', :day + make_interval(hours => h), :day + make_interval(hours => h + 1), 3, 3, 3000.5, "
    f"ARRAY[{(KEY_A << COUNT_BITS) | 1}, {(KEY_B << COUNT_BITS) | 2}]::bigint[] "
    "FROM (SELECT 'org-' || g AS o FROM generate_series(1, :orgs) g UNION ALL SELECT NULL) orgs, "
    "generate_series(0, 23) h"
)


def aggregates(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan] if plan["Node Type"] == "Aggregate" else []
    return found + [node for child in plan.get("Plans", []) for node in aggregates(child)]


def aggregate_loops(plan: dict[str, Any]) -> list[int]:
    """How many times each aggregate of a plan ran (a parallel worker's partial one aside)."""
    return [node["Actual Loops"] for node in aggregates(plan) if node.get("Partial Mode") != "Partial"]


def node_types(plan: dict[str, Any]) -> list[str]:
    return [plan["Node Type"], *(t for child in plan.get("Plans", []) for t in node_types(child))]


@pytest.mark.parametrize("analyzed", [False, True], ids=["statistics-before-the-burst", "analyzed"])
def test_a_burst_the_statistics_have_not_seen_is_summed_in_one_pass(session: Session, analyzed: bool) -> None:
    """A day loaded after the last ANALYZE, which saw a tenth of the organizations: the
    planner expects one row per aggregate, and a nested loop re-ran the ordered aggregate
    once per organization (201 times here; 7 s for 1,000 organizations)."""
    session.execute(text("ALTER TABLE metrics_snapshots SET (autovacuum_enabled = false)"))
    session.execute(
        text("INSERT INTO organizations (id, name) SELECT 'org-' || g, 'Org ' || g FROM generate_series(1, :n) g"),
        {"n": BURST_ORGS},
    )
    session.execute(HOURLY_ROWS, {"day": START, "orgs": BURST_ORGS // 10})
    session.commit()
    session.execute(text("ANALYZE metrics_snapshots"))
    day = START + timedelta(days=1)
    session.execute(HOURLY_ROWS, {"day": day, "orgs": BURST_ORGS})
    session.commit()
    if analyzed:
        session.execute(text("ANALYZE metrics_snapshots"))
        session.commit()

    got = sum_snapshot_parts(session, "hourly", day, day + timedelta(days=1))
    assert session.execute(text("SHOW enable_nestloop")).scalar() == "on"  # for the sums only
    session.rollback()
    orgs = [f"org-{g}" for g in range(1, BURST_ORGS + 1)]
    assert sorted(got, key=str) == sorted([*orgs, None], key=str)
    for org, summed_parts in got.items():
        assert summed_parts.windows == 24
        assert summed_parts.name == (None if org is None else f"Org {org[4:]}")
        assert summed_parts.parts["n_artifact_completed"] == 24 * 3
        assert summed_parts.parts["end_to_end_latency_sum"] == 24 * 3000.5
        assert decoded(summed_parts.parts["latency_sketch"]) == {KEY_A: 24, KEY_B: 48}

    with dbapi_connection(session).cursor() as cur, snapshots.sum_plan_settings(cur):
        params = {"period_type": "hourly", "lo": day, "hi": day + timedelta(days=1)}
        plans = [cur.execute("EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) " + sql, params).fetchone()[0][0]["Plan"]
                 for sql in snapshots._SUM_SQL.values()]
    session.rollback()
    for plan in plans:
        # The parts' two aggregates and the sketches' concatenation run once; the count of
        # each sketch key (and its packing) once per organization and for the platform.
        assert sorted(aggregate_loops(plan)) == [1, 1, 1, BURST_ORGS + 1, BURST_ORGS + 1], plan
        per_key = [a for a in aggregates(plan) if any(f">> {COUNT_BITS}" in k for k in a.get("Group Key", []))]
        assert [a["Actual Loops"] for a in per_key] == [BURST_ORGS + 1], per_key
        # The sketches are concatenated per organization from rows read in its order (a
        # sorted group), never hashed: a hash would hold every organization's entries.
        concat = [a for a in aggregates(plan) if any("vp_sketch_concat" in out for out in a.get("Output", []))]
        assert [(a["Strategy"], a["Actual Loops"]) for a in concat] == [("Sorted", 1)], concat
        # Entries unnested in the select list: a lateral function scan stores each row's
        # entries in a tuplestore first (docs/profiling.md).
        assert "ProjectSet" in node_types(plan) and "Function Scan" not in node_types(plan), node_types(plan)
