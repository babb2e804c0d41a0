"""Derive every snapshot figure (models.metrics.SnapshotMetrics) from additive parts.

Pure functions: the same parts always give the same figures, whether they are one
hour of one organization's counters or thirty days of platform-wide snapshots.
Every division is safe: a zero denominator gives 0, never NaN or an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from voicepipe.domain import PIPELINE
from voicepipe.events import sketch
from voicepipe.events.parts import COARSE_PART, SKETCH_PART

# Numeric(24, 10) columns: quantizing here makes the value we compute and the value
# PostgreSQL stores the same, so a re-run compares equal.
COST_QUANTUM = Decimal("1E-10")

METRIC_COLUMNS: tuple[str, ...] = (
    "artifacts_received",
    "artifacts_completed",
    "artifacts_failed",
    "avg_transcription_latency",
    "avg_claims_extraction_latency",
    "avg_entity_resolution_latency",
    "avg_draft_generation_latency",
    "avg_end_to_end_latency",
    "p50_end_to_end_latency",
    "p90_end_to_end_latency",
    "p95_end_to_end_latency",
    "p99_end_to_end_latency",
    "avg_transcript_confidence",
    "avg_claim_confidence",
    "auto_resolution_rate",
    "disambiguation_rate",
    "transcription_failure_rate",
    "claims_extraction_failure_rate",
    "entity_resolution_failure_rate",
    "draft_generation_failure_rate",
    "overall_failure_rate",
    "total_claims_extracted",
    "total_entities_resolved",
    "total_drafts_generated",
    "total_ai_cost",
    "avg_cost_per_artifact",
    "retries_initiated",
    "retries_succeeded",
    "retries_failed",
)


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, or 0.0 when the denominator is 0."""
    return float(numerator) / float(denominator) if denominator else 0.0


def mean(parts: Mapping[str, Any], name: str) -> float:
    """Mean of a `<name>_sum` / `<name>_count` pair (events lacking the value are not counted)."""
    return ratio(parts[f"{name}_sum"], parts[f"{name}_count"])


_PERCENTILE_COLUMNS = tuple(f"p{p}_end_to_end_latency" for p in sketch.PERCENTS)
# How far a percentile may be from the exact value, relatively: the sketch's bound, or the
# 64-bucket histogram's for windows recorded before sketches (coarse_percentiles).
COARSE_PERCENTILE_ERROR = 0.25


def percentile_error(parts: Mapping[str, Any]) -> float:
    return COARSE_PERCENTILE_ERROR if parts.get(COARSE_PART) else sketch.ALPHA


# (figure, sum part, count part), in METRIC_COLUMNS order around the percentiles.
_LATENCY_MEANS: tuple[tuple[str, str, str], ...] = tuple(
    (f"avg_{name}", f"{name}_sum", f"{name}_count")
    for name in (
        "transcription_latency",
        "claims_extraction_latency",
        "entity_resolution_latency",
        "draft_generation_latency",
        "end_to_end_latency",
    )
)
_CONFIDENCE_MEANS: tuple[tuple[str, str, str], ...] = (
    ("avg_transcript_confidence", "transcript_confidence_sum", "transcript_confidence_count"),
    ("avg_claim_confidence", "claim_confidence_sum", "claim_confidence_count"),
)
_ZERO_COST = Decimal(0).quantize(COST_QUANTUM)


def derive(parts: Mapping[str, Any]) -> dict[str, Any]:
    """Every SnapshotMetrics column, from one window's (or any set's) additive parts, and
    `percentile_error`, the bound on the percentiles' relative error (not a column)."""
    # Column names are spelled out once (not formatted per call): an hour of 10,000
    # organizations derives 10,000 times.
    received = int(parts["n_artifact_received"])
    completed = int(parts["n_artifact_completed"])
    failed = int(parts["n_artifact_failed"])
    resolved = int(parts["n_entity_resolution_completed"])
    ambiguous = int(parts["n_entity_needs_disambiguation"])
    outcomes = resolved + ambiguous
    transcription_failed = int(parts["n_transcription_failed"])
    claims_failed = int(parts["n_claims_extraction_failed"])
    resolution_failed = int(parts["n_entity_resolution_failed"])
    draft_failed = int(parts["n_draft_generation_failed"])
    cost = Decimal(parts["ai_cost_sum"] or 0).quantize(COST_QUANTUM)
    per_artifact = (cost / received).quantize(COST_QUANTUM) if received else _ZERO_COST
    figures: dict[str, Any] = {
        "artifacts_received": received,
        "artifacts_completed": completed,
        "artifacts_failed": failed,
    }
    for column, total, count in _LATENCY_MEANS:
        figures[column] = ratio(parts[total], parts[count])
    figures.update(zip(_PERCENTILE_COLUMNS, sketch.quantiles(parts[SKETCH_PART], sketch.END_TO_END), strict=True))
    for column, total, count in _CONFIDENCE_MEANS:
        figures[column] = ratio(parts[total], parts[count])
    figures.update({
        # Both rates share the outcomes denominator, so each lies in [0, 1] (defect 5).
        "auto_resolution_rate": ratio(resolved, outcomes),
        "disambiguation_rate": ratio(ambiguous, outcomes),
        "transcription_failure_rate": ratio(
            transcription_failed, int(parts["n_transcription_completed"]) + transcription_failed
        ),
        "claims_extraction_failure_rate": ratio(claims_failed, int(parts["n_claims_extracted"]) + claims_failed),
        "entity_resolution_failure_rate": ratio(resolution_failed, outcomes + resolution_failed),
        "draft_generation_failure_rate": ratio(draft_failed, int(parts["n_drafts_generated"]) + draft_failed),
        "overall_failure_rate": ratio(failed, completed + failed),
        "total_claims_extracted": int(parts["claims_total"]),
        "total_entities_resolved": int(parts["entities_total"]),
        "total_drafts_generated": int(parts["drafts_total"]),
        "total_ai_cost": cost,
        "avg_cost_per_artifact": per_artifact,
        "retries_initiated": int(parts["n_retry_initiated"]),
        "retries_succeeded": int(parts["n_retry_succeeded"]),
        "retries_failed": int(parts["n_retry_failed"]),
        "percentile_error": percentile_error(parts),
    })
    return figures


# Per-stage figures for the stage breakdown: (stage, completed event types, failed type, latency part).
STAGES: tuple[tuple[str, tuple[str, ...], str, str], ...] = tuple(
    (stage.name, stage.completed_events, stage.failed_event, stage.latency) for stage in PIPELINE
)


def stage_figures(parts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per stage: completed and failed counts, failure rate, mean latency and its percentiles."""
    rows = []
    for stage, done_types, failed_type, latency in STAGES:
        p50, p90, p95, p99 = sketch.quantiles(parts[SKETCH_PART], sketch.KIND_OF[latency])
        done = sum(int(parts[f"n_{t}"]) for t in done_types)
        failed = int(parts[f"n_{failed_type}"])
        rows.append(
            {
                "stage": stage,
                "completed": done,
                "failed": failed,
                "failure_rate": ratio(failed, done + failed),
                "avg_latency": mean(parts, latency),
                "p50_latency": p50, "p90_latency": p90, "p95_latency": p95, "p99_latency": p99,
            }
        )
    return rows
