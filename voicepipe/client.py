"""A small typed producer for voicepipe's tasks: it needs only Celery and the broker URL.

    from voicepipe.client import Producer

    with Producer("redis://broker:6379/0") as vp:
        vp.send_event({"event_type": "artifact_received", "organization_id": "org-1"})
        vp.send_usage({"organization_id": "org-1", "operation": "transcribe",
                       "model": "whisper-1", "cost": 0.002})
        outcome = vp.retry("full_pipeline", artifact_id, requested_by="staff-1").get(timeout=30)

Nothing here imports the worker, the models or the database driver: a producer
service installs voicepipe (or copies this file and voicepipe/domain.py, whose
stage names it uses) beside Celery. The arguments are
those of contract/tasks/*.schema.json; the worker validates them again and refuses
bad ones with InvalidInput (stored as the task's error when results are kept).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from celery import Celery
from celery.result import AsyncResult

from voicepipe.domain import RETRY_STAGES

# The public task names and their queues: worker/routes.py's TASK_QUEUES, copied so that
# a producer needs no worker import (tests/unit/test_task_schemas.py pins them equal).
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
    "voicepipe.events.record": "events",
    "voicepipe.usage.record": "events",
    "voicepipe.directory.upsert_organization": "pipeline",
    "voicepipe.directory.upsert_user": "pipeline",
    "voicepipe.events.record_batch": "pipeline",
    "voicepipe.usage.record_batch": "pipeline",
    "voicepipe.alerts.evaluate": "metrics",
}



class Producer:
    """Sends voicepipe tasks by name to their queues (JSON only).

    Every send returns an AsyncResult. Recording tasks keep no return value, but a refusal
    (InvalidInput naming the field) is stored, so ``.get()`` raises it; retries keep their
    outcome too.

    ``result_backend``: where the worker stores outcomes (with Redis, the broker itself,
    the default; with RabbitMQ, the workers' ``db+postgresql://...`` if you read results).

    ``signing_secret``: the platform's VOICEPIPE_DIRECTORY_SECRET. With it, ``retry`` and
    ``upsert_user`` are signed here (fresh issue time, new nonce), and their signature and
    email are left out of what Flower shows; without it they are sent unsigned (a worker
    then refuses staff grants, and retries unless VOICEPIPE_UNSIGNED_RETRIES=1).
    """

    def __init__(self, broker_url: str, *, result_backend: str | None = None, timeout_s: float = 5.0,
                 signing_secret: str | None = None) -> None:
        self.signing_secret = signing_secret
        amqp = broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))
        backend = result_backend or (None if amqp else broker_url)
        self.app = Celery("voicepipe-producer", broker=broker_url, backend=backend, set_as_current=False)
        self.app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            result_accept_content=["json"],
            broker_connection_timeout=timeout_s,
            broker_transport_options={"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
                                      **({"confirm_publish": True} if amqp else {})},
        )

    def send(self, task: str, kwargs: Mapping[str, Any] | None = None, **options: Any) -> AsyncResult:
        """Send any public task by name to its queue; an unknown name is refused here."""
        if task not in TASK_QUEUES:
            raise ValueError(f"not a public voicepipe task: {task!r}")
        return self.app.send_task(task, kwargs=dict(kwargs or {}), queue=TASK_QUEUES[task], **options)

    def send_event(self, event: Mapping[str, Any]) -> AsyncResult:
        """One pipeline event (contract/tasks/voicepipe.events.record.schema.json)."""
        return self.send("voicepipe.events.record", event)

    def send_events(self, events: Sequence[Mapping[str, Any]]) -> AsyncResult:
        """A batch of events, recorded in one transaction (all or none)."""
        return self.send("voicepipe.events.record_batch", {"events": [dict(e) for e in events]})

    def send_usage(self, call: Mapping[str, Any]) -> AsyncResult:
        """One AI call (contract/tasks/voicepipe.usage.record.schema.json)."""
        return self.send("voicepipe.usage.record", call)

    def send_usage_batch(self, calls: Sequence[Mapping[str, Any]]) -> AsyncResult:
        """A batch of AI calls, recorded in one transaction (all or none)."""
        return self.send("voicepipe.usage.record_batch", {"records": [dict(c) for c in calls]})

    def retry(self, stage: str, artifact_id: str, *, requested_by: str, reason: str | None = None,
              request_id: str | None = None) -> AsyncResult:
        """Ask for a retry of STAGE (one of RETRY_STAGES) as platform staff; the result is the
        outcome or the named refusal. An unknown stage is a ValueError here: it has no task."""
        if stage not in RETRY_STAGES:
            raise ValueError(f"unknown retry stage {stage!r}; one of {', '.join(RETRY_STAGES)}")
        kwargs: dict[str, Any] = {"artifact_id": artifact_id, "requested_by": requested_by}
        if reason is not None:
            kwargs["reason"] = reason
        if request_id is not None:
            kwargs["request_id"] = request_id
        return self._send_signed(f"voicepipe.retry.{stage}", kwargs)

    def upsert_user(self, user_id: str, *, email: str, is_platform_staff: bool) -> AsyncResult:
        """The directory sync: create or update a user; the staff flag counts only when signed."""
        return self._send_signed("voicepipe.directory.upsert_user",
                                 {"id": user_id, "email": email, "is_platform_staff": is_platform_staff})

    def _send_signed(self, task: str, kwargs: dict[str, Any]) -> AsyncResult:
        from datetime import UTC, datetime

        from voicepipe.authority import REDACTED_FIELDS, redact, sign

        if self.signing_secret is None:
            return self.send(task, kwargs)
        signed = sign(task, kwargs, self.signing_secret, now=datetime.now(UTC))
        # What task events (Flower) show of it: no signature, no email.
        return self.send(task, signed, kwargsrepr=repr(redact(signed, REDACTED_FIELDS)))

    def close(self) -> None:
        self.app.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
