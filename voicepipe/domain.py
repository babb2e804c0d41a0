"""The pipeline's vocabulary: stages, statuses, event types."""

from __future__ import annotations

from voicepipe.settings import STAGE_NAMES

STAGES: tuple[str, ...] = STAGE_NAMES

STATUSES: tuple[str, ...] = (
    "received",
    "transcribing",
    "transcribed",
    "processing",
    "completed",
    "failed",
)
WORKING_STATUSES: tuple[str, ...] = ("received", "transcribing", "transcribed", "processing")

EVENT_TYPES: tuple[str, ...] = (
    # artifact
    "artifact_received",
    "artifact_status_changed",
    "artifact_completed",
    "artifact_failed",
    # transcription
    "transcription_started",
    "transcription_completed",
    "transcription_failed",
    # claims
    "claims_extraction_started",
    "claims_extracted",
    "claims_extraction_failed",
    # entities
    "entity_resolution_started",
    "entity_resolution_completed",
    "entity_resolution_failed",
    "entity_needs_disambiguation",
    # drafts
    "draft_generation_started",
    "drafts_generated",
    "draft_generation_failed",
    "draft_confirmed",
    "draft_rejected",
    # system
    "circuit_breaker_opened",
    "circuit_breaker_closed",
    "retry_initiated",
    "retry_succeeded",
    "retry_failed",
    # cost
    "budget_threshold_reached",
    "budget_exceeded",
    "rate_limit_hit",
)
assert len(EVENT_TYPES) == 27

# Entity-resolution outcomes: both count as "resolved" for latency and totals.
ENTITY_OUTCOMES: tuple[str, ...] = ("entity_resolution_completed", "entity_needs_disambiguation")

# Metadata keys with a known type; other keys are kept as given.
METADATA_INTS: tuple[str, ...] = (
    "claimCount",
    "entityCount",
    "disambiguationCount",
    "autoResolvedCount",
    "draftCount",
    "transcriptWordCount",
    "retryAttempt",
)
METADATA_NUMBERS: tuple[str, ...] = ("confidenceScore", "transcriptDuration", "aiCost")
METADATA_TEXTS: tuple[str, ...] = ("aiModel", "sourceChannel")
