"""SQLAlchemy 2 models and the session. Importing this package registers every table."""

from __future__ import annotations

from models.alerts import Alert
from models.artifacts import (
    Artifact,
    Claim,
    EntityResolution,
    InsightDraft,
    RetryRequest,
    Transcript,
)
from models.base import Base
from models.dead_letters import DeadLetter, TaskDelivery
from models.directory import Organization, User
from models.events import AdditiveParts, EventCounter, PipelineEvent, counter_revision_seq
from models.metrics import AggregationWindow, LateWindow, MetricsSnapshot, SnapshotMetrics
from models.security import DeploymentSecret, RetryRefusal, SignatureRefusal, StaffAudit, UsedNonce
from models.usage import AiUsageDailyAggregate, AiUsageDailyBreakdown, AiUsageLog

__all__ = [
    "AdditiveParts",
    "AggregationWindow",
    "AiUsageDailyAggregate",
    "AiUsageDailyBreakdown",
    "AiUsageLog",
    "Alert",
    "Artifact",
    "Base",
    "Claim",
    "DeadLetter",
    "EntityResolution",
    "EventCounter",
    "InsightDraft",
    "LateWindow",
    "MetricsSnapshot",
    "Organization",
    "PipelineEvent",
    "RetryRefusal",
    "DeploymentSecret",
    "SignatureRefusal",
    "UsedNonce",
    "RetryRequest",
    "SnapshotMetrics",
    "StaffAudit",
    "TaskDelivery",
    "Transcript",
    "User",
    "counter_revision_seq",
]
