"""AI usage: one row per LLM call, and sparse daily rollups per organization."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.events import COST


class AiUsageLog(Base):
    __tablename__ = "ai_usage_log"
    __table_args__ = (
        Index("ix_ai_usage_log_organization_id_occurred_at", "organization_id", "occurred_at"),
        Index("ix_ai_usage_log_occurred_at", "occurred_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    organization_id: Mapped[str] = mapped_column(String(255))
    coach_id: Mapped[str | None] = mapped_column(String(255))
    player_id: Mapped[str | None] = mapped_column(String(255))
    operation: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(255))
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[Decimal] = mapped_column(COST)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AiUsageDailyAggregate(Base):
    __tablename__ = "ai_usage_daily_aggregates"
    __table_args__ = (
        UniqueConstraint("day", "organization_id", postgresql_nulls_not_distinct=True),
        Index("ix_ai_usage_daily_aggregates_organization_id_day", "organization_id", "day"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    day: Mapped[date] = mapped_column(Date)
    organization_id: Mapped[str | None] = mapped_column(String(255))
    total_cost: Mapped[Decimal] = mapped_column(COST)
    total_calls: Mapped[int] = mapped_column(BigInteger)
    total_input_tokens: Mapped[int] = mapped_column(BigInteger)
    total_cached_tokens: Mapped[int] = mapped_column(BigInteger)
    total_output_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_hit_rate: Mapped[float] = mapped_column(Float)
    # {key: {"cost": str decimal, "calls": n, "input_tokens": n, "cached_tokens": n, "output_tokens": n}}
    by_operation: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    by_coach: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    by_player: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AiUsageDailyBreakdown(Base):
    """One key (an operation, coach or player) of a daily rollup's breakdown, with its sums
    in columns: a range's top coaches and players are ranked from these rows instead of
    expanding each day's jsonb. Triggers write them from the rollup's `by_operation`,
    `by_coach` and `by_player` whenever a rollup is inserted or updated, whoever writes
    it, and they are deleted with it (retention cleanup deletes them first); nothing else
    should write this table.
    """

    __tablename__ = "ai_usage_daily_breakdowns"
    __table_args__ = (CheckConstraint("kind IN ('operation', 'coach', 'player')", name="kind"),)

    rollup_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("ai_usage_daily_aggregates.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    cost: Mapped[Decimal] = mapped_column(COST)
    calls: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
