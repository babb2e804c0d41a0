"""Test-side helpers for the metrics tests: a seeded event stream and an independent recount.

Nothing here imports product code that computes metrics: the expected figures are
written from the metric formulas directly over the events the test generated.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

EVENT_TYPES = (
    "artifact_received", "artifact_status_changed", "artifact_completed", "artifact_failed",
    "transcription_started", "transcription_completed", "transcription_failed",
    "claims_extraction_started", "claims_extracted", "claims_extraction_failed",
    "entity_resolution_started", "entity_resolution_completed", "entity_resolution_failed",
    "entity_needs_disambiguation", "draft_generation_started", "drafts_generated",
    "draft_generation_failed", "draft_confirmed", "draft_rejected", "circuit_breaker_opened",
    "circuit_breaker_closed", "retry_initiated", "retry_succeeded", "retry_failed",
    "budget_threshold_reached", "budget_exceeded", "rate_limit_hit",
)
# The types whose duration_ms a snapshot figure averages. The generator gives a
# duration to every type all the same, so a formula that mixes in another type's
# durations (or metadata) gets a different figure from the recount.
WITH_DURATION = {
    "transcription_completed", "claims_extracted", "entity_resolution_completed",
    "entity_needs_disambiguation", "drafts_generated", "artifact_completed",
}
# Integer metadata the schema accepts on any event type; each is given at random.
METADATA_INT_KEYS = (
    "claimCount", "entityCount", "disambiguationCount", "autoResolvedCount", "draftCount",
    "transcriptWordCount", "retryAttempt",
)
OUTCOMES = ("entity_resolution_completed", "entity_needs_disambiguation")


def recent_day(days_ago: int) -> date:
    """A UTC day relative to the real clock (windows must be within counter retention)."""
    return datetime.now(UTC).date() - timedelta(days=days_ago)


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def random_event(rng: random.Random, start: datetime, hours: int, orgs: list[str | None]) -> dict[str, Any]:
    event_type = rng.choice(EVENT_TYPES)
    occurred = start + timedelta(seconds=rng.uniform(0, hours * 3600 - 1))
    event: dict[str, Any] = {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "event_type": event_type,
        "organization_id": rng.choice(orgs),
        "occurred_at": occurred.isoformat(),
        "metadata": {},
    }
    add_random_values(rng, event)
    return event


def add_random_values(rng: random.Random, event: dict[str, Any]) -> None:
    """Give the event, whatever its type, a duration (90 %) and each metadata value (at random).

    Only some types count towards each figure; values on every other type
    are there so a formula that reads them from the wrong type fails the recount.
    """
    if rng.random() < 0.9:
        event["duration_ms"] = rng.lognormvariate(9, 1.0)
    if rng.random() < 0.5:
        event["metadata"]["confidenceScore"] = rng.random()
    for key in METADATA_INT_KEYS:
        if rng.random() < 0.4:
            event["metadata"][key] = rng.randint(0, 12)
    if rng.random() < 0.3:
        event["metadata"]["transcriptDuration"] = rng.uniform(1, 600)
    if rng.random() < 0.6:
        event["metadata"]["aiCost"] = round(rng.uniform(0, 0.05), 6)


def event_hour(event: dict[str, Any]) -> datetime:
    ts = datetime.fromisoformat(event["occurred_at"]).astimezone(UTC)
    return ts.replace(minute=0, second=0, microsecond=0)


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def nearest_rank(values: list[float], percent: int) -> float:
    """The exact percentile: the value at rank ceil(p n / 100) of the sorted values; 0 if none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(1, (percent * len(ordered) + 99) // 100) - 1]


PERCENTILE_COLUMNS = {f"p{p}_end_to_end_latency": p for p in (50, 90, 95, 99)}
PERCENTILE_ERROR = 0.02  # what the percentiles promise: within 2 % of the exact value


def expected(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Every snapshot figure, straight from the events."""
    evs = list(events)

    def n(*types: str) -> int:
        return sum(1 for e in evs if e["event_type"] in types)

    def durations(*types: str) -> list[float]:
        return [e["duration_ms"] for e in evs if e["event_type"] in types and "duration_ms" in e]

    def meta(key: str, *types: str) -> list[Any]:
        return [e["metadata"][key] for e in evs if e["event_type"] in types and key in e["metadata"]]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    outcomes = n(*OUTCOMES)
    received, completed, failed = n("artifact_received"), n("artifact_completed"), n("artifact_failed")
    cost = sum((Decimal(str(e["metadata"]["aiCost"])) for e in evs if "aiCost" in e["metadata"]), Decimal(0))
    return {
        "artifacts_received": received,
        "artifacts_completed": completed,
        "artifacts_failed": failed,
        "avg_transcription_latency": mean(durations("transcription_completed")),
        "avg_claims_extraction_latency": mean(durations("claims_extracted")),
        "avg_entity_resolution_latency": mean(durations(*OUTCOMES)),
        "avg_draft_generation_latency": mean(durations("drafts_generated")),
        "avg_end_to_end_latency": mean(durations("artifact_completed")),
        **{column: nearest_rank(durations("artifact_completed"), p) for column, p in PERCENTILE_COLUMNS.items()},
        "avg_transcript_confidence": mean(meta("confidenceScore", "transcription_completed")),
        "avg_claim_confidence": mean(meta("confidenceScore", "claims_extracted")),
        "auto_resolution_rate": _div(n("entity_resolution_completed"), outcomes),
        "disambiguation_rate": _div(n("entity_needs_disambiguation"), outcomes),
        "transcription_failure_rate": _div(n("transcription_failed"), n("transcription_completed",
                                                                        "transcription_failed")),
        "claims_extraction_failure_rate": _div(n("claims_extraction_failed"), n("claims_extracted",
                                                                                "claims_extraction_failed")),
        "entity_resolution_failure_rate": _div(n("entity_resolution_failed"), outcomes + n("entity_resolution_failed")),
        "draft_generation_failure_rate": _div(n("draft_generation_failed"), n("drafts_generated",
                                                                              "draft_generation_failed")),
        "overall_failure_rate": _div(failed, completed + failed),
        "total_claims_extracted": sum(meta("claimCount", "claims_extracted")),
        "total_entities_resolved": sum(meta("entityCount", *OUTCOMES)),
        "total_drafts_generated": sum(meta("draftCount", "drafts_generated")),
        "total_ai_cost": cost,
        "avg_cost_per_artifact": cost / received if received else Decimal(0),
        "retries_initiated": n("retry_initiated"),
        "retries_succeeded": n("retry_succeeded"),
        "retries_failed": n("retry_failed"),
    }


def assert_row_matches(row: Any, want: dict[str, Any], where: str) -> None:
    for column, value in want.items():
        got = getattr(row, column)
        if column in PERCENTILE_COLUMNS:
            assert abs(got - value) <= PERCENTILE_ERROR * value, (where, column, got, value)
        elif isinstance(value, Decimal):
            assert abs(Decimal(got) - value) <= Decimal("1E-9"), (where, column, got, value)
        elif isinstance(value, float):
            assert got == pytest.approx(value, rel=1e-9, abs=1e-9), (where, column, got, value)
        else:
            assert got == value, (where, column, got, value)


def group_events(
    events: Iterable[dict[str, Any]],
) -> tuple[dict[tuple[str | None, datetime], list[dict[str, Any]]], dict[tuple[str | None, date], list[dict[str,
                                                                                                            Any]]]]:
    """(organization or None for platform, hour/day) -> events; platform gets every event."""
    hourly: dict[tuple[str | None, datetime], list[dict[str, Any]]] = defaultdict(list)
    daily: dict[tuple[str | None, date], list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        hour = event_hour(e)
        for key in {e["organization_id"], None}:
            hourly[(key, hour)].append(e)
            daily[(key, hour.date())].append(e)
    return hourly, daily
