"""Keeping organizations and users (with the platform-staff flag) current."""

from __future__ import annotations

from typing import Any

from models.session import session_scope
from tasks._base import public_task, take
from voicepipe import directory
from voicepipe.settings import get_settings


@public_task("voicepipe.directory.upsert_organization", time_limit=60, parks=True)
def upsert_organization(**kwargs: Any) -> None:
    """Create or rename an organization."""
    args = take(kwargs, required=("id", "name"))
    with session_scope() as session:
        directory.upsert_organization(session, id=args["id"], name=args["name"])


@public_task("voicepipe.directory.upsert_user", time_limit=60, parks=True)
def upsert_user(**kwargs: Any) -> None:
    """Create or update a user; its platform-staff flag only from a signed message."""
    args = take(kwargs, required=("id", "email", "is_platform_staff"), optional=("signature",))
    with session_scope() as session:
        directory.upsert_user(
            session, id=args["id"], email=args["email"], is_platform_staff=args["is_platform_staff"],
            signature=args.get("signature"), secret=get_settings().directory_secret,
        )
