"""The public task names and their queues (contract/tasks/*.schema.json). Producers depend on these."""

from __future__ import annotations

from voicepipe.domain import RETRY_STAGES

# `events` holds only the single-event messages, which a worker of its own records in
# batches (worker/batching.py); workers of the other queues never hold them.
QUEUES: tuple[str, ...] = ("metrics", "pipeline", "retry", "events")
EVENTS_QUEUE = "events"

TASK_QUEUES: dict[str, str] = {
    "voicepipe.metrics.aggregate_hourly_due": "metrics",
    "voicepipe.metrics.aggregate_hour": "metrics",
    "voicepipe.metrics.aggregate_daily_due": "metrics",
    "voicepipe.metrics.aggregate_day": "metrics",
    "voicepipe.usage.aggregate_daily_due": "metrics",
    "voicepipe.usage.aggregate_day": "metrics",
    "voicepipe.maintenance.cleanup": "metrics",
    "voicepipe.maintenance.requeue_stalled": "metrics",
    "voicepipe.pipeline.ingest": "pipeline",
    "voicepipe.pipeline.transcribe": "pipeline",
    "voicepipe.pipeline.extract_claims": "pipeline",
    "voicepipe.pipeline.resolve_entities": "pipeline",
    "voicepipe.pipeline.generate_drafts": "pipeline",
    **{f"voicepipe.retry.{stage}": "retry" for stage in RETRY_STAGES},
    # Sent to `pipeline` by producers of earlier releases: still recorded there, one by one.
    "voicepipe.events.record": "events",
    "voicepipe.usage.record": "events",
    "voicepipe.directory.upsert_organization": "pipeline",
    "voicepipe.directory.upsert_user": "pipeline",
    # Additions beyond the contract's table (same naming rules).
    "voicepipe.events.record_batch": "pipeline",
    "voicepipe.usage.record_batch": "pipeline",
    "voicepipe.alerts.evaluate": "metrics",
}

# Task modules the worker imports (celery `include`); none has import-time side effects.
TASK_MODULES: tuple[str, ...] = (
    "tasks.events",
    "tasks.directory",
    "tasks.metrics",
    "tasks.usage",
    "tasks.maintenance",
    "tasks.pipeline",
    "tasks.retry",
    "tasks.alerts",
)
