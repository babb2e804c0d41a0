"""Dead letters, derived ids, poison guards and broker options, without a broker."""

from __future__ import annotations

import uuid

import pytest

from voicepipe.errors import InvalidInput, SettingsError
from voicepipe.settings import load_settings, reset_settings
from worker.config import celery_config
from worker.declare import VoicepipeTask, check_batch_size
from worker.ids import derived_id, with_id
from worker.routes import TASK_QUEUES

# Every task that writes what a producer or an operator sent; everything else is an
# aggregation or a sweeper, whose next wrapper run redoes the work.
WRITE_TASKS = {
    "voicepipe.events.record", "voicepipe.events.record_batch", "voicepipe.usage.record",
    "voicepipe.usage.record_batch", "voicepipe.pipeline.ingest", "voicepipe.pipeline.transcribe",
    "voicepipe.pipeline.extract_claims", "voicepipe.pipeline.resolve_entities",
    "voicepipe.pipeline.generate_drafts", "voicepipe.directory.upsert_organization",
    "voicepipe.directory.upsert_user", "voicepipe.retry.transcription", "voicepipe.retry.claims_extraction",
    "voicepipe.retry.entity_resolution", "voicepipe.retry.draft_generation", "voicepipe.retry.full_pipeline",
}


@pytest.fixture(scope="module")
def registered() -> dict[str, object]:
    from worker import app

    app.loader.import_default_modules()
    return {name: app.tasks[name] for name in TASK_QUEUES}


def test_write_tasks_park_and_aggregations_do_not(registered: dict[str, object]) -> None:
    parking = {name for name, task in registered.items() if isinstance(task, VoicepipeTask) and task.parks}
    assert parking == WRITE_TASKS
    assert all(isinstance(task, VoicepipeTask) for task in registered.values())


def test_derived_ids_are_fixed_by_task_id_and_position() -> None:
    task_id = "6a0c7f1e-7a53-4c1b-9a0e-3f2d1c0b9a87"
    first = derived_id(task_id, 0)
    assert uuid.UUID(first).version == 5
    assert derived_id(task_id, 0) == first  # a redelivery of the same message
    assert derived_id(task_id, 1) != first  # the next item of a batch
    assert derived_id("another-task", 0) != first  # another message
    # The namespace is part of the contract with already-recorded rows: pinned.
    assert first == str(uuid.uuid5(uuid.UUID("0d6f4c1e-8a53-5b5e-9b7a-6f0c2f1e9a10"), f"{task_id}/0"))


def test_with_id_fills_only_missing_ids() -> None:
    own = {"event_id": "11111111-1111-4111-8111-111111111111", "event_type": "artifact_received"}
    assert with_id(own, "event_id", "t", 0) == own
    assert with_id({"event_type": "x"}, "event_id", "t", 3) == {"event_type": "x", "event_id": derived_id("t", 3)}
    assert with_id({"event_id": None}, "event_id", "t", 0) == {"event_id": derived_id("t", 0)}
    assert with_id("not a mapping", "event_id", "t", 0) == "not a mapping"  # left for validation to refuse
    assert with_id({"event_type": "x"}, "event_id", None, 0) == {"event_type": "x"}  # outside a task


def test_batch_size_above_the_limit_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEPIPE_MAX_BATCH_SIZE", "3")
    reset_settings()
    try:
        check_batch_size("events", [{}] * 3)
        with pytest.raises(InvalidInput, match=r"events: at most 3 items per batch .* got 4"):
            check_batch_size("events", [{}] * 4)
    finally:
        reset_settings()


def test_settings_of_the_retry_budget_and_guards() -> None:
    defaults = load_settings({})
    assert (defaults.task_max_retries, defaults.lock_timeout_ms, defaults.delivery_limit,
            defaults.max_batch_size) == (10, 10_000, 5, 5_000)
    s = load_settings({"VOICEPIPE_TASK_MAX_RETRIES": "1", "VOICEPIPE_LOCK_TIMEOUT_MS": "250",
                       "VOICEPIPE_DELIVERY_LIMIT": "3", "VOICEPIPE_MAX_BATCH_SIZE": "100"})
    assert (s.task_max_retries, s.lock_timeout_ms, s.delivery_limit, s.max_batch_size) == (1, 250, 3, 100)
    for name, bad in (("VOICEPIPE_TASK_MAX_RETRIES", "-1"), ("VOICEPIPE_LOCK_TIMEOUT_MS", "0"),
                      ("VOICEPIPE_DELIVERY_LIMIT", "many"), ("VOICEPIPE_MAX_BATCH_SIZE", "0")):
        with pytest.raises(SettingsError, match=name):
            load_settings({name: bad})


def test_rabbitmq_gets_publisher_confirms_and_a_durable_result_backend() -> None:
    from models import session

    session.configure("postgresql+psycopg://u@db/vp")
    try:
        conf = celery_config("amqp://guest:guest@rabbit:5672/vp")
    finally:
        session.configure(None)
    assert conf["broker_transport_options"]["confirm_publish"] is True
    assert conf["result_backend"] == "db+postgresql+psycopg://u@db/vp"
    assert conf["task_default_delivery_mode"] == "persistent"
    assert all(q.durable for q in conf["task_queues"])
    redis_conf = celery_config("redis://r:6379/0")
    assert redis_conf["result_backend"] == "redis://r:6379/0"
    assert "confirm_publish" not in redis_conf["broker_transport_options"]
    # An explicit RESULT_BACKEND wins on either broker.
    assert celery_config("amqp://x", "redis://r:6379/1")["result_backend"] == "redis://r:6379/1"


def test_a_worker_process_that_grew_too_large_is_replaced() -> None:
    assert celery_config("redis://r:6379/0")["worker_max_memory_per_child"] == 512_000  # KiB
