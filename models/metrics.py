"""Hourly and daily metrics snapshots, and the bookkeeping of which windows are done."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.events import COST, AdditiveParts, counter_revision_seq

PERIOD_TYPES = ("hourly", "daily")


def _metric() -> Mapped[float]:
    return mapped_column(Float, default=0.0, server_default="0")


def _total() -> Mapped[int]:
    return mapped_column(BigInteger, default=0, server_default="0")


class SnapshotMetrics:
    """The derived figures (voicepipe/metrics/derive.py), one column each."""

    artifacts_received: Mapped[int] = _total()
    artifacts_completed: Mapped[int] = _total()
    artifacts_failed: Mapped[int] = _total()
    avg_transcription_latency: Mapped[float] = _metric()
    avg_claims_extraction_latency: Mapped[float] = _metric()
    avg_entity_resolution_latency: Mapped[float] = _metric()
    avg_draft_generation_latency: Mapped[float] = _metric()
    avg_end_to_end_latency: Mapped[float] = _metric()
    p95_end_to_end_latency: Mapped[float] = _metric()
    # NULL on rows computed before latency sketches, which had only p95.
    p50_end_to_end_latency: Mapped[float | None] = mapped_column(Float, nullable=True)
    p90_end_to_end_latency: Mapped[float | None] = mapped_column(Float, nullable=True)
    p99_end_to_end_latency: Mapped[float | None] = mapped_column(Float, nullable=True)
    avg_transcript_confidence: Mapped[float] = _metric()
    avg_claim_confidence: Mapped[float] = _metric()
    auto_resolution_rate: Mapped[float] = _metric()
    disambiguation_rate: Mapped[float] = _metric()
    transcription_failure_rate: Mapped[float] = _metric()
    claims_extraction_failure_rate: Mapped[float] = _metric()
    entity_resolution_failure_rate: Mapped[float] = _metric()
    draft_generation_failure_rate: Mapped[float] = _metric()
    overall_failure_rate: Mapped[float] = _metric()
    total_claims_extracted: Mapped[int] = _total()
    total_entities_resolved: Mapped[int] = _total()
    total_drafts_generated: Mapped[int] = _total()
    total_ai_cost: Mapped[Decimal] = mapped_column(COST, default=Decimal(0), server_default="0")
    avg_cost_per_artifact: Mapped[Decimal] = mapped_column(COST, default=Decimal(0), server_default="0")
    retries_initiated: Mapped[int] = _total()
    retries_succeeded: Mapped[int] = _total()
    retries_failed: Mapped[int] = _total()


class MetricsSnapshot(SnapshotMetrics, AdditiveParts, Base):
    """One window's figures for one organization, or platform-wide (organization NULL)."""

    __tablename__ = "metrics_snapshots"
    __table_args__ = (
        UniqueConstraint(
            "organization_id", "period_type", "period_start", postgresql_nulls_not_distinct=True
        ),
        CheckConstraint("period_type IN ('hourly', 'daily')", name="period_type"),
        Index("ix_metrics_snapshots_period_type_period_start", "period_type", "period_start"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    organization_id: Mapped[str | None] = mapped_column(String(255))
    period_type: Mapped[str] = mapped_column(String(8))
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AggregationWindow(Base):
    """Internal: a window that has been aggregated, from which counter revision, and its failures."""

    __tablename__ = "aggregation_windows"
    __table_args__ = (CheckConstraint("period_type IN ('hourly', 'daily')", name="period_type"),)

    period_type: Mapped[str] = mapped_column(String(8), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    # Sum of the window's counter revisions when it was computed; NULL = never succeeded.
    source_revision: Mapped[int | None] = mapped_column(BigInteger)
    computed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failures: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LateWindow(Base):
    """Internal: a window whose source changed after it closed, to be re-aggregated.

    Recording marks the hour of an event recorded after that hour closed (and a
    rebuild marks every closed hour it rewrites; AI usage marks the day of a call
    recorded after that day closed), so the wrappers find late changes by what
    changed, however old, instead of scanning a horizon. Each mark takes a fresh revision; a wrapper deletes
    a mark only at the revision it saw, so a change racing the delete keeps its mark.
    """

    __tablename__ = "late_windows"
    __table_args__ = (CheckConstraint("kind IN ('hourly', 'usage_day')", name="kind"),)

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    revision: Mapped[int] = mapped_column(
        BigInteger, counter_revision_seq, server_default=counter_revision_seq.next_value()
    )
    marked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
