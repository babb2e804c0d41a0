"""Pins the public names (docs/producers.md): producers call these tasks by name."""

from __future__ import annotations

import pytest

from worker import app
from worker.config import LONGEST_TIME_LIMIT_S, VISIBILITY_TIMEOUT_S, celery_config
from worker.routes import QUEUES, TASK_QUEUES

CONTRACT = {
    "voicepipe.metrics.aggregate_hourly_due": "metrics",
    "voicepipe.metrics.aggregate_hour": "metrics",
    "voicepipe.metrics.aggregate_daily_due": "metrics",
    "voicepipe.metrics.aggregate_day": "metrics",
    "voicepipe.usage.aggregate_daily_due": "metrics",
    "voicepipe.usage.aggregate_day": "metrics",
    "voicepipe.maintenance.cleanup": "metrics",
    "voicepipe.maintenance.requeue_stalled": "metrics",
    "voicepipe.pipeline.ingest": "pipeline",
    "voicepipe.pipeline.transcribe": "pipeline",
    "voicepipe.pipeline.extract_claims": "pipeline",
    "voicepipe.pipeline.resolve_entities": "pipeline",
    "voicepipe.pipeline.generate_drafts": "pipeline",
    "voicepipe.retry.transcription": "retry",
    "voicepipe.retry.claims_extraction": "retry",
    "voicepipe.retry.entity_resolution": "retry",
    "voicepipe.retry.draft_generation": "retry",
    "voicepipe.retry.full_pipeline": "retry",
    "voicepipe.events.record": "events",
    "voicepipe.usage.record": "events",
    "voicepipe.directory.upsert_organization": "pipeline",
    "voicepipe.directory.upsert_user": "pipeline",
    "voicepipe.alerts.evaluate": "metrics",
}


@pytest.fixture(scope="module")
def registered() -> dict[str, object]:
    app.loader.import_default_modules()
    for module in app.conf.include if app.configured else ():
        __import__(module)
    from worker.routes import TASK_MODULES

    for module in TASK_MODULES:
        __import__(module)
    return dict(app.tasks)


@pytest.mark.parametrize(("name", "queue"), sorted(CONTRACT.items()))
def test_every_public_task_is_registered_on_its_queue(
    registered: dict[str, object], name: str, queue: str
) -> None:
    task = registered.get(name)
    assert task is not None, f"{name} is not registered"
    assert TASK_QUEUES[name] == queue
    assert celery_config("redis://x")["task_routes"][name] == {"queue": queue}


def test_every_voicepipe_task_has_limits_late_acks_and_a_declared_queue(registered: dict[str, object]) -> None:
    ours = {n: t for n, t in registered.items() if n.startswith("voicepipe.")}
    assert set(CONTRACT) <= set(ours)
    for name, task in ours.items():
        assert TASK_QUEUES[name] in QUEUES, name
        assert task.time_limit and task.soft_time_limit, name  # type: ignore[attr-defined]
        assert task.soft_time_limit < task.time_limit <= LONGEST_TIME_LIMIT_S, name  # type: ignore[attr-defined]
        assert task.acks_late, name  # type: ignore[attr-defined]


def test_only_json_is_accepted() -> None:
    conf = celery_config("redis://x")
    assert conf["accept_content"] == ["json"]
    assert conf["task_serializer"] == "json"
    assert conf["timezone"] == "UTC" and conf["enable_utc"] is True
    assert conf["broker_transport_options"]["visibility_timeout"] == VISIBILITY_TIMEOUT_S
    # Longer than any task may run plus the longest retry backoff (60 s).
    assert VISIBILITY_TIMEOUT_S > LONGEST_TIME_LIMIT_S + 60
