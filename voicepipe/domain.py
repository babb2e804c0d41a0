"""The pipeline's vocabulary: stages, statuses, event types.

The one table of the stages with AI work (PIPELINE) is here; settings, pipeline, retry,
metrics, the CLI, the client and the contract derive what they need from it. This
module imports nothing of voicepipe, so a producer may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Stage:
    """A stage with AI work: the task that runs it and how it moves an artifact on."""

    name: str
    task: str  # the pipeline task that runs it
    claimable: tuple[str, ...]  # statuses it may be claimed in: the one before it, or its own working one
    working: str  # the status while it runs
    done: str  # the status once it completed
    retry_status: str  # the status a retry of this stage resets the artifact to
    completed_events: tuple[str, ...]  # the event types that say it completed
    derived_table: str  # its rows; a retry deletes its stage's and every later stage's

    @property
    def started_event(self) -> str:
        return f"{self.name}_started"

    @property
    def failed_event(self) -> str:
        return f"{self.name}_failed"

    @property
    def latency(self) -> str:
        """The parts (sum and count) of its durations."""
        return f"{self.name}_latency"


PIPELINE: tuple[Stage, ...] = (
    Stage("transcription", "voicepipe.pipeline.transcribe", ("received", "transcribing"), "transcribing",
          "transcribed", "transcribing", ("transcription_completed",), "transcripts"),
    Stage("claims_extraction", "voicepipe.pipeline.extract_claims", ("transcribed", "processing"), "processing",
          "processing", "transcribed", ("claims_extracted",), "claims"),
    Stage("entity_resolution", "voicepipe.pipeline.resolve_entities", ("processing",), "processing",
          "processing", "processing", ENTITY_OUTCOMES, "entity_resolutions"),
    Stage("draft_generation", "voicepipe.pipeline.generate_drafts", ("processing",), "processing",
          "completed", "processing", ("drafts_generated",), "insight_drafts"),
)
STAGE_ORDER: tuple[str, ...] = tuple(stage.name for stage in PIPELINE)
STAGE_BY_NAME: dict[str, Stage] = {stage.name: stage for stage in PIPELINE}
# Every stage an event may name: ingestion and confirmation have no AI work.
STAGES: tuple[str, ...] = ("ingestion", *STAGE_ORDER, "confirmation")
# What a retry may ask for: one stage, or the whole pipeline from the start.
FULL_PIPELINE = "full_pipeline"
RETRY_STAGES: tuple[str, ...] = (*STAGE_ORDER, FULL_PIPELINE)

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
