"""Retries from the dashboard: platform staff only, CSRF-checked, sent as the retry task a producer sends.

The page sends `voicepipe.retry.<stage>` with `requested_by` the signed-in operator, so every
guard, event and audit row is the retry service's own; what is checked here first (staff,
the token, a retryable artifact) only spares a doomed message and answers at once.
"""

from __future__ import annotations

import functools
import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from models.artifacts import Artifact
from models.directory import User
from voicepipe.dashboard import data
from voicepipe.dashboard.auth import csrf_ok, operator
from voicepipe.domain import RETRY_STAGES, WORKING_STATUSES
from voicepipe.errors import ArtifactNotFound, InvalidInput, PermissionDenied, RetryNotAllowed
from voicepipe.settings import get_settings
from voicepipe.validation import check_text, check_uuid

MAX_FORM = 8192


class CsrfRefused(PermissionDenied):
    """A form without the token the page gave, or with another one."""


def is_staff(session: Session, user: str) -> bool:
    return bool(session.scalar(select(User.is_platform_staff).where(User.id == user)))


def retryable(art: Artifact, now: datetime) -> bool:
    """Failed, or stalled in a working status (the retry service's own rule)."""
    stalled = art.status in WORKING_STATUSES and art.updated_at < now - timedelta(
        seconds=get_settings().stall_timeout_seconds)
    return art.status == "failed" or stalled


@functools.cache
def _producer() -> Any:
    from voicepipe.client import Producer

    settings = get_settings()
    if settings.broker_url is None:
        raise InvalidInput.field("BROKER_URL", "the dashboard sends retries through the broker: set BROKER_URL")
    return Producer(settings.broker_url, signing_secret=settings.directory_secret)


async def checked_form(request: Request) -> tuple[str, dict[str, str]]:
    """(operator, form fields) of a POST whose CSRF token is the operator's; CsrfRefused otherwise."""
    user = operator(request)
    body = await request.body()
    if len(body) > MAX_FORM:
        raise InvalidInput.field("form", f"at most {MAX_FORM} bytes")
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    if not csrf_ok(user, form.get("csrf")):
        raise CsrfRefused("the form's CSRF token is missing or is not this operator's: reload the page and retry")
    return user, form


async def retry_action(request: Request) -> Response:
    """POST /artifacts/{id}/retry (stage, reason, csrf): 303 to the artifact page once sent."""
    user, form = await checked_form(request)
    art_id = check_uuid(request.path_params["artifact_id"], "artifact_id")
    stage = form.get("stage")
    if stage not in RETRY_STAGES:
        raise InvalidInput.field("stage", f"expected one of {', '.join(RETRY_STAGES)}, got {str(stage)[:32]!r}")
    reason = check_text(form.get("reason") or "retried from the dashboard", "reason", max_len=2000)

    def check(s: Session, now: datetime) -> None:
        if not is_staff(s, user):
            raise PermissionDenied(f"{user} is not platform staff: only platform staff may retry artifacts")
        art = s.get(Artifact, art_id)
        if art is None:
            raise ArtifactNotFound(f"artifact {art_id} not found")
        if not retryable(art, now):
            raise RetryNotAllowed(f"artifact {art_id} is {art.status}: only failed or stalled artifacts are retried")

    data.read(check)
    result = _producer().retry(stage, str(art_id), requested_by=user, reason=reason,
                               request_id=f"dashboard-{uuid.uuid4()}")
    return RedirectResponse(f"/artifacts/{art_id}?sent={result.id}", status_code=303)


def bulk_selection(session: Session, filters: dict[str, Any]) -> list[Any]:
    """The artifacts the page's bulk form would retry: failed at the list's stage in its time range."""
    from voicepipe.retry.bulk import BulkRequest, select_failed

    bulk = BulkRequest.parse(filters["stage"], filters["since"], filters["until"], filters["organization"])
    return select_failed(session, bulk)


# Bulk retries sent from the page: at most this many a second, by a thread of the dashboard.
BULK_RATE = 20.0


async def bulk_action(request: Request) -> Response:
    """POST /artifacts/retry-failed (stage, since, until, organization, csrf): every artifact failed at
    the stage in the range gets its own retry, with the request ids `voicepipe retry --failed-at` gives
    (the same request from the page or the command retries each artifact once)."""
    import threading
    import time
    from urllib.parse import urlencode

    from voicepipe.retry.bulk import BulkRequest, select_failed

    user, form = await checked_form(request)
    bulk = BulkRequest.parse(form.get("stage"), form.get("since"), form.get("until") or None,
                             form.get("organization") or None)

    def select(s: Session, now: datetime) -> list[uuid.UUID]:
        if not is_staff(s, user):
            raise PermissionDenied(f"{user} is not platform staff: only platform staff may retry artifacts")
        return [art.id for art in select_failed(s, bulk)]

    ids = data.read(select)
    producer = _producer()

    def send() -> None:
        for art_id in ids:
            producer.retry(bulk.stage, str(art_id), requested_by=user, reason="bulk retry from the dashboard",
                           request_id=bulk.request_id(user, art_id))
            time.sleep(1.0 / BULK_RATE)

    threading.Thread(target=send, name="dashboard-bulk-retry", daemon=True).start()
    back = {"status": "failed", "stage": bulk.stage, "since": bulk.since.isoformat(), "until": bulk.until.isoformat(),
            "bulk_sent": str(len(ids))}
    if bulk.organization_id:
        back["organization"] = bulk.organization_id
    return RedirectResponse(f"/artifacts?{urlencode(back)}", status_code=303)
