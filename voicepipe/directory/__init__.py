"""Organizations and users as the platform reports them (staff flag included)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.directory import Organization, User
from voicepipe.directory.staff import PATH_DIRECTORY_SYNC, name_the_change
from voicepipe.errors import InvalidInput, PermissionDenied
from voicepipe.validation import check_bool, check_id, check_text

UPSERT_USER = "voicepipe.directory.upsert_user"


def upsert_organization(session: Session, *, id: Any, name: Any) -> None:
    org_id = check_id(id, "id")
    org_name = check_text(name, "name", max_len=10_000)
    stmt = pg_insert(Organization).values(id=org_id, name=org_name)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Organization.id], set_={"name": stmt.excluded.name, "updated_at": func.now()}
        )
    )


def upsert_user(
    session: Session, *, id: Any, email: Any, is_platform_staff: Any, signature: Any = None,
    issued_at: Any = None, nonce: Any = None, secret: str | None = None,
) -> None:
    """Create or update a user as the platform's directory sync reports it.

    With a secret (VOICEPIPE_DIRECTORY_SECRET) the message must be signed, fresh and used
    once (voicepipe/authority.py), and no older than the user's last decision (an earlier
    signed message or an operator's change): then it sets the staff flag (audited, path
    directory_sync). Without one, no message can change staff status: a message asking for
    staff is refused, any other creates the user as non-staff or updates the email and
    leaves the flag as it is.
    """
    from voicepipe.authority import verify
    from voicepipe.clock import utcnow
    from voicepipe.settings import get_settings

    user_id = check_id(id, "id")
    user_email = check_text(email, "email", max_len=10_000)
    staff = check_bool(is_platform_staff, "is_platform_staff")
    if signature is not None and not isinstance(signature, str):
        raise InvalidInput.field("signature", f"expected a hex string, got {type(signature).__name__}")
    decided: Any = None
    if secret is not None:
        settings = get_settings()
        fields = {"id": id, "email": email, "is_platform_staff": is_platform_staff, "issued_at": issued_at,
                  "nonce": nonce, "signature": signature}
        decided = verify(session, UPSERT_USER, fields, secret, now=utcnow(),
                         max_age_s=settings.signature_max_age_seconds, skew_s=settings.max_clock_skew_seconds)
        last = session.execute(select(User.staff_decided_at).where(User.id == user_id).with_for_update()).scalar()
        if last is not None and decided < last:
            raise PermissionDenied(f"issued_at: {decided.isoformat()} is older than this user's last decision "
                                   f"({last.isoformat()}): out of order, refused")
    elif staff:
        raise PermissionDenied(
            "is_platform_staff: an unauthenticated message cannot grant platform staff "
            "(VOICEPIPE_DIRECTORY_SECRET is not configured; operators use `voicepipe staff grant`)"
        )
    elif signature is not None:
        raise PermissionDenied("signature: cannot be checked, VOICEPIPE_DIRECTORY_SECRET is not configured")
    stmt = pg_insert(User).values(id=user_id, email=user_email, is_platform_staff=staff, staff_decided_at=decided)
    updates: dict[str, Any] = {"email": stmt.excluded.email, "updated_at": func.now()}
    if secret is not None:
        name_the_change(session, by="directory_sync", path=PATH_DIRECTORY_SYNC, reason=None)
        updates["is_platform_staff"] = stmt.excluded.is_platform_staff
        updates["staff_decided_at"] = stmt.excluded.staff_decided_at
    session.execute(stmt.on_conflict_do_update(index_elements=[User.id], set_=updates))
