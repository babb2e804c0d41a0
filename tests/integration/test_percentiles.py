"""Latency percentiles within 2 % of exact, in every stored window and every range.

Events with durations from several distributions go through recording and the hourly
and daily aggregation on real PostgreSQL. Every p50, p90, p95 and p99 then read back
(each hourly and daily row, organization and platform; ranges of hours and days; the
organization breakdown; each stage's) is compared with the nearest-rank percentile of
the raw durations, computed here from the events the test generated.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import MetricsSnapshot
from tests.support.metrics import PERCENTILE_ERROR, midnight, nearest_rank, recent_day
from voicepipe.events.recording import record_events
from voicepipe.metrics.daily import aggregate_day
from voicepipe.metrics.queries import organization_breakdown, range_figures, stage_breakdown

PERCENTS = (50, 90, 95, 99)
DAY_MS = 86_400_000.0
# One distribution per organization, so each one's windows test one shape; the
# platform's windows mix them all.
DISTRIBUTIONS: dict[str, Callable[[random.Random], float]] = {
    "org-lognormal": lambda r: r.lognormvariate(11, 1.3),
    "org-bimodal": lambda r: r.gauss(900, 50) if r.random() < 0.8 else r.gauss(300_000, 30_000),
    "org-long-tail": lambda r: 200 * r.paretovariate(1.05),
    "org-single-value": lambda r: 4_321.0,
    "org-tiny": lambda r: r.uniform(0.002, 3.0),
    "org-huge": lambda r: r.uniform(2, 20) * DAY_MS,
}
# The event types whose durations each latency is made of (the domain's formulas).
LATENCIES = {
    "end_to_end": ("artifact_completed",),
    "transcription": ("transcription_completed",),
    "claims_extraction": ("claims_extracted",),
    "entity_resolution": ("entity_resolution_completed", "entity_needs_disambiguation"),
    "draft_generation": ("drafts_generated",),
}
TYPES = [t for types in LATENCIES.values() for t in types]
HOURS = 36


def make_events(rng: random.Random, start: datetime) -> list[dict[str, Any]]:
    events = []
    for org, draw in DISTRIBUTIONS.items():
        for _ in range(rng.choice((700, 1_100))):
            events.append({
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "event_type": rng.choice(TYPES),
                "organization_id": org,
                "occurred_at": (start + timedelta(seconds=rng.uniform(0, HOURS * 3600 - 1))).isoformat(),
                "duration_ms": min(abs(draw(rng)), 29 * DAY_MS),
            })
    return events


def hour_of(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["occurred_at"]).replace(minute=0, second=0, microsecond=0)


def assert_close(got: float | None, exact: float, where: Any) -> None:
    assert got is not None, where
    assert abs(got - exact) <= PERCENTILE_ERROR * exact, (where, got, exact)


@pytest.fixture
def recorded(session: Session) -> tuple[datetime, list[dict[str, Any]]]:
    rng = random.Random(2026)
    first = recent_day(3)
    start = midnight(first)
    events = make_events(rng, start)
    for i in range(0, len(events), 1_000):
        record_events(session, events[i : i + 1_000])
    session.commit()
    for offset in range(2):
        aggregate_day(session, first + timedelta(days=offset))
    session.commit()
    return start, events


def test_every_stored_window_is_within_2_percent(session: Session, recorded: tuple[datetime, list[Any]]) -> None:
    start, events = recorded
    durations: dict[tuple[str, str | None, datetime], list[float]] = defaultdict(list)
    for e in events:
        if e["event_type"] == "artifact_completed":
            hour = hour_of(e)
            for org in (e["organization_id"], None):
                durations[("hourly", org, hour)].append(e["duration_ms"])
                durations[("daily", org, midnight(hour.date()))].append(e["duration_ms"])
    rows = session.execute(select(MetricsSnapshot)).scalars().all()
    checked = 0
    for row in rows:
        key = (row.period_type, row.organization_id, row.period_start.astimezone(UTC))
        values = durations.get(key, [])
        for p in PERCENTS:
            assert_close(getattr(row, f"p{p}_end_to_end_latency"), nearest_rank(values, p), (key, p))
        assert not row.coarse_percentiles
        checked += bool(values)
    # Every organization's every active hour, and both days, were there to check.
    assert checked == len(durations)
    assert checked > 2 * (len(DISTRIBUTIONS) + 1)


@pytest.mark.parametrize("period", ["hourly", "daily"])
def test_every_range_and_every_stage_is_within_2_percent(
    session: Session, recorded: tuple[datetime, list[Any]], period: str
) -> None:
    start, events = recorded
    step = timedelta(hours=1) if period == "hourly" else timedelta(days=1)
    rng = random.Random(period)
    ranges = [(start, start + 2 * timedelta(days=1))]
    for _ in range(4):
        lo = rng.randrange(0, 30 if period == "hourly" else 1)
        hi = rng.randrange(lo + 1, (HOURS if period == "hourly" else 2) + 1)
        ranges.append((start + lo * step, start + hi * step))

    def within(lo: datetime, hi: datetime, org: str | None, types: tuple[str, ...]) -> list[float]:
        return [e["duration_ms"] for e in events if e["event_type"] in types
                and (org is None or e["organization_id"] == org)
                and lo <= datetime.fromisoformat(e["occurred_at"]) < hi]

    for lo, hi in ranges:
        if period == "daily":
            hi = min(hi, start + 2 * timedelta(days=1))
        for org in (None, *DISTRIBUTIONS):
            figures = range_figures(session, period, lo, hi, org)
            for p in PERCENTS:
                want = nearest_rank(within(lo, hi, org, LATENCIES["end_to_end"]), p)
                assert_close(figures[f"p{p}_end_to_end_latency"], want, (period, lo, hi, org, p))
            for stage in stage_breakdown(session, period, lo, hi, org):
                values = within(lo, hi, org, LATENCIES[stage["stage"]])
                for p in PERCENTS:
                    assert_close(stage[f"p{p}_latency"], nearest_rank(values, p), (period, lo, hi, org, stage, p))
        for figures in organization_breakdown(session, period, lo, hi):
            for p in PERCENTS:
                want = nearest_rank(within(lo, hi, figures.organization_id, LATENCIES["end_to_end"]), p)
                assert_close(figures.metrics[f"p{p}_end_to_end_latency"], want, (period, lo, hi, figures, p))
