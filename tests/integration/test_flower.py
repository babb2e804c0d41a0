"""Flower as operators use it: a real `celery -A worker flower`, a real worker and broker."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import Artifact, PipelineEvent
from tests.support.helpers import Proc, celery_cmd, service_env, spawn, wait_for
from tests.support.pipeline import FAST, add_artifact, add_user
from tests.support.redis_server import free_port
from voicepipe.settings import PLACEHOLDER_PASSWORD
from worker.config import celery_config

CREDENTIALS = "operator:test-only-password"


def http(
    url: str, auth: str | None = None, body: dict[str, Any] | None = None
) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if data:
        request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


class Flower:
    def __init__(self, proc: Proc, port: int) -> None:
        self.proc, self.port = proc, port
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, auth: str | None = CREDENTIALS) -> tuple[int, str]:
        return http(self.base + path, auth)

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, (status, body)
        return json.loads(body)

    def post(self, path: str, body: dict[str, Any], auth: str | None = CREDENTIALS) -> tuple[int, str]:
        return http(self.base + path, auth, body)


@pytest.fixture
def start_flower(
    db_url: str, broker_url: str, service_data_dir: Path, tmp_path: Path
) -> Iterator[Callable[..., Flower]]:
    procs: list[Proc] = []

    def start(wait: bool = True, **env_extra: str) -> Flower:
        port = free_port()
        env = service_env(db_url, broker_url, service_data_dir, **env_extra)
        proc = spawn(celery_cmd("flower", f"--port={port}", "--address=127.0.0.1"), env,
                     tmp_path / f"flower-{len(procs)}.log", name="flower")
        procs.append(proc)
        flower = Flower(proc, port)
        if wait:
            def up() -> bool:
                if not proc.alive():
                    raise AssertionError(f"flower exited:\n{proc.log()[-3000:]}")
                try:
                    return flower.get("/healthcheck", auth=None)[0] == 200
                except OSError:
                    return False
            wait_for(up, timeout=60, what="flower to answer /healthcheck")
            if "FLOWER_BASIC_AUTH" in env_extra:
                wait_until_flower_sees_events(flower, broker_url)
        return flower

    yield start
    for proc in procs:
        proc.stop()


def wait_until_flower_sees_events(flower: Flower, broker_url: str) -> None:
    """Events sent before Flower subscribes are lost to it: probe until one shows up."""
    app = Celery("probe")
    app.config_from_object(celery_config(broker_url))
    try:
        def seen() -> bool:
            probe = str(uuid.uuid4())
            with app.events.default_dispatcher() as dispatcher:
                dispatcher.send("task-sent", uuid=probe, name="flower-probe")
            deadline = time.monotonic() + 1
            while time.monotonic() < deadline:
                if flower.get(f"/api/task/info/{probe}")[0] == 200:
                    return True
                time.sleep(0.1)
            return False

        wait_for(seen, timeout=30, interval=0, what="flower to receive events")
    finally:
        app.close()


def event(**fields: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "event_type": "artifact_received", "organization_id": "org-1",
            "occurred_at": datetime.now(UTC).isoformat(), **fields}


def test_flower_refuses_to_start_without_flower_basic_auth(start_flower: Callable[..., Flower]) -> None:
    flower = start_flower(wait=False)
    assert flower.proc.popen.wait(60) != 0
    assert "FLOWER_BASIC_AUTH" in flower.proc.log()


def example_flower_auth() -> str:
    """FLOWER_BASIC_AUTH as .env.example ships it."""
    from tests.support.compose import env_example

    return env_example()["FLOWER_BASIC_AUTH"]


@pytest.mark.parametrize(
    "value",
    ["", "   ", "operator:", ":s3cret-pw", "operator:s3cret-pw,:s3cret-pw", "operator:s3cret-pw,admin:",
     "example-placeholder"],
    ids=["empty", "blank", "no-password", "no-user", "one-empty-user", "one-empty-password", "placeholder"],
)
def test_flower_refuses_to_start_with_an_unusable_flower_basic_auth_naming_it_without_echoing_it(
    start_flower: Callable[..., Flower], value: str
) -> None:
    if value == "example-placeholder":
        value = example_flower_auth()
        # The constant the guard refuses is the example's password, not a copy of it.
        assert value.split(":", 1)[1] == PLACEHOLDER_PASSWORD
    flower = start_flower(wait=False, FLOWER_BASIC_AUTH=value)
    assert flower.proc.popen.wait(60) != 0
    log = flower.proc.log()
    assert "Flower refuses to start: FLOWER_BASIC_AUTH" in log
    assert "s3cret-pw" not in log
    with pytest.raises(OSError):  # it never bound its port
        flower.get("/healthcheck", auth=None)


def test_flower_needs_credentials_under_voicepipe_dev_too(start_flower: Callable[..., Flower]) -> None:
    flower = start_flower(wait=False, VOICEPIPE_DEV="1")
    assert flower.proc.popen.wait(60) != 0
    assert "FLOWER_BASIC_AUTH" in flower.proc.log()


def test_flower_refuses_anonymous_and_empty_credential_headers(start_flower: Callable[..., Flower]) -> None:
    flower = start_flower(FLOWER_BASIC_AUTH=CREDENTIALS)
    user = CREDENTIALS.split(":", 1)[0]
    for path in ("/api/workers", "/api/tasks", "/"):
        assert flower.get(path, auth=None)[0] == 401, path
        # `Authorization: Basic ` + base64 of "", ":", "user:" and ":password".
        for empty in ("", ":", f"{user}:", ":" + CREDENTIALS.split(":", 1)[1]):
            assert raw_basic(flower, path, empty) == 401, (path, empty)
    status, _ = flower.post("/api/task/async-apply/voicepipe.events.record", {"kwargs": event()}, auth=None)
    assert status == 401
    assert raw_basic(flower, "/api/workers", CREDENTIALS) == 200


def raw_basic(flower: Flower, path: str, credential: str) -> int:
    """Status of a GET with `Authorization: Basic <base64(credential)>`, even for an empty credential."""
    request = urllib.request.Request(flower.base + path)
    request.add_header("Authorization", "Basic " + base64.b64encode(credential.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_flower_api_refuses_requests_without_or_with_wrong_credentials(
    start_flower: Callable[..., Flower],
) -> None:
    flower = start_flower(FLOWER_BASIC_AUTH=CREDENTIALS)
    for path in ("/api/workers", "/api/tasks", "/api/task/types", "/"):
        assert flower.get(path, auth=None)[0] == 401, path
        assert flower.get(path, auth="operator:wrong")[0] == 401, path
    status, _ = flower.post("/api/task/async-apply/voicepipe.events.record", {"kwargs": event()}, auth=None)
    assert status == 401
    assert flower.get("/api/workers")[0] == 200


def test_an_operator_finds_a_refused_task_by_name_and_state_with_its_error(
    start_flower: Callable[..., Flower], start_worker: Callable[..., Proc], client: Celery
) -> None:
    flower = start_flower(FLOWER_BASIC_AUTH=CREDENTIALS)
    worker = start_worker(queues="pipeline")
    bad = client.send_task("voicepipe.events.record", kwargs={"event_type": "artifact_exploded"},
                           queue="pipeline")
    good = client.send_task("voicepipe.events.record", kwargs=event(), queue="pipeline")

    query = "/api/tasks?taskname=voicepipe.events.record&state=FAILURE"
    failed = wait_for(lambda: flower.json(query), timeout=30, what="the failed task in Flower")
    assert list(failed) == [bad.id]
    assert "InvalidInput" in failed[bad.id]["exception"]
    assert "event_type" in failed[bad.id]["exception"]
    assert failed[bad.id]["worker"] == worker.name
    succeeded = wait_for(lambda: flower.json("/api/tasks?taskname=voicepipe.events.record&state=SUCCESS"),
                         timeout=30, what="the successful task in Flower")
    assert list(succeeded) == [good.id]

    workers = wait_for(lambda: flower.json("/api/workers?refresh=1"), timeout=30, what="workers")
    assert worker.name in workers
    queues = {q["name"] for q in workers[worker.name]["active_queues"]}
    assert queues == {"pipeline"}


def test_a_queued_task_shows_in_flower_with_its_arguments_before_any_worker_runs_it(
    start_flower: Callable[..., Flower], broker_url: str
) -> None:
    flower = start_flower(FLOWER_BASIC_AUTH=CREDENTIALS)
    # A producer with the production config sends task-sent events.
    producer = Celery("prod-config-producer")
    producer.config_from_object(celery_config(broker_url))
    try:
        payload = event(coach_id="coach-queued")
        sent = producer.send_task("voicepipe.events.record", kwargs=payload)
        def shown() -> Any:
            status, body = flower.get(f"/api/task/info/{sent.id}")
            return status == 200 and json.loads(body)

        info = wait_for(shown, timeout=30, what="the queued task in Flower")
    finally:
        producer.close()
    assert info["state"] == "PENDING"
    assert info["name"] == "voicepipe.events.record"
    assert "coach-queued" in info["kwargs"]


def test_an_operator_sends_a_task_through_flowers_api_and_it_runs(
    start_flower: Callable[..., Flower], start_worker: Callable[..., Proc], session: Session
) -> None:
    flower = start_flower(FLOWER_BASIC_AUTH=CREDENTIALS)
    start_worker(queues="events")  # the task's route: Flower's app sends it there
    payload = event(coach_id="coach-from-flower")
    status, body = flower.post("/api/task/async-apply/voicepipe.events.record", {"kwargs": payload})
    assert status == 200, body
    task_id = json.loads(body)["task-id"]

    def recorded() -> bool:
        session.rollback()
        return session.get(PipelineEvent, uuid.UUID(payload["event_id"])) is not None

    wait_for(recorded, timeout=30, what="the event sent through Flower")
    assert session.scalar(select(func.count()).select_from(PipelineEvent)) == 1
    done = wait_for(lambda: flower.json("/api/tasks?taskname=voicepipe.events.record&state=SUCCESS"),
                    timeout=30, what="the task's success in Flower")
    assert task_id in done


def test_an_operator_retries_a_failed_artifact_through_flowers_api(
    start_flower: Callable[..., Flower], start_worker: Callable[..., Proc], session: Session
) -> None:
    flower = start_flower(FLOWER_BASIC_AUTH=CREDENTIALS)
    start_worker(queues="retry,pipeline", **FAST)
    staff = add_user(session, "staff-ops")
    artifact = add_artifact(session, status="failed", failed_stage="transcription")
    status, body = flower.post("/api/task/async-apply/voicepipe.retry.transcription", {"kwargs": {
        "artifact_id": str(artifact), "requested_by": staff, "reason": "from Flower"}})
    assert status == 200, body

    def completed() -> bool:
        session.rollback()
        art = session.get(Artifact, artifact)
        return art is not None and art.status == "completed"

    wait_for(completed, timeout=60, what="the retried artifact to complete")
    initiated = session.execute(select(PipelineEvent).where(
        PipelineEvent.artifact_id == artifact, PipelineEvent.event_type == "retry_initiated")).scalars().all()
    assert [(e.metadata_["requestedBy"], e.metadata_["reason"]) for e in initiated] == [(staff, "from Flower")]
    done = wait_for(lambda: flower.json("/api/tasks?taskname=voicepipe.retry.transcription&state=SUCCESS"),
                    timeout=30, what="the retry's success in Flower")
    assert json.loads(body)["task-id"] in done


def test_prometheus_metrics_ask_for_the_credentials_like_the_ui(
    start_flower: Callable[..., Flower], start_worker: Callable[..., Proc], client: Celery
) -> None:
    flower = start_flower(FLOWER_BASIC_AUTH=CREDENTIALS)
    start_worker(queues="pipeline")
    client.send_task("voicepipe.events.record", kwargs=event(), queue="pipeline")

    for auth in (None, "operator:wrong-password"):
        status, body = flower.get("/metrics", auth=auth)
        assert status in (401, 403), (status, body[:200])
        assert "voicepipe" not in body

    def scraped() -> str | None:
        status, body = flower.get("/metrics")
        return body if status == 200 and 'task="voicepipe.events.record"' in body else None

    body = wait_for(scraped, timeout=30, what="task metrics on /metrics")
    assert "flower_events_total" in body
