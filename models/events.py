"""Pipeline events and the additive counters recorded with them.

Every additive part (counts, sums, latency sketches) is declared once in
``AdditiveParts``: counters carry them per (organization, UTC hour), and metrics
snapshots carry them beside the derived figures, so any set of rows sums exactly.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Identity,
    Index,
    Numeric,
    Sequence,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base

# Every change to a counter row takes a fresh value of this sequence; a window's
# snapshot remembers the sum of its counter rows' revisions, so any later change
# (a late event, a rebuild) makes the sum differ and the window stale.
counter_revision_seq = Sequence("counter_revision_seq", metadata=Base.metadata)

COST = Numeric(24, 10)


def _count() -> Mapped[int]:
    return mapped_column(BigInteger, default=0, server_default="0")


def _sum() -> Mapped[float]:
    return mapped_column(Float, default=0.0, server_default="0")


class AdditiveParts:
    """Counts, sums and latency sketches: the parts every figure is derived from."""

    n_artifact_received: Mapped[int] = _count()
    n_artifact_status_changed: Mapped[int] = _count()
    n_artifact_completed: Mapped[int] = _count()
    n_artifact_failed: Mapped[int] = _count()
    n_transcription_started: Mapped[int] = _count()
    n_transcription_completed: Mapped[int] = _count()
    n_transcription_failed: Mapped[int] = _count()
    n_claims_extraction_started: Mapped[int] = _count()
    n_claims_extracted: Mapped[int] = _count()
    n_claims_extraction_failed: Mapped[int] = _count()
    n_entity_resolution_started: Mapped[int] = _count()
    n_entity_resolution_completed: Mapped[int] = _count()
    n_entity_resolution_failed: Mapped[int] = _count()
    n_entity_needs_disambiguation: Mapped[int] = _count()
    n_draft_generation_started: Mapped[int] = _count()
    n_drafts_generated: Mapped[int] = _count()
    n_draft_generation_failed: Mapped[int] = _count()
    n_draft_confirmed: Mapped[int] = _count()
    n_draft_rejected: Mapped[int] = _count()
    n_circuit_breaker_opened: Mapped[int] = _count()
    n_circuit_breaker_closed: Mapped[int] = _count()
    n_retry_initiated: Mapped[int] = _count()
    n_retry_succeeded: Mapped[int] = _count()
    n_retry_failed: Mapped[int] = _count()
    n_budget_threshold_reached: Mapped[int] = _count()
    n_budget_exceeded: Mapped[int] = _count()
    n_rate_limit_hit: Mapped[int] = _count()

    # Latency sums (ms) and the number of events that carried a duration.
    transcription_latency_sum: Mapped[float] = _sum()
    transcription_latency_count: Mapped[int] = _count()
    claims_extraction_latency_sum: Mapped[float] = _sum()
    claims_extraction_latency_count: Mapped[int] = _count()
    entity_resolution_latency_sum: Mapped[float] = _sum()
    entity_resolution_latency_count: Mapped[int] = _count()
    draft_generation_latency_sum: Mapped[float] = _sum()
    draft_generation_latency_count: Mapped[int] = _count()
    end_to_end_latency_sum: Mapped[float] = _sum()
    end_to_end_latency_count: Mapped[int] = _count()
    # Confidence sums and the number of events that carried a score.
    transcript_confidence_sum: Mapped[float] = _sum()
    transcript_confidence_count: Mapped[int] = _count()
    claim_confidence_sum: Mapped[float] = _sum()
    claim_confidence_count: Mapped[int] = _count()
    # Totals from metadata.
    claims_total: Mapped[int] = _count()
    entities_total: Mapped[int] = _count()
    drafts_total: Mapped[int] = _count()
    ai_cost_sum: Mapped[Decimal] = mapped_column(COST, default=Decimal(0), server_default="0")
    # Every latency's sketch (voicepipe.events.sketch): non-empty buckets only, packed.
    latency_sketch: Mapped[list[int]] = mapped_column(ARRAY(BigInteger), server_default=text("'{}'::bigint[]"))
    # True on rows carried over from the fixed 64-bucket end-to-end histogram (within
    # 25 %, no stage latencies): their percentiles, and any range's that holds them, are coarse.
    coarse_percentiles: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # The 64-bucket end-to-end histogram of the previous release, which its workers may still
    # write during an upgrade (migration 0011's triggers fold that into the sketch). Never
    # read or written by this release; dropped by the next one.
    end_to_end_histogram: Mapped[list[int]] = mapped_column(ARRAY(BigInteger), server_default=text("'{}'::bigint[]"))


class PipelineEvent(Base):
    __tablename__ = "pipeline_events"
    __table_args__ = (
        Index("ix_pipeline_events_occurred_at", "occurred_at"),
        Index("ix_pipeline_events_artifact_id_occurred_at", "artifact_id", "occurred_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(64))
    artifact_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    organization_id: Mapped[str | None] = mapped_column(String(255))
    coach_id: Mapped[str | None] = mapped_column(String(255))
    stage: Mapped[str | None] = mapped_column(String(32))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    time_window: Mapped[str] = mapped_column(String(13))
    duration_ms: Mapped[float | None] = mapped_column(Float)
    error_code: Mapped[str | None] = mapped_column(String(255))
    error_message: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default="{}")
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class EventCounter(AdditiveParts, Base):
    """Additive counters for one (organization, UTC hour); NULL organization = no organization."""

    __tablename__ = "event_counters"
    __table_args__ = (
        UniqueConstraint(
            "organization_id", "hour_start", postgresql_nulls_not_distinct=True
        ),
        Index("ix_event_counters_hour_start", "hour_start"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    organization_id: Mapped[str | None] = mapped_column(String(255))
    hour_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revision: Mapped[int] = mapped_column(
        BigInteger, counter_revision_seq, server_default=counter_revision_seq.next_value()
    )
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
