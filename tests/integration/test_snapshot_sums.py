"""Summed snapshot parts per organization: histograms exact whatever buckets are in use.

sum_snapshot_parts sums only the histogram buckets the platform rows use. These tests
write snapshot rows directly, with histograms chosen to reach every path: the usual
one, a row set our writers never produce (an organization using a bucket its platform
row lacks, organization rows without platform rows, a histogram that does not add up
to its end-to-end count), and a bucket set read before a window changed. Expected
sums are added up here, bucket by bucket, from the rows inserted.
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
BUCKETS = 64

INSERT = text(
    "INSERT INTO metrics_snapshots (organization_id, period_type, period_start, period_end, "
    "n_artifact_completed, end_to_end_latency_count, end_to_end_latency_sum, end_to_end_histogram) "
    "VALUES (:org, 'daily', :start, :start + interval '1 day', :n, :n, :n * 1000.0, :hist)"
)


def histogram(rng: random.Random, buckets: list[int]) -> list[int]:
    hist = [0] * BUCKETS
    for b in buckets:
        hist[b] = rng.randint(1, 9)
    return hist


def insert(session: Session, rows: list[tuple[str | None, int, list[int]]], *, count: Any = None) -> None:
    """Rows of (organization, day index, histogram); the end-to-end count is the histogram's total."""
    for org, day, hist in rows:
        n = sum(hist) if count is None else count(hist)
        session.execute(INSERT, {"org": org, "start": START + timedelta(days=day), "n": n, "hist": hist})
    session.commit()


def expected(rows: list[tuple[str | None, int, list[int]]]) -> dict[str | None, list[int]]:
    sums: dict[str | None, list[int]] = {}
    for org, _, hist in rows:
        total = sums.setdefault(org, [0] * BUCKETS)
        for i, count in enumerate(hist):
            total[i] += count
    return sums


def summed(session: Session) -> dict[str | None, list[int]]:
    got = sum_snapshot_parts(session, "daily", START, START + timedelta(days=DAYS))
    session.rollback()
    return {org: list(s.parts["end_to_end_histogram"]) for org, s in got.items()}


def consistent_rows(rng: random.Random, orgs: int = 6) -> list[tuple[str | None, int, list[int]]]:
    """What aggregation writes: each day's platform histogram is its organizations' plus events without one."""
    rows: list[tuple[str | None, int, list[int]]] = []
    for day in range(DAYS):
        platform = histogram(rng, rng.sample(range(10, 30), 2))  # events without an organization
        for o in range(orgs):
            hist = histogram(rng, rng.sample(range(5, 40), rng.randint(1, 6)))
            rows.append((f"org-{o}", day, hist))
            platform = [a + b for a, b in zip(platform, hist, strict=True)]
        rows.append((None, day, platform))
    return rows


def test_the_usual_rows_sum_exactly_bucket_by_bucket(session: Session) -> None:
    rows = consistent_rows(random.Random(5))
    insert(session, rows)
    assert summed(session) == expected(rows)
    used = {i for _, _, hist in rows for i, c in enumerate(hist) if c}
    assert len(used) < BUCKETS  # the sparse path ran: some buckets were left out


def test_an_organization_using_a_bucket_its_platform_rows_lack_is_still_summed_exactly(session: Session) -> None:
    rows = consistent_rows(random.Random(6))
    stray = [0] * BUCKETS
    stray[63] = 4  # a bucket no platform row uses
    rows.append(("org-stray", 2, stray))
    insert(session, rows)
    got = summed(session)
    assert got == expected(rows)
    assert got["org-stray"][63] == 4


def test_organization_rows_without_platform_rows_are_summed_exactly(session: Session) -> None:
    rng = random.Random(7)
    rows: list[tuple[str | None, int, list[int]]] = [
        (f"org-{o}", day, histogram(rng, rng.sample(range(64), 3))) for o in range(4) for day in range(DAYS)
    ]
    insert(session, rows)
    got = summed(session)
    assert None not in got
    assert got == expected(rows)


def test_histograms_that_do_not_add_up_to_their_count_are_summed_exactly(session: Session) -> None:
    rows = consistent_rows(random.Random(8))
    insert(session, rows, count=lambda hist: sum(hist) + 1)
    assert summed(session) == expected(rows)


def test_a_bucket_set_read_before_a_window_changed_is_refused(session: Session) -> None:
    """The platform rows' left-out buckets are checked in the summing statement itself."""
    rows = consistent_rows(random.Random(9))
    insert(session, rows)
    used = sorted({i + 1 for org, _, hist in rows if org is None for i, c in enumerate(hist) if c})
    params = {"period_type": "daily", "lo": START, "hi": START + timedelta(days=DAYS)}
    with dbapi_connection(session).cursor() as cur:
        assert snapshots._sums(cur, tuple(used), params) is not None
        # As if the bucket set had been read before a re-run added the last used bucket.
        assert snapshots._sums(cur, tuple(used[:-1]), params) is None
    session.rollback()


def test_a_range_without_rows_sums_to_nothing(session: Session) -> None:
    assert summed(session) == {}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_breakdown_p95_equals_the_percentile_of_the_exact_sum(session: Session, seed: int) -> None:
    """The figure the table shows, from buckets added up here (nearest rank, interpolated)."""
    rows = consistent_rows(random.Random(seed))
    insert(session, rows)
    want = expected(rows)
    breakdown = organization_breakdown(session, "daily", START, START + timedelta(days=DAYS))
    session.rollback()
    assert {b.organization_id for b in breakdown} == {org for org in want if org is not None}
    for figures in breakdown:
        hist = want[figures.organization_id]
        n = sum(hist)
        rank = max(1, -(-95 * n // 100))
        index = next(i for i in range(BUCKETS) if sum(hist[: i + 1]) >= rank)
        lower = 0.0 if index == 0 else 100.0 * 1.25 ** (index - 1)
        upper = 100.0 * 1.25**index
        seen = sum(hist[:index])
        p95 = lower + (upper - lower) * (rank - seen - 0.5) / hist[index]
        assert figures.metrics["p95_end_to_end_latency"] == pytest.approx(p95, rel=1e-12), figures.organization_id


BURST_ORGS = 200
HOURLY_ROWS = text(
    "INSERT INTO metrics_snapshots (organization_id, period_type, period_start, period_end, "
    "n_artifact_completed, end_to_end_latency_count, end_to_end_latency_sum, end_to_end_histogram) "
    "SELECT o, 'hourly', :day + make_interval(hours => h), :day + make_interval(hours => h + 1), 3, 3, 3000.5, "
    "array_fill(0, ARRAY[20]) || ARRAY[1, 2] || array_fill(0, ARRAY[42]) "
    "FROM (SELECT 'org-' || g AS o FROM generate_series(1, :orgs) g UNION ALL SELECT NULL) orgs, "
    "generate_series(0, 23) h"
)


def aggregate_loops(plan: dict[str, Any]) -> list[int]:
    """How many times each aggregate of a plan ran (a parallel worker's partial one aside)."""
    loops = [plan["Actual Loops"]] if plan["Node Type"] == "Aggregate" and plan.get("Partial Mode") != "Partial" else []
    for child in plan.get("Plans", []):
        loops += aggregate_loops(child)
    return loops


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
        assert summed_parts.parts["end_to_end_histogram"] == [0] * 20 + [24, 48] + [0] * 42

    with dbapi_connection(session).cursor() as cur, snapshots.sum_plan_settings(cur):
        params = {"period_type": "hourly", "lo": day, "hi": day + timedelta(days=1)}
        sql = "EXPLAIN (ANALYZE, FORMAT JSON) " + snapshots._sum_sql((21, 22))
        plan = cur.execute(sql, params).fetchone()[0][0]["Plan"]
    session.rollback()
    assert aggregate_loops(plan) == [1, 1], plan
