"""The pipeline's own event ids cannot be computed, and sent first, by a producer.

Before migration 0008 they were uuid5 of a namespace written in the source: knowing an
artifact id was enough to pre-send a retry's events and suppress the real ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from celery import Celery
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from models import PipelineEvent
from tests.support.helpers import Proc, admin_execute, wait_for, with_database
from tests.support.pipeline import add_artifact, add_user
from voicepipe.migrate import upgrade
from voicepipe.retry.service import request_retry

# The namespace the source carried before migration 0008: public, so any producer had it.
PUBLIC_NAMESPACE = uuid.UUID("5b8e7f52-3f7a-4c1e-9d55-2f0f6f1f8a10")


def namespace(session: Session) -> str:
    return str(session.execute(text("SELECT value FROM deployment_secrets WHERE name = 'event_id_namespace'"))
               .scalar_one())


def test_each_deployment_draws_its_own_namespace(session: Session, pg_admin_url: str) -> None:
    other = f"vp_other_{uuid.uuid4().hex[:10]}"
    admin_execute(pg_admin_url, f'CREATE DATABASE "{other}"')
    try:
        from sqlalchemy import create_engine

        engine = create_engine(upgrade_and_url(pg_admin_url, other))
        with Session(engine) as other_session:
            theirs = namespace(other_session)
        engine.dispose()
    finally:
        admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')
    ours = namespace(session)
    assert uuid.UUID(ours) != uuid.UUID(theirs)
    assert PUBLIC_NAMESPACE not in (uuid.UUID(ours), uuid.UUID(theirs))


def upgrade_and_url(admin_url: str, name: str) -> str:
    url = with_database(admin_url, name)
    upgrade(url)
    return url


def test_events_sent_first_with_the_public_namespace_ids_do_not_suppress_a_retrys_events(
    start_worker: Callable[..., Proc], client: Celery, session: Session
) -> None:
    add_user(session, "staff-1")
    art = add_artifact(session, organization_id="org-1")
    # A producer of org-1 sends first the ids the retry would have used (attempt 1).
    squats = [str(uuid.uuid5(PUBLIC_NAMESPACE, f"{art}|retry|1"))]
    start_worker(queues="events")
    for squat in squats:
        client.send_task("voicepipe.events.record", queue="events", kwargs={
            "event_id": squat, "event_type": "artifact_received", "organization_id": "org-1",
            "occurred_at": datetime.now(UTC).isoformat()})

    def stored_squats() -> bool:
        session.rollback()
        return len(session.scalars(select(PipelineEvent.id).where(
            PipelineEvent.id.in_([uuid.UUID(s) for s in squats]))).all()) == len(squats)

    wait_for(stored_squats, timeout=30, what="the squatting events stored")
    outcome = request_retry(session, stage="transcription", artifact_id=art, requested_by="staff-1")
    session.commit()
    assert outcome.attempt == 1
    initiated = session.scalars(select(PipelineEvent).where(
        PipelineEvent.artifact_id == art, PipelineEvent.event_type == "retry_initiated")).all()
    assert len(initiated) == 1 and str(initiated[0].id) not in squats
