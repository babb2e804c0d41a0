"""Factories and probes shared by the pipeline, retry and recovery tests (no mocks)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from models import Artifact, Claim, EntityResolution, InsightDraft, PipelineEvent, Transcript, User

# Fast stages for tests: a 20 s transcription takes ~20 ms.
FAST = {"VOICEPIPE_SIMULATOR_TIME_SCALE": "0.001"}
DERIVED = (Transcript, Claim, EntityResolution, InsightDraft)


def fresh(session: Session) -> Session:
    session.rollback()  # a new snapshot: see what workers committed since
    return session


def add_user(session: Session, user_id: str = "staff-1", *, staff: bool = True) -> str:
    session.add(User(id=user_id, email=f"{user_id}@example.com", is_platform_staff=staff))
    session.commit()
    return user_id


def add_artifact(
    session: Session,
    *,
    status: str = "failed",
    failed_stage: str | None = "transcription",
    current_stage: str | None = None,
    retry_attempt: int = 0,
    updated_at: datetime | None = None,
    organization_id: str = "org-1",
    source_channel: str = "whatsapp_audio",
) -> uuid.UUID:
    now = datetime.now(UTC)
    art = Artifact(
        organization_id=organization_id, coach_id="coach-1", source_channel=source_channel,
        status=status, failed_stage=failed_stage if status == "failed" else None,
        error_code="PROVIDER_TIMEOUT" if status == "failed" else None,
        current_stage=current_stage, metadata_={"retryAttempt": retry_attempt},
        created_at=now, updated_at=updated_at or now,
    )
    session.add(art)
    session.commit()
    return art.id


def ingest(client: Celery, artifact_id: uuid.UUID | None = None, **kwargs: Any) -> uuid.UUID:
    art_id = artifact_id or uuid.uuid4()
    client.send_task("voicepipe.pipeline.ingest", queue="pipeline", kwargs={
        "organization_id": "org-1", "coach_id": "coach-1", "source_channel": "whatsapp_audio",
        "artifact_id": str(art_id), **kwargs})
    return art_id


def artifact(session: Session, art_id: uuid.UUID) -> Artifact:
    fresh(session)
    art = session.get(Artifact, art_id, populate_existing=True)
    assert art is not None
    return art


def status_of(session: Session, art_id: uuid.UUID) -> str | None:
    """The artifact's status, or None before it exists (ingest still queued)."""
    fresh(session)
    art = session.get(Artifact, art_id, populate_existing=True)
    return art.status if art else None


def events(session: Session, art_id: uuid.UUID) -> list[PipelineEvent]:
    fresh(session)
    return list(session.scalars(
        select(PipelineEvent).where(PipelineEvent.artifact_id == art_id)
        .order_by(PipelineEvent.occurred_at, PipelineEvent.event_type)
    ))


def event_types(session: Session, art_id: uuid.UUID) -> list[str]:
    return [e.event_type for e in events(session, art_id)]


def row_ids(session: Session, model: Any, art_id: uuid.UUID) -> set[uuid.UUID]:
    fresh(session)
    return set(session.scalars(select(model.id).where(model.artifact_id == art_id)))


def count(session: Session, model: type, *where: Any) -> int:
    fresh(session)
    return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


# The record of refused requests (who asked, why refused): written on purpose when a
# retry is refused, so it is not part of "the state a refusal must not change".
REFUSAL_RECORDS = ("retry_refusals",)
# With RabbitMQ the workers store task results, refusals included, in the database
# (Celery's tables, worker/config.py): the answer to the caller, not state it changed.
RESULT_TABLES = ("celery_taskmeta", "celery_tasksetmeta")


def snapshot(engine: Engine) -> dict[str, str]:
    """A digest of every row of every table but REFUSAL_RECORDS: equal snapshots mean no row changed."""
    with engine.connect() as conn:
        tables = [t for t in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")).scalars().all()
            if t not in REFUSAL_RECORDS + RESULT_TABLES]
        return {
            t: conn.execute(text(
                f'SELECT count(*)::text || \':\' || coalesce(md5(string_agg(r::text, \',\' ORDER BY r::text)), \'\') '
                f'FROM "{t}" r')).scalar_one()
            for t in tables
        }
