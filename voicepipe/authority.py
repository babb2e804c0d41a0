"""Signed, fresh, single-use authority: what the platform signs for the directory sync and retries.

A message that carries authority (a user's staff flag, a retry in a staff member's name)
is signed by the platform: HMAC-SHA256 (hex) with VOICEPIPE_DIRECTORY_SECRET over the
canonical JSON of its arguments without `signature`, plus `"task": <task name>` (so a
signature for one task is worth nothing for another). Its `issued_at` must be within
VOICEPIPE_SIGNATURE_MAX_AGE_SECONDS of now (and not ahead by more than the clock skew),
and its `nonce` is used once: a re-sent, replayed or parked-then-replayed message is
refused by name, whatever it says.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from voicepipe.errors import InvalidInput, PermissionDenied
from voicepipe.validation import check_id, check_timestamp

SIGNATURE_FIELDS = ("issued_at", "nonce", "signature")
MIN_NONCE = 16
# Arguments Flower and dead letters never show (signed authority, personal data).
REDACTED_FIELDS = ("signature", "email")


@functools.cache
def signed_tasks() -> frozenset[str]:
    """The tasks that carry signed authority: the directory sync of users and the retries."""
    from voicepipe.retry.service import RETRY_STAGES

    return frozenset({"voicepipe.directory.upsert_user", *(f"voicepipe.retry.{stage}" for stage in RETRY_STAGES)})


def canonical(task_name: str, kwargs: Mapping[str, Any]) -> str:
    """The signed text: the arguments but the signature, plus the task's name; keys sorted, no spaces,
    non-ASCII escaped as \\uXXXX (Python's json.dumps defaults), UTF-8."""
    fields = {k: v for k, v in kwargs.items() if k != "signature"}
    return json.dumps({**fields, "task": task_name}, sort_keys=True, separators=(",", ":"))


def signature_of(task_name: str, kwargs: Mapping[str, Any], secret: str) -> str:
    return hmac.new(secret.encode(), canonical(task_name, kwargs).encode(), hashlib.sha256).hexdigest()


def sign(task_name: str, kwargs: Mapping[str, Any], secret: str, *, now: datetime) -> dict[str, Any]:
    """The arguments with a fresh issue time, a new nonce and their signature: what the platform sends."""
    signed = {**kwargs, "issued_at": now.isoformat(), "nonce": secrets.token_hex(16)}
    signed["signature"] = signature_of(task_name, signed, secret)
    return signed


def verify(session: Session, task_name: str, kwargs: Mapping[str, Any], secret: str, *, now: datetime,
           max_age_s: int, skew_s: int) -> datetime:
    """Check the signature, the freshness and the single use of a message; its issue time.

    The nonce is taken in the caller's transaction: if the message's work is refused or
    fails after this, the nonce is free again with it (nothing took effect).
    """
    signature = kwargs.get("signature")
    if signature is None:
        raise PermissionDenied(f"signature: {task_name} must be signed by the platform (VOICEPIPE_DIRECTORY_SECRET)")
    if not isinstance(signature, str):
        raise InvalidInput.field("signature", f"expected a hex string, got {type(signature).__name__}")
    if not hmac.compare_digest(signature.strip().lower().encode(), signature_of(task_name, kwargs, secret).encode()):
        raise PermissionDenied("signature: does not match the message (HMAC-SHA256 with VOICEPIPE_DIRECTORY_SECRET)")
    issued_at = check_timestamp(kwargs.get("issued_at"), "issued_at")
    if issued_at < now - timedelta(seconds=max_age_s):
        raise PermissionDenied(f"issued_at: signed at {issued_at.isoformat()}, more than {max_age_s} s ago: stale "
                               "(VOICEPIPE_SIGNATURE_MAX_AGE_SECONDS); the platform must sign it again")
    if issued_at > now + timedelta(seconds=skew_s):
        raise PermissionDenied(f"issued_at: {issued_at.isoformat()} is in the future")
    nonce = check_id(kwargs.get("nonce"), "nonce")
    assert nonce is not None
    if len(nonce) < MIN_NONCE:
        raise InvalidInput.field("nonce", f"at least {MIN_NONCE} characters")
    taken = session.execute(
        text("INSERT INTO used_nonces (nonce, task_name) VALUES (:n, :t) ON CONFLICT DO NOTHING RETURNING 1"),
        {"n": nonce, "t": task_name}).first()
    if taken is None:
        raise PermissionDenied("nonce: already used: a signed message is accepted once (a replay is refused)")
    return issued_at


def redact(kwargs: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The arguments with those fields' values replaced, for what operators see (Flower, dead letters)."""
    return {k: ("[redacted]" if k in fields else v) for k, v in kwargs.items()}
