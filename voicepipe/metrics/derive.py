"""Derive every snapshot figure (models.metrics.SnapshotMetrics) from additive parts.

Pure functions: the same parts always give the same figures, whether they are one
hour of one organization's counters or thirty days of platform-wide snapshots.
Every division is safe: a zero denominator gives 0, never NaN or an error.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
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


# figures_of_values() gives the percentiles where METRIC_COLUMNS names them.
assert METRIC_COLUMNS[8:12] == tuple(f"p{p}_end_to_end_latency" for p in sketch.PERCENTS)
# How far a percentile may be from the exact value, relatively: the sketch's bound, or the
# 64-bucket histogram's for windows recorded before sketches (coarse_percentiles).
COARSE_PERCENTILE_ERROR = 0.25


def percentile_error(parts: Mapping[str, Any]) -> float:
    return COARSE_PERCENTILE_ERROR if parts.get(COARSE_PART) else sketch.ALPHA


# The parts the figures read, in the order figures_of_values() takes them.
_LATENCY_PARTS: tuple[str, ...] = tuple(
    f"{name}_{end}"
    for name in ("transcription_latency", "claims_extraction_latency", "entity_resolution_latency",
                 "draft_generation_latency", "end_to_end_latency")
    for end in ("sum", "count")
)
_CONFIDENCE_PARTS: tuple[str, ...] = (
    "transcript_confidence_sum", "transcript_confidence_count", "claim_confidence_sum", "claim_confidence_count",
)
USED_PARTS: tuple[str, ...] = (
    "n_artifact_received", "n_artifact_completed", "n_artifact_failed",
    "n_entity_resolution_completed", "n_entity_needs_disambiguation",
    "n_transcription_completed", "n_transcription_failed", "n_claims_extracted", "n_claims_extraction_failed",
    "n_entity_resolution_failed", "n_drafts_generated", "n_draft_generation_failed",
    "claims_total", "entities_total", "drafts_total", "ai_cost_sum",
    "n_retry_initiated", "n_retry_succeeded", "n_retry_failed",
    *_LATENCY_PARTS, *_CONFIDENCE_PARTS, SKETCH_PART,
)
_used_of_parts = operator.itemgetter(*USED_PARTS)
_ZERO_COST = Decimal(0).quantize(COST_QUANTUM)


def figures_of_values(used: Sequence[Any]) -> tuple[Any, ...]:
    """Every SnapshotMetrics column, in METRIC_COLUMNS order, from the USED_PARTS values.

    The one definition of the figures: derive() names them; the hourly aggregation
    takes the values straight from a counter row (10,000 organizations an hour).
    """
    (received, completed, failed, resolved, ambiguous, transcribed, transcription_failed, claimed,
     claims_failed, resolution_failed, drafted, draft_failed, claims, entities, drafts, cost_sum,
     retries, retries_ok, retries_failed,
     t_sum, t_n, c_sum, c_n, e_sum, e_n, d_sum, d_n, e2e_sum, e2e_n,
     tc_sum, tc_n, cc_sum, cc_n, latency_sketch) = used
    received, completed, failed = int(received), int(completed), int(failed)
    resolved, ambiguous = int(resolved), int(ambiguous)
    outcomes = resolved + ambiguous
    transcription_failed, claims_failed = int(transcription_failed), int(claims_failed)
    resolution_failed, draft_failed = int(resolution_failed), int(draft_failed)
    cost = Decimal(cost_sum or 0).quantize(COST_QUANTUM)
    return (
        received,
        completed,
        failed,
        ratio(t_sum, t_n),
        ratio(c_sum, c_n),
        ratio(e_sum, e_n),
        ratio(d_sum, d_n),
        ratio(e2e_sum, e2e_n),
        *sketch.quantiles(latency_sketch, sketch.END_TO_END),
        ratio(tc_sum, tc_n),
        ratio(cc_sum, cc_n),
        # Both rates share the outcomes denominator, so each lies in [0, 1] (defect 5).
        ratio(resolved, outcomes),
        ratio(ambiguous, outcomes),
        ratio(transcription_failed, int(transcribed) + transcription_failed),
        ratio(claims_failed, int(claimed) + claims_failed),
        ratio(resolution_failed, outcomes + resolution_failed),
        ratio(draft_failed, int(drafted) + draft_failed),
        ratio(failed, completed + failed),
        int(claims),
        int(entities),
        int(drafts),
        cost,
        (cost / received).quantize(COST_QUANTUM) if received else _ZERO_COST,
        int(retries),
        int(retries_ok),
        int(retries_failed),
    )


def figures(parts: Mapping[str, Any]) -> tuple[Any, ...]:
    """Every SnapshotMetrics column, in METRIC_COLUMNS order, from one window's (or any set's) parts."""
    return figures_of_values(_used_of_parts(parts))


def derive(parts: Mapping[str, Any]) -> dict[str, Any]:
    """Every SnapshotMetrics column by name, and `percentile_error`, the bound on the
    percentiles' relative error (not a column)."""
    named = dict(zip(METRIC_COLUMNS, figures(parts), strict=True))
    named["percentile_error"] = percentile_error(parts)
    return named


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
