"""Signed, fresh, single-use authority: staff grants and retries, against real workers.

The workers here run as deployed: a signing secret, and retries trusted only when signed
(VOICEPIPE_UNSIGNED_RETRIES=0). Every message a platform would send is signed by
voicepipe.client.Producer; the attacker's messages are what a producer without the secret
can send, or replay.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from models import PipelineEvent, User
from tests.support.helpers import REPO_ROOT, Proc, service_env, wait_for
from tests.support.pipeline import FAST, add_artifact, add_user, fresh
from voicepipe.authority import sign
from voicepipe.client import Producer
from worker.deadletters import park

SECRET = "platform-signing-test-secret"
SIGNED = {"VOICEPIPE_DIRECTORY_SECRET": SECRET, "VOICEPIPE_UNSIGNED_RETRIES": "0"}
UPSERT = "voicepipe.directory.upsert_user"


def outcome(result: Any) -> Any:
    try:
        return result.get(timeout=30)
    except Exception as exc:
        return exc


def refused(result: Any, *words: str) -> str:
    error = outcome(result)
    assert type(error).__name__ == "PermissionDenied", error
    for word in words:
        assert word in str(error), (word, str(error))
    return str(error)


def is_staff(session: Session, user: str) -> bool | None:
    fresh(session)
    found = session.get(User, user)
    return None if found is None else found.is_platform_staff


def signature_refusals(session: Session) -> list[str]:
    fresh(session)
    return [r[0] for r in session.execute(text("SELECT message FROM signature_refusals ORDER BY id"))]


def voicepipe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicepipe.cli", *args], check=False, env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_a_grant_cannot_be_replayed_reordered_or_resurrected_after_a_revoke(
    start_worker: Callable[..., Proc], client: Celery, session: Session, broker_url: str, db_url: str,
    service_data_dir: Path,
) -> None:
    start_worker(queues="pipeline", **SIGNED)
    platform = Producer(broker_url, signing_secret=SECRET)
    try:
        early = sign(UPSERT, {"id": "erin", "email": "erin@example.com", "is_platform_staff": True}, SECRET,
                     now=datetime.now(UTC) - timedelta(minutes=2))
        platform.upsert_user("erin", email="erin@example.com", is_platform_staff=True)  # keeps no result
        wait_for(lambda: is_staff(session, "erin") is True, timeout=30, what="the platform's grant applied")
        env = service_env(db_url, broker_url, service_data_dir, **SIGNED)
        revoked = voicepipe(env, "staff", "revoke", "erin", "--by", "ops-1", "--reason", "left the company")
        assert revoked.returncode == 0, revoked.stderr
        assert is_staff(session, "erin") is False

        # The captured grant, sent again as it was: its nonce is spent.
        captured = sign(UPSERT, {"id": "erin", "email": "erin@example.com", "is_platform_staff": True}, SECRET,
                        now=datetime.now(UTC))
        assert outcome(client.send_task(UPSERT, queue="pipeline", kwargs=captured, ignore_result=False)) is None
        refused(client.send_task(UPSERT, queue="pipeline", kwargs=captured, ignore_result=False), "nonce",
                "already used")
        assert is_staff(session, "erin") is True  # the fresh grant applied once ...
        assert voicepipe(env, "staff", "revoke", "erin", "--by", "ops-1", "--reason", "again").returncode == 0
        # ... a grant signed before the operator's revoke is out of order, whatever its nonce;
        refused(client.send_task(UPSERT, queue="pipeline", kwargs=early, ignore_result=False), "out of order")
        # a grant signed 20 minutes ago is stale (VOICEPIPE_SIGNATURE_MAX_AGE_SECONDS, 900 s).
        stale = sign(UPSERT, {"id": "erin", "email": "erin@example.com", "is_platform_staff": True}, SECRET,
                     now=datetime.now(UTC) - timedelta(minutes=20))
        refused(client.send_task(UPSERT, queue="pipeline", kwargs=stale, ignore_result=False), "stale")

        # A parked grant, replayed by an operator: its letter keeps no signature, so it is refused.
        letter_grant = sign(UPSERT, {"id": "erin", "email": "erin@example.com", "is_platform_staff": True}, SECRET,
                            now=datetime.now(UTC))
        park(task_name=UPSERT, task_id=str(uuid.uuid4()), queue="pipeline", kwargs=letter_grant,
             reason="retries_exhausted", error="OperationalError: test", attempts=3)
        listed = voicepipe(env, "dead-letters", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert SECRET not in listed.stdout and letter_grant["signature"] not in listed.stdout
        assert "erin@example.com" not in listed.stdout
        replayed = voicepipe(env, "dead-letters", "replay", "--all")
        assert replayed.returncode == 0, replayed.stderr
        fresh(session)
        assert is_staff(session, "erin") is False
    finally:
        platform.close()
    # Every refusal is recorded, by name.
    messages = signature_refusals(session)
    assert any("already used" in m for m in messages) and any("out of order" in m for m in messages)
    assert any("stale" in m for m in messages)


def test_only_a_signed_retry_counts_for_staff_and_each_signature_once(
    start_worker: Callable[..., Proc], client: Celery, session: Session, broker_url: str,
) -> None:
    start_worker(queues="pipeline,retry", **SIGNED, **FAST)
    add_user(session, "staff-1")
    art = add_artifact(session, status="failed", failed_stage="transcription")
    # A producer without the secret claims to be staff-1, three times.
    for _ in range(3):
        refused(client.send_task("voicepipe.retry.full_pipeline", queue="retry", ignore_result=False,
                                 kwargs={"artifact_id": str(art), "requested_by": "staff-1"}), "signature")
    fresh(session)
    assert session.execute(text("SELECT metadata->>'retryAttempt' FROM artifacts WHERE id = :a"),
                           {"a": art}).scalar() == "0"
    assert session.execute(text("SELECT count(*) FROM retry_refusals WHERE artifact_id = :a"),
                           {"a": str(art)}).scalar() == 3
    # The platform's signed request counts; the same message again is a replay.
    platform = Producer(broker_url, signing_secret=SECRET)
    try:
        sent = platform.retry("full_pipeline", str(art), requested_by="staff-1", reason="provider outage")
        answer = outcome(sent)
        assert isinstance(answer, dict) and answer["attempt"] == 1, answer
    finally:
        platform.close()
    signed = sign("voicepipe.retry.full_pipeline", {"artifact_id": str(art), "requested_by": "staff-1"}, SECRET,
                  now=datetime.now(UTC))
    other_task = client.send_task("voicepipe.retry.transcription", queue="retry", ignore_result=False,
                                  kwargs=signed)  # a signature for another task is worth nothing
    refused(other_task, "signature: does not match")
    fresh(session)
    initiated = session.scalar(select(func.count()).select_from(PipelineEvent).where(
        PipelineEvent.artifact_id == art, PipelineEvent.event_type == "retry_initiated"))
    assert initiated == 1


def test_task_events_never_carry_a_signature_or_an_email(
    start_worker: Callable[..., Proc], client: Celery, broker_url: str,
) -> None:
    start_worker(queues="pipeline", **SIGNED)
    received: list[dict[str, Any]] = []
    ready = threading.Event()
    with client.connection_for_read() as conn:
        recv = client.events.Receiver(conn, handlers={"task-received": received.append, "*": lambda e: None})

        def capture() -> None:
            ready.set()
            recv.capture(limit=None, timeout=None, wakeup=False)

        thread = threading.Thread(target=capture, daemon=True)
        thread.start()
        ready.wait(5)
        # A producer that does not redact its own repr (plain send_task); sent again until the
        # receiver, which subscribes as it starts, has seen one.
        sent: list[dict[str, Any]] = []
        for _ in range(10):
            grant = sign(UPSERT, {"id": "frank", "email": "frank@example.com", "is_platform_staff": True}, SECRET,
                         now=datetime.now(UTC))
            sent.append(grant)
            assert outcome(client.send_task(UPSERT, queue="pipeline", kwargs=grant, ignore_result=False)) is None
            if received:
                break
            threading.Event().wait(0.5)
        recv.should_stop = True
    assert received, "no task-received event captured"
    shown = json.dumps(received)
    assert not any(g["signature"] in shown for g in sent) and "frank@example.com" not in shown
    assert "frank" in shown  # the rest of the arguments are still there

