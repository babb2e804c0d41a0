"""Platform-staff status: who may retry. Changed only by the signed directory sync (voicepipe/directory/,
voicepipe/authority.py) or an operator.

Every change is recorded in staff_audit by a trigger on users (migration 0003); the
writers here name themselves (who, which path, why) in transaction-local settings
the trigger reads, so the record cannot be skipped by a code path that forgets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from models.directory import User
from models.security import StaffAudit
from voicepipe.errors import InvalidInput
from voicepipe.validation import check_id, check_text

PATH_DIRECTORY_SYNC = "directory_sync"
PATH_CLI = "cli"
MAX_REASON = 2000


def name_the_change(session: Session, *, by: str, path: str, reason: str | None) -> None:
    """Tell the audit trigger who changes staff status in this transaction, by which path, why."""
    session.execute(
        text(
            "SELECT set_config('voicepipe.staff_changed_by', :by, true), "
            "set_config('voicepipe.staff_change_path', :path, true), "
            "set_config('voicepipe.staff_change_reason', :reason, true)"
        ),
        {"by": by, "path": path, "reason": reason or ""},
    )


@dataclass(frozen=True)
class StaffChange:
    user_id: str
    old: bool
    new: bool

    @property
    def changed(self) -> bool:
        return self.old != self.new


def set_staff(session: Session, user_id: Any, staff: bool, *, by: Any, reason: Any) -> StaffChange:
    """An operator grants or revokes platform staff (`voicepipe staff grant|revoke`); audited.

    The user must exist (the directory sync creates users); granting twice changes nothing.
    """
    uid = check_id(user_id, "user")
    who = check_id(by, "--by")
    why = check_text(reason, "--reason", max_len=MAX_REASON)
    assert uid is not None and who is not None
    user = session.execute(select(User).where(User.id == uid).with_for_update()).scalar_one_or_none()
    if user is None:
        raise InvalidInput.field("user", f"no user {uid!r} (the directory sync creates users)")
    old = bool(user.is_platform_staff)
    if old != staff:
        name_the_change(session, by=who, path=PATH_CLI, reason=why)
        user.is_platform_staff = staff
        # The operator's decision fences the directory sync's older signed messages.
        user.staff_decided_at = func.now()
        session.flush()
    return StaffChange(uid, old, staff)


@dataclass(frozen=True)
class AuditEntry:
    user_id: str
    changed_at: datetime
    changed_by: str
    path: str
    old: bool | None
    new: bool
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "changed_at": self.changed_at.isoformat(),
            "changed_by": self.changed_by,
            "path": self.path,
            "old": self.old,
            "new": self.new,
            "reason": self.reason,
        }


def staff_audit(session: Session, user_id: str | None = None, limit: int = 1000) -> list[AuditEntry]:
    """The latest changes of staff status, oldest first (optionally one user's)."""
    query = select(StaffAudit).order_by(StaffAudit.changed_at.desc(), StaffAudit.id.desc())
    if user_id is not None:
        query = query.where(StaffAudit.user_id == user_id)
    rows = reversed(session.execute(query.limit(limit)).scalars().all())  # the newest `limit`, oldest first
    return [AuditEntry(r.user_id, r.changed_at, r.changed_by, r.path, r.old_is_platform_staff,
                       r.new_is_platform_staff, r.reason) for r in rows]
