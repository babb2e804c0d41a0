"""derive(): every figure from additive parts, safe divisions, percentiles from the sketch."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from models.metrics import SnapshotMetrics
from voicepipe.events.parts import add_event, empty_parts, sum_parts
from voicepipe.metrics.derive import METRIC_COLUMNS, derive, stage_figures


def test_every_snapshot_metric_column_is_derived() -> None:
    columns = {name for name in vars(SnapshotMetrics) if not name.startswith("_")}
    assert set(METRIC_COLUMNS) == columns
    assert set(derive(empty_parts())) == columns | {"percentile_error"}


def test_percentile_error_says_whether_a_coarse_row_is_in() -> None:
    fine, coarse = empty_parts(), empty_parts()
    coarse["coarse_percentiles"] = True
    assert derive(fine)["percentile_error"] == 0.01
    assert derive(sum_parts([fine, coarse]))["percentile_error"] == 0.25


def test_empty_parts_give_zeros_never_nan() -> None:
    figures = derive(empty_parts())
    del figures["percentile_error"]
    for name, value in figures.items():
        assert value == 0, name
        assert not (isinstance(value, float) and math.isnan(value)), name


def test_rates_means_and_totals_follow_the_formulas() -> None:
    parts = empty_parts()
    for _ in range(3):
        add_event(parts, "entity_resolution_completed", 100.0, {"entityCount": 2})
    add_event(parts, "entity_needs_disambiguation", 400.0, {"entityCount": 1})
    add_event(parts, "entity_resolution_failed", None, {})
    add_event(parts, "transcription_completed", 2000.0, {"confidenceScore": 0.5})
    add_event(parts, "transcription_completed", None, {"confidenceScore": 0.9})  # no duration: mean skips it
    add_event(parts, "transcription_failed", None, {"aiCost": 0.25})
    add_event(parts, "artifact_received", None, {"aiCost": 0.5})
    add_event(parts, "artifact_received", None, {})
    add_event(parts, "artifact_failed", None, {})
    f = derive(parts)
    assert f["auto_resolution_rate"] == 0.75
    assert f["disambiguation_rate"] == 0.25
    assert f["entity_resolution_failure_rate"] == 0.2
    assert f["avg_entity_resolution_latency"] == 175.0
    assert f["total_entities_resolved"] == 7
    assert f["avg_transcription_latency"] == 2000.0
    assert f["avg_transcript_confidence"] == pytest.approx(0.7)
    assert f["transcription_failure_rate"] == pytest.approx(1 / 3)
    assert f["total_ai_cost"] == Decimal("0.75")
    assert f["avg_cost_per_artifact"] == Decimal("0.375")
    assert f["overall_failure_rate"] == 1.0  # 1 failed, 0 completed
    assert 0.0 <= f["auto_resolution_rate"] <= 1.0


def test_p95_comes_from_the_merged_sketch_not_from_averaging_p95s() -> None:
    fast, slow = empty_parts(), empty_parts()
    for _ in range(95):
        add_event(fast, "artifact_completed", 1_000.0, {})
    for _ in range(5):
        add_event(slow, "artifact_completed", 60_000.0, {})
    merged = derive(sum_parts([fast, slow]))
    # Exact nearest-rank p95 of the 100 values is 1,000 ms, and p99 60,000 ms: each within 1 %.
    assert merged["p95_end_to_end_latency"] == pytest.approx(1_000.0, rel=0.01)
    assert merged["p99_end_to_end_latency"] == pytest.approx(60_000.0, rel=0.01)
    average_of_p95s = (derive(fast)["p95_end_to_end_latency"] + derive(slow)["p95_end_to_end_latency"]) / 2
    assert merged["p95_end_to_end_latency"] < average_of_p95s / 10
    assert merged["avg_end_to_end_latency"] == pytest.approx((95 * 1_000 + 5 * 60_000) / 100)


def test_stage_figures_cover_the_four_processing_stages() -> None:
    parts = empty_parts()
    add_event(parts, "drafts_generated", 300.0, {})
    add_event(parts, "draft_generation_failed", None, {})
    stages = {s["stage"]: s for s in stage_figures(parts)}
    assert list(stages) == ["transcription", "claims_extraction", "entity_resolution", "draft_generation"]
    assert stages["draft_generation"] == {
        "stage": "draft_generation", "completed": 1, "failed": 1, "failure_rate": 0.5, "avg_latency": 300.0,
        **{f"p{p}_latency": pytest.approx(300.0, rel=0.01) for p in (50, 90, 95, 99)},
    }
    assert stages["transcription"]["failure_rate"] == 0.0
