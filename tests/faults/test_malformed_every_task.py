"""Malformed arguments to the metrics, usage, maintenance, pipeline and retry tasks: InvalidInput, nothing changed.

tests/faults/test_malformed_tasks.py covers the recording and directory tasks; this
file covers every other public task, and a test checks that the two together cover
every name in worker/routes.py. One worker (all three queues), one Redis and one
database serve the whole module; the database is seeded with rows that a wrongly
accepted call would change (a failed artifact and a staff user a retry would reset,
snapshots an aggregation would rewrite, usage rows a rollup would add to), and a
digest of every table must be the same after each task's examples.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from tests.faults.test_malformed_tasks import REFUSED as RECORDING_REFUSED
from tests.support.faults import HOUR, start_worker_proc, this_hour
from tests.support.helpers import RECENT_DAY, Proc, admin_execute, producer, with_database
from tests.support.pipeline import add_artifact, add_user, snapshot
from tests.support.redis_server import OwnRedis
from voicepipe.events.recording import record_events
from voicepipe.metrics.hourly import aggregate_hour
from voicepipe.usage.recording import record_usage
from worker.routes import TASK_QUEUES

pytestmark = pytest.mark.slow

HOUR_START = this_hour() - 3 * HOUR
DAY = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()
ARTIFACT = "7d3b5a3e-4f0e-4c55-9d55-0a6f0d7c1b21"  # replaced by the seeded artifact's id below

# Values no field of their kind accepts.
not_text = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(),
                     st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                          max_size=2))
bad_id = st.one_of(not_text, st.just(""), st.just("   "), st.text(min_size=256, max_size=260).filter(str.strip))


def _not_uuid(s: str) -> bool:
    try:
        uuid.UUID(s)
    except ValueError:
        return True
    return False


bad_uuid = st.one_of(not_text, st.text(max_size=40).filter(_not_uuid))
bad_hour = st.one_of(
    not_text,
    st.text(max_size=12),
    # Naive, or not on the hour, or older than the counter retention (snapshots there are final).
    st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2099, 1, 1)).map(lambda d: d.isoformat()),
    st.integers(1, 59).map(lambda m: (HOUR_START + timedelta(minutes=m)).isoformat()),
    st.integers(40, 5000).map(lambda d: (HOUR_START - timedelta(days=d)).isoformat()),
)
bad_day = st.one_of(not_text, st.text(max_size=12).filter(lambda s: len(s.strip()) != 10),
                    st.sampled_from(["2026-13-01", "2026-02-30", "2026/03/01", "20260301  ", f"{RECENT_DAY}T00"]))
bad_count = st.one_of(st.integers(max_value=-1), st.floats(allow_nan=False).filter(lambda f: not f.is_integer()),
                      st.text(max_size=4), st.booleans(), st.just([1]))
bad_cost = st.one_of(st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False),
                     st.floats(min_value=1e7, allow_nan=False), st.text(max_size=4), st.booleans(), st.none())
unknown_key = st.text(st.characters(categories=["Ll"]), min_size=3, max_size=12)


def mutated(base: dict[str, Any], field: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return values.map(lambda v: {**base, field: v})


def without(base: dict[str, Any], fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.sampled_from(fields).map(lambda f: {k: v for k, v in base.items() if k != f})


def extra(base: dict[str, Any], allowed: tuple[str, ...] = ()) -> st.SearchStrategy[dict[str, Any]]:
    return unknown_key.filter(lambda k: k not in base and k not in allowed).map(lambda k: {**base, k: 1})


NO_ARGUMENTS = st.one_of(extra({}), st.fixed_dictionaries({"window_start": st.just(HOUR_START.isoformat())}))
INGEST: dict[str, Any] = {"organization_id": "org-1", "coach_id": "coach-1", "source_channel": "whatsapp_audio",
                          "media_ref": "s3://notes/1.ogg", "artifact_id": str(uuid.uuid4())}
STAGE: dict[str, Any] = {"artifact_id": ARTIFACT}
RETRY: dict[str, Any] = {"artifact_id": ARTIFACT, "requested_by": "staff-1", "reason": "outage",
                         "request_id": "req-1"}
USAGE: dict[str, Any] = {"id": str(uuid.uuid4()), "occurred_at": f"{RECENT_DAY}T10:00:00+00:00",
                         "organization_id": "org-1", "coach_id": "coach-1", "operation": "parent_summary",
                         "model": "gpt-x", "input_tokens": 100, "cached_tokens": 20, "output_tokens": 50,
                         "cost": 0.01}

stage_call = st.one_of(mutated(STAGE, "artifact_id", bad_uuid), st.just({}), extra(STAGE))
retry_call = st.one_of(
    mutated(RETRY, "artifact_id", bad_uuid),
    mutated(RETRY, "requested_by", st.one_of(bad_id, st.none())),
    mutated(RETRY, "reason", st.one_of(not_text, st.text(min_size=2001, max_size=2005))),
    mutated(RETRY, "request_id", bad_id),
    without(RETRY, ["artifact_id", "requested_by"]),
    extra(RETRY),
)
bad_usage = st.one_of(
    mutated(USAGE, "id", bad_uuid),
    mutated(USAGE, "occurred_at", st.one_of(not_text, st.text(max_size=10),
                                            st.datetimes().map(lambda d: d.isoformat()))),
    mutated(USAGE, "organization_id", st.one_of(bad_id, st.none())),
    mutated(USAGE, "operation", st.one_of(not_text, st.none(), st.just(""))),
    mutated(USAGE, "model", st.one_of(not_text, st.none())),
    mutated(USAGE, "input_tokens", bad_count),
    mutated(USAGE, "output_tokens", bad_count),
    mutated(USAGE, "cached_tokens", st.one_of(bad_count, st.integers(101, 10**6))),  # > input_tokens
    mutated(USAGE, "cost", bad_cost),
    without(USAGE, ["organization_id", "operation", "model", "cost"]),
    extra(USAGE),
)

# task name -> kwargs it must refuse (one line per public task); the recording and
# directory tasks are in tests/faults/test_malformed_tasks.py.
REFUSED: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "voicepipe.metrics.aggregate_hour": st.one_of(mutated({}, "window_start", bad_hour), st.just({}),
                                                  extra({"window_start": HOUR_START.isoformat()})),
    "voicepipe.metrics.aggregate_day": st.one_of(mutated({}, "day", bad_day), st.just({}), extra({"day": DAY})),
    "voicepipe.usage.aggregate_day": st.one_of(mutated({}, "day", bad_day), st.just({}), extra({"day": DAY})),
    "voicepipe.metrics.aggregate_hourly_due": NO_ARGUMENTS,
    "voicepipe.metrics.aggregate_daily_due": NO_ARGUMENTS,
    "voicepipe.usage.aggregate_daily_due": NO_ARGUMENTS,
    "voicepipe.maintenance.cleanup": NO_ARGUMENTS,
    "voicepipe.maintenance.requeue_stalled": NO_ARGUMENTS,
    "voicepipe.alerts.evaluate": NO_ARGUMENTS,
    "voicepipe.pipeline.ingest": st.one_of(
        mutated(INGEST, "organization_id", bad_id), mutated(INGEST, "source_channel", bad_id),
        mutated(INGEST, "coach_id", st.one_of(not_text, st.just(""))),
        mutated(INGEST, "media_ref", st.one_of(not_text, st.text(min_size=2001, max_size=2003))),
        mutated(INGEST, "artifact_id", bad_uuid),
        without(INGEST, ["organization_id", "coach_id", "source_channel"]), extra(INGEST)),
    "voicepipe.pipeline.transcribe": stage_call,
    "voicepipe.pipeline.extract_claims": stage_call,
    "voicepipe.pipeline.resolve_entities": stage_call,
    "voicepipe.pipeline.generate_drafts": stage_call,
    "voicepipe.retry.transcription": retry_call,
    "voicepipe.retry.claims_extraction": retry_call,
    "voicepipe.retry.entity_resolution": retry_call,
    "voicepipe.retry.draft_generation": retry_call,
    "voicepipe.retry.full_pipeline": retry_call,
    "voicepipe.usage.record": bad_usage,
    "voicepipe.usage.record_batch": st.one_of(
        bad_usage.map(lambda u: {"records": [{**USAGE, "id": str(uuid.uuid4())}, u]}),
        mutated({}, "records", st.one_of(st.integers(), st.text(max_size=3), st.dictionaries(st.text(), st.integers()),
                                         st.lists(not_text, min_size=1, max_size=2))),
        st.just({}), extra({"records": []})),
}


def test_every_public_task_has_a_malformed_argument_test() -> None:
    assert not set(REFUSED) & set(RECORDING_REFUSED)
    assert set(REFUSED) | set(RECORDING_REFUSED) == set(TASK_QUEUES)


@pytest.fixture(scope="module")
def stack(pg_admin_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A seeded database, our own Redis and one worker on every queue, for the whole module."""
    folder: Path = tmp_path_factory.mktemp("malformed")
    name = f"vp_t_{uuid.uuid4().hex[:12]}"
    admin_execute(pg_admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    db_url = with_database(pg_admin_url, name)
    engine = create_engine(db_url)
    redis = OwnRedis(folder / "redis")
    redis.start()
    worker: Proc | None = None
    client: Celery | None = None
    try:
        with Session(engine) as session:
            add_user(session, "staff-1")
            artifact = add_artifact(session, status="failed", failed_stage="transcription")
            record_events(session, [{"event_type": "artifact_received", "organization_id": "org-1",
                                     "occurred_at": (HOUR_START + timedelta(minutes=m)).isoformat()}
                                    for m in range(0, 60, 7)])
            aggregate_hour(session, HOUR_START)
            record_usage(session, [{**USAGE, "occurred_at": (HOUR_START - timedelta(days=1)).isoformat()}])
            session.commit()
        worker = start_worker_proc(db_url, redis.url, folder, "malformed", queues="metrics,pipeline,retry,events")
        client = producer(redis.url)
        yield {"engine": engine, "client": client, "worker": worker, "artifact": str(artifact)}
    finally:
        if client is not None:
            client.close()
        if worker is not None:
            worker.stop()
        redis.stop()
        engine.dispose()
        admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def refusal(client: Celery, name: str, *, kwargs: dict[str, Any] | None = None, args: list[Any] | None = None
            ) -> BaseException:
    result = client.send_task(name, kwargs=kwargs, args=args, queue=TASK_QUEUES[name], ignore_result=False)
    with pytest.raises(Exception) as excinfo:
        result.get(timeout=30)
    assert result.state == "FAILURE"
    return excinfo.value


def with_seeded_artifact(kwargs: dict[str, Any], artifact: str) -> dict[str, Any]:
    """Point a valid artifact_id at the seeded failed artifact (so only the mutation is wrong)."""
    if kwargs.get("artifact_id") == ARTIFACT:
        return {**kwargs, "artifact_id": artifact}
    return kwargs


@pytest.mark.parametrize("task_name", sorted(REFUSED))
def test_malformed_arguments_are_refused_with_invalid_input_and_change_nothing(
    task_name: str, stack: dict[str, Any]
) -> None:
    engine: Engine = stack["engine"]
    client: Celery = stack["client"]
    before = snapshot(engine)
    assert before["artifacts"].startswith("1:") and before["metrics_snapshots"].startswith("2:")

    @settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(kwargs=REFUSED[task_name])
    def refused(kwargs: dict[str, Any]) -> None:
        kwargs = with_seeded_artifact(kwargs, stack["artifact"])
        exc = refusal(client, task_name, kwargs=kwargs)
        assert type(exc).__name__ == "InvalidInput", f"{task_name}({kwargs!r}): {exc!r}"
        assert str(exc).strip(), "the error says what was wrong"

    refused()
    exc = refusal(client, task_name, args=[1])  # keyword arguments only
    assert type(exc).__name__ == "InvalidInput" and str(exc).startswith("args:")
    assert snapshot(engine) == before, f"{task_name}: malformed calls changed rows"
    assert "Retry in" not in stack["worker"].log()  # refusals are never retried
