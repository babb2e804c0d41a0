"""Keeping organizations and users (with the platform-staff flag) current."""

from __future__ import annotations

import logging
from typing import Any

from models.security import SignatureRefusal
from models.session import session_scope
from voicepipe import directory
from voicepipe.errors import PermissionDenied
from voicepipe.settings import get_settings
from worker.declare import public_task, sent

log = logging.getLogger(__name__)


@public_task("voicepipe.directory.upsert_organization", time_limit=60, parks=True)
def upsert_organization(*, id: str, name: str) -> None:
    """Create or rename an organization."""
    with session_scope() as session:
        directory.upsert_organization(session, id=id, name=name)


@public_task("voicepipe.directory.upsert_user", time_limit=60, parks=True)
def upsert_user(
    *, id: str, email: str, is_platform_staff: bool, issued_at: str | None = None, nonce: str | None = None,
    signature: str | None = None,
) -> None:
    """Create or update a user; its platform-staff flag only from a signed, fresh, unused message."""
    try:
        with session_scope() as session:
            # As sent: the signature covers exactly the arguments the producer gave.
            directory.upsert_user(session, **sent(), secret=get_settings().directory_secret)
    except PermissionDenied as exc:
        log.warning("upsert_user refused id=%r: %s", id, exc)
        _record_refusal(id, exc)
        raise


def _record_refusal(subject: Any, exc: Exception) -> None:
    """Keep the refusal in signature_refusals, in a transaction of its own (the task's rolled back)."""
    try:
        with session_scope() as session:
            session.add(SignatureRefusal(task_name=directory.UPSERT_USER, subject=str(subject)[:255],
                                         refusal=type(exc).__name__, message=str(exc)[:2000]))
    except Exception:  # the caller still gets the named refusal; the log line has it
        log.exception("could not record the refused upsert_user")
