"""Artifacts (one per voice note), their derived data, and retry requests."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Float, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (
        # The stall sweeper scans working artifacts by last progress.
        Index("ix_artifacts_status_updated_at", "status", "updated_at"),
        # The dashboard's artifacts list, newest received first, by keyset: whole, by
        # status, by organization.
        Index("ix_artifacts_created_at_id", "created_at", "id"),
        Index("ix_artifacts_status_created_at_id", "status", "created_at", "id"),
        Index("ix_artifacts_organization_id_created_at_id", "organization_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    organization_id: Mapped[str] = mapped_column(String(255))
    coach_id: Mapped[str | None] = mapped_column(String(255))
    source_channel: Mapped[str] = mapped_column(String(255))
    media_ref: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))
    failed_stage: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(255))
    error_message: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, server_default='{"retryAttempt": 0}'
    )
    # Internal: times the sweeper re-queued the current stage since the last progress.
    requeue_count: Mapped[int] = mapped_column(Integer, server_default="0")
    # Internal: when the sweeper last re-queued the current stage. A re-queue is not
    # progress, so it never moves updated_at (the stall clock retries and staff read).
    requeued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Internal: the retry attempt whose outcome (retry_succeeded / retry_failed) is pending.
    active_retry_attempt: Mapped[int | None] = mapped_column(Integer)
    # Internal: the stage the artifact waits for or is running (transcription ..
    # draft_generation); NULL once completed. `processing` alone cannot say which.
    current_stage: Mapped[str | None] = mapped_column(String(32))
    # Internal: the task id that claimed current_stage; NULL while the stage is queued.
    # A duplicate message finds it set and does nothing; a redelivery (same id) resumes.
    stage_task_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


def _artifact_fk() -> Mapped[uuid.UUID]:
    return mapped_column(
        UUID(as_uuid=True), ForeignKey("artifacts.id", ondelete="CASCADE"), index=True
    )


class Transcript(Base):
    __tablename__ = "transcripts"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    artifact_id: Mapped[uuid.UUID] = _artifact_fk()
    text: Mapped[str] = mapped_column(Text)
    word_count: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float] = mapped_column(Float)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Claim(Base):
    __tablename__ = "claims"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    artifact_id: Mapped[uuid.UUID] = _artifact_fk()
    text: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class EntityResolution(Base):
    __tablename__ = "entity_resolutions"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    artifact_id: Mapped[uuid.UUID] = _artifact_fk()
    mention: Mapped[str] = mapped_column(Text)
    resolved_entity_id: Mapped[str | None] = mapped_column(String(255))
    needs_disambiguation: Mapped[bool] = mapped_column(server_default="false")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class InsightDraft(Base):
    __tablename__ = "insight_drafts"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    artifact_id: Mapped[uuid.UUID] = _artifact_fk()
    content: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32), server_default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class RetryRequest(Base):
    """One accepted retry: the history operators read, and request_id de-duplication."""

    __tablename__ = "retry_requests"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    request_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    artifact_id: Mapped[uuid.UUID] = _artifact_fk()
    stage: Mapped[str] = mapped_column(String(32))
    requested_by: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    # in_flight until the artifact completes (succeeded) or fails again (failed).
    outcome: Mapped[str] = mapped_column(String(16), server_default="in_flight")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
