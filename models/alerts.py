"""Alerts written by the built-in health checks (voicepipe.alerts.evaluate)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base


class Alert(Base):
    """One occurrence of a failing condition, from its first evaluation until it clears.

    An alert is open while ``resolved_at`` is NULL; acknowledging it records who saw it
    but keeps it open (and deduplicated) until the condition clears.
    """

    __tablename__ = "alerts"
    __table_args__ = (
        # At most one open alert per (kind, organization); NULL (platform-wide) counts
        # as one value. The evaluator's INSERT ... ON CONFLICT relies on this index.
        Index(
            "uq_alerts_open_kind_organization_id",
            "kind",
            "organization_id",
            unique=True,
            postgresql_where=text("resolved_at IS NULL"),
            postgresql_nulls_not_distinct=True,
        ),
        # `voicepipe alerts --all` lists the newest first.
        Index("ix_alerts_opened_at", "opened_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    # NULL: a platform-wide condition (queues, beat, windows).
    organization_id: Mapped[str | None] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text)
    value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # How many evaluations found the condition while this alert was open.
    evaluations: Mapped[int] = mapped_column(Integer, server_default="1")
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_by: Mapped[str | None] = mapped_column(String(255))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
