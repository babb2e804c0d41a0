"""Who changed platform-staff status, and which retries were refused (both append-only records)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Identity, Index, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base

# The paths a staff change can take; "sql" is any other write to users (a database
# trigger records every change, so even a manual UPDATE is audited).
STAFF_PATHS = ("directory_sync", "cli", "sql")


class StaffAudit(Base):
    """One change of users.is_platform_staff, written by a trigger on users (migration 0003)."""

    __tablename__ = "staff_audit"
    __table_args__ = (Index("ix_staff_audit_user_id_changed_at", "user_id", "changed_at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    changed_by: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(String(32))
    # NULL: the user did not exist before this change.
    old_is_platform_staff: Mapped[bool | None] = mapped_column(Boolean)
    new_is_platform_staff: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text)


class RetryRefusal(Base):
    """A refused retry request: who asked, for what, why it was refused, when."""

    __tablename__ = "retry_refusals"
    __table_args__ = (Index("ix_retry_refusals_artifact_id_refused_at", "artifact_id", "refused_at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # Text, not a foreign key: a request for an unknown or malformed artifact id is recorded too.
    artifact_id: Mapped[str] = mapped_column(String(255))
    stage: Mapped[str] = mapped_column(String(32))
    requested_by: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(255))
    refusal: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    refused_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DeploymentSecret(Base):
    """A value drawn once per deployment by a migration, never sent to producers.

    event_id_namespace: the uuid5 namespace of the pipeline's own event ids (migration
    0008), so that no producer can compute, and send first, the id of an event the
    pipeline will record.
    """

    __tablename__ = "deployment_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class UsedNonce(Base):
    """A signed message's nonce, kept while a message of its age is accepted: one use each."""

    __tablename__ = "used_nonces"

    nonce: Mapped[str] = mapped_column(String(255), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(255))
    used_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)


class SignatureRefusal(Base):
    """A directory message refused for its signature: missing, wrong, stale, reused or out of order."""

    __tablename__ = "signature_refusals"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str | None] = mapped_column(String(255))
    refusal: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    refused_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)
