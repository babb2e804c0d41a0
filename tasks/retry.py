"""The retry tasks for platform staff: one per stage, plus the full pipeline."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from models.session import session_scope
from voicepipe.authority import SIGNATURE_FIELDS, verify
from voicepipe.clock import utcnow
from voicepipe.errors import REFUSALS, PermissionDenied
from voicepipe.retry.refusals import record_refusal
from voicepipe.retry.service import RETRY_STAGES, request_retry
from voicepipe.settings import get_settings
from worker.declare import public_task, sent

log = logging.getLogger(__name__)


def _retry(stage: str, args: dict[str, Any]) -> dict[str, Any]:
    try:
        with session_scope() as session:
            _check_authority(session, f"voicepipe.retry.{stage}", args)
            retry = {k: v for k, v in args.items() if k not in SIGNATURE_FIELDS}
            outcome = request_retry(session, stage=stage, **retry)
    except REFUSALS as exc:
        # A refusal is an answer, not an incident: logged with who asked and why, then
        # raised as the named error for the caller (never retried, see worker/declare.py).
        log.warning(
            "retry refused stage=%s artifact_id=%s requested_by=%s reason=%r request_id=%s refusal=%s: %s",
            stage, args.get("artifact_id"), args.get("requested_by"), args.get("reason"),
            args.get("request_id"), type(exc).__name__, exc,
        )
        _record_refusal(stage, args, exc)
        raise
    return outcome.to_json()


def _check_authority(session: Any, task_name: str, args: dict[str, Any]) -> None:
    """requested_by counts only when the platform signed the request (voicepipe/authority.py).

    VOICEPIPE_UNSIGNED_RETRIES=1 (a closed deployment's choice) trusts an unsigned one as before.
    """
    settings = get_settings()
    if "signature" not in args and settings.unsigned_retries:
        return
    if settings.directory_secret is None:
        raise PermissionDenied(
            "signature: retries must be signed by the platform, and VOICEPIPE_DIRECTORY_SECRET is not "
            "configured (a closed deployment may set VOICEPIPE_UNSIGNED_RETRIES=1)")
    verify(session, task_name, args, settings.directory_secret, now=utcnow(),
           max_age_s=settings.signature_max_age_seconds, skew_s=settings.max_clock_skew_seconds)


def _record_refusal(stage: str, args: dict[str, Any], exc: Exception) -> None:
    """Keep the refusal for `voicepipe retry-history`, in a transaction of its own."""
    try:
        with session_scope() as session:
            record_refusal(session, stage=stage, kwargs=args, error=exc)
    except Exception:  # whatever stops the record, the caller still gets the named refusal
        # Only the record is lost (the log line above has who, what and why).
        log.exception("could not record the refused retry stage=%s artifact_id=%s", stage, args.get("artifact_id"))


def _declare(stage: str) -> Task:
    def retry(
        *, artifact_id: str, requested_by: str, reason: str | None = None, request_id: str | None = None,
        issued_at: str | None = None, nonce: str | None = None, signature: str | None = None,
    ) -> dict[str, Any]:
        return _retry(stage, sent())  # as sent: the signature covers exactly what the producer gave

    retry.__name__ = retry.__qualname__ = stage
    retry.__doc__ = f"Retry an artifact's {stage.replace('_', ' ')} (platform staff only)."
    # The caller reads the outcome (or the named refusal), so results are kept. No
    # STARTED state: a retry runs for milliseconds, and storing it cost two round trips
    # to the result store before the retry's own work (docs/benchmarks.md).
    return public_task(f"voicepipe.retry.{stage}", time_limit=60, ignore_result=False, parks=True,
                       track_started=False)(retry)


# One task per stage a retry may ask for: voicepipe.retry.transcription ... .full_pipeline.
RETRY_TASKS: dict[str, Task] = {stage: _declare(stage) for stage in RETRY_STAGES}
