"""Platform-staff status: only a signed directory message or an operator changes it, always audited.

Through real worker processes (the message path) and `voicepipe` subprocesses (the
operator path). Signatures are computed here with hmac directly, as a producer would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import PipelineEvent, StaffAudit, User
from tests.support.helpers import REPO_ROOT, Proc, service_env
from tests.support.pipeline import FAST, add_artifact, add_user, fresh
from voicepipe.authority import sign

SECRET = "directory-test-secret"


def signed(fields: dict[str, Any], secret: str = SECRET) -> dict[str, Any]:
    """What the platform's directory sync sends (voicepipe/authority.py)."""
    return sign("voicepipe.directory.upsert_user", fields, secret, now=datetime.now(UTC))


def upsert(client: Celery, **kwargs: Any) -> Any:
    result = client.send_task("voicepipe.directory.upsert_user", queue="pipeline", kwargs=kwargs,
                              ignore_result=False)
    try:
        result.get(timeout=30)
    except Exception as exc:
        return exc
    return None


def retry(client: Celery, artifact: uuid.UUID, user: str) -> Any:
    result = client.send_task("voicepipe.retry.transcription", queue="retry", ignore_result=False,
                              kwargs={"artifact_id": str(artifact), "requested_by": user, "reason": "test"})
    try:
        return result.get(timeout=30)
    except Exception as exc:
        return exc


def users(session: Session) -> dict[str, tuple[str, bool]]:
    fresh(session)
    return {u.id: (u.email, u.is_platform_staff) for u in session.scalars(select(User))}


def audit(session: Session) -> list[tuple[str, str, str, bool | None, bool, str | None]]:
    fresh(session)
    rows = session.scalars(select(StaffAudit).order_by(StaffAudit.id))
    return [(r.user_id, r.changed_by, r.path, r.old_is_platform_staff, r.new_is_platform_staff, r.reason)
            for r in rows]


def voicepipe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicepipe.cli", *args], check=False, env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_without_the_secret_no_message_grants_staff_and_that_users_retry_stays_refused(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    start_worker(queues="pipeline,retry", **FAST)
    art = add_artifact(session, status="failed", failed_stage="transcription")
    asking = {"id": "mallory", "email": "m@example.org", "is_platform_staff": True}

    for kwargs in (asking, signed(asking)):
        error = upsert(client, **kwargs)
        assert type(error).__name__ == "PermissionDenied", error
    assert users(session) == {}  # nothing created, nothing changed
    refused = retry(client, art, "mallory")
    assert type(refused).__name__ == "PermissionDenied"

    # A message that asks for nothing more than a user record still works, as non-staff,
    # and leaves an existing staff flag alone (only operators change it then).
    add_user(session, "ops-lead")
    assert upsert(client, id="mallory", email="m@example.org", is_platform_staff=False) is None
    assert upsert(client, id="ops-lead", email="new@example.org", is_platform_staff=False) is None
    assert users(session) == {"mallory": ("m@example.org", False), "ops-lead": ("new@example.org", True)}
    assert type(retry(client, art, "mallory")).__name__ == "PermissionDenied"
    # Only the test's own direct insert of a staff user is in the audit (path sql).
    assert [(u, p, old, new) for u, _, p, old, new, _ in audit(session)] == [("ops-lead", "sql", None, True)]


def test_with_the_secret_only_a_correctly_signed_message_sets_staff_and_it_is_audited(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    start_worker(queues="pipeline,retry", VOICEPIPE_DIRECTORY_SECRET=SECRET, **FAST)
    art = add_artifact(session, status="failed", failed_stage="transcription")
    add_user(session, "carol", staff=False)
    before_users, before_audit = users(session), audit(session)
    grant = {"id": "carol", "email": "carol@example.com", "is_platform_staff": True}

    good = signed(grant)
    wrong = [
        grant,  # unsigned
        signed(grant, "another-secret"),
        {**signed({**grant, "is_platform_staff": False}), "is_platform_staff": True},  # signed something else
        {**good, "signature": good["signature"][:-1]},
        {**signed(grant), "id": "dave"},  # replayed for another user
    ]
    for kwargs in wrong:
        error = upsert(client, **kwargs)
        assert type(error).__name__ == "PermissionDenied", (kwargs, error)
        assert "signature" in str(error)
    assert users(session) == before_users and audit(session) == before_audit
    assert type(retry(client, art, "carol")).__name__ == "PermissionDenied"

    assert upsert(client, **good) is None
    assert users(session)["carol"] == ("carol@example.com", True)
    assert audit(session)[len(before_audit):] == [("carol", "directory_sync", "directory_sync", False, True, None)]
    outcome = retry(client, art, "carol")
    assert isinstance(outcome, dict) and outcome["attempt"] == 1, outcome
    fresh(session)
    initiated = session.scalars(select(PipelineEvent).where(
        PipelineEvent.artifact_id == art, PipelineEvent.event_type == "retry_initiated")).all()
    assert [e.metadata_["requestedBy"] for e in initiated] == ["carol"]


def test_operators_grant_and_revoke_staff_from_the_command_line_and_read_the_audit(
    start_worker: Callable[..., Proc], client: Celery, session: Session, db_url: str, broker_url: str,
    tmp_path: Path,
) -> None:
    add_user(session, "erin", staff=False)
    env = service_env(db_url, broker_url, tmp_path)

    granted = voicepipe(env, "staff", "grant", "erin", "--by", "ops-1", "--reason", "on call this week")
    assert granted.returncode == 0, granted.stderr
    assert users(session)["erin"] == ("erin@example.com", True)
    again = voicepipe(env, "staff", "grant", "erin", "--by", "ops-1", "--reason", "twice")
    assert again.returncode == 0 and "nothing changed" in again.stdout
    revoked = voicepipe(env, "staff", "revoke", "erin", "--by", "ops-2", "--reason", "rotation over")
    assert revoked.returncode == 0, revoked.stderr
    assert users(session)["erin"] == ("erin@example.com", False)

    unknown = voicepipe(env, "staff", "grant", "nobody", "--by", "ops-1", "--reason", "x")
    assert unknown.returncode == 1 and "InvalidInput" in unknown.stderr and "nobody" in unknown.stderr
    missing = voicepipe(env, "staff", "grant", "erin", "--by", "ops-1")
    assert missing.returncode == 2 and "--reason" in missing.stderr

    listed = voicepipe(env, "staff", "audit")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert [(e["user_id"], e["changed_by"], e["path"], e["old"], e["new"], e["reason"]) for e in entries] == [
        ("erin", "ops-1", "cli", False, True, "on call this week"),
        ("erin", "ops-2", "cli", True, False, "rotation over"),
    ]
    assert entries[0]["changed_at"] <= entries[1]["changed_at"]
    assert users(session) == {"erin": ("erin@example.com", False)}


@pytest.mark.parametrize("path", ["cli", "sql"])
def test_a_staff_change_by_any_path_is_audited_with_the_database_clock(session: Session, path: str) -> None:
    add_user(session, "frank", staff=False)
    if path == "cli":
        from voicepipe.directory.staff import set_staff

        set_staff(session, "frank", True, by="ops-9", reason="why")
    else:
        session.get(User, "frank").is_platform_staff = True  # type: ignore[union-attr]
    session.commit()
    ((user, by, recorded_path, old, new, _),) = audit(session)
    assert (user, recorded_path, old, new) == ("frank", path, False, True)
    assert by == ("ops-9" if path == "cli" else "postgres")


def test_stored_results_of_directory_tasks_keep_no_email(
    start_worker: Callable[..., Proc], client: Celery, session: Session, broker_url: str
) -> None:
    from tests.support.helpers import redis_client

    start_worker(queues="pipeline")
    email = f"person-{uuid.uuid4().hex[:8]}@example.org"
    refused = client.send_task("voicepipe.directory.upsert_user", queue="pipeline",  # stored: a refusal
                               kwargs={"id": "p1", "email": email, "is_platform_staff": True})
    kept = client.send_task("voicepipe.directory.upsert_user", queue="pipeline", ignore_result=False,
                            kwargs={"id": "p2", "email": email, "is_platform_staff": False})
    with pytest.raises(Exception) as excinfo:
        refused.get(timeout=30)
    assert type(excinfo.value).__name__ == "PermissionDenied"
    assert kept.get(timeout=30) is None
    assert users(session)["p2"] == (email, False)

    store = redis_client(broker_url)
    metas = {key: store.get(key) for key in store.scan_iter("celery-task-meta-*")}
    assert {key.decode().rsplit("-", 5)[0] for key in metas} == {"celery-task-meta"}
    assert len(metas) == 2  # both outcomes are there to read...
    assert all(b"PermissionDenied" in v or b'"SUCCESS"' in v for v in metas.values() if v)
    for key in store.scan_iter("*"):  # ...and nothing Redis keeps holds the email
        kind = store.type(key)
        values = ([store.get(key)] if kind == b"string" else store.lrange(key, 0, -1) if kind == b"list"
                  else list(store.hgetall(key).values()) if kind == b"hash"
                  else list(store.smembers(key)) if kind == b"set"
                  else [m for m, _ in store.zrange(key, 0, -1, withscores=True)] if kind == b"zset" else [])
        assert not any(email.encode() in (v or b"") for v in values), key


def test_simulate_grants_its_staff_user_only_for_the_run_and_revokes_it(
    session: Session, db_url: str, broker_url: str, tmp_path: Path
) -> None:
    env = service_env(db_url, broker_url, tmp_path)
    run = voicepipe(env, "simulate", "--artifacts", "1", "--organizations", "1", "--rate", "50", "--grant-staff")
    assert run.returncode == 0, run.stderr
    assert users(session)["sim-staff"][1] is False  # nothing left behind
    assert [(u, by, p, old, new) for u, by, p, old, new, _ in audit(session)] == [
        ("sim-staff", "voicepipe-simulate", "cli", False, True),
        ("sim-staff", "voicepipe-simulate", "cli", True, False),
    ]
