"""Organizations and users as the platform reports them (staff flag included)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models.directory import Organization, User
from voicepipe.validation import check_bool, check_id, check_text


def upsert_organization(session: Session, *, id: Any, name: Any) -> None:
    org_id = check_id(id, "id")
    org_name = check_text(name, "name", max_len=10_000)
    stmt = pg_insert(Organization).values(id=org_id, name=org_name)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Organization.id], set_={"name": stmt.excluded.name, "updated_at": func.now()}
        )
    )


def upsert_user(session: Session, *, id: Any, email: Any, is_platform_staff: Any) -> None:
    user_id = check_id(id, "id")
    user_email = check_text(email, "email", max_len=10_000)
    staff = check_bool(is_platform_staff, "is_platform_staff")
    stmt = pg_insert(User).values(id=user_id, email=user_email, is_platform_staff=staff)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[User.id],
            set_={
                "email": stmt.excluded.email,
                "is_platform_staff": stmt.excluded.is_platform_staff,
                "updated_at": func.now(),
            },
        )
    )
