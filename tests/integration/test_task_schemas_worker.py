"""The task contract through a real worker: schemas vs tasks, the Python producer, the Node example."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from celery.result import AsyncResult
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import AiUsageLog, Artifact, Organization, PipelineEvent, User
from tests.support.helpers import RECENT, REPO_ROOT, Proc, is_amqp, wait_for
from tests.support.pipeline import add_user
from voicepipe.client import Producer
from voicepipe.contract import SCHEMA_DIR

UUID = str(uuid.UUID(int=0x1234))
# Arguments of the tasks whose validation needs the database, with the verdict both the
# schema and the task must give (True: the arguments pass; the task may still refuse
# for another reason, such as PermissionDenied for a user who is not staff).
CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("voicepipe.directory.upsert_organization", {"id": "org-s", "name": "Club"}, True),
    ("voicepipe.directory.upsert_organization", {"id": "org-s"}, False),
    ("voicepipe.directory.upsert_organization", {"id": " ", "name": "Club"}, False),
    ("voicepipe.directory.upsert_organization", {"id": "org-s", "name": "Club", "extra": 1}, False),
    ("voicepipe.directory.upsert_user", {"id": "u-s", "email": "a@b.c", "is_platform_staff": False}, True),
    ("voicepipe.directory.upsert_user", {"id": "u-s2", "email": "a@b.c", "is_platform_staff": False,
                                         "signature": "abc"}, True),  # PermissionDenied: no secret here
    ("voicepipe.directory.upsert_user", {"id": "u-s", "email": "a@b.c", "is_platform_staff": "no"}, False),
    ("voicepipe.directory.upsert_user", {"id": "u-s", "email": "a@b.c", "is_platform_staff": True,
                                         "signature": 5}, False),
    ("voicepipe.pipeline.ingest", {"organization_id": "org-s", "coach_id": None, "source_channel": "app",
                                   "artifact_id": UUID}, True),
    ("voicepipe.pipeline.ingest", {"organization_id": "org-s", "source_channel": "app"}, False),
    ("voicepipe.pipeline.ingest", {"organization_id": "org-s", "coach_id": "c", "source_channel": "app",
                                   "media_ref": "m" * 2001}, False),
    ("voicepipe.pipeline.ingest", {"organization_id": "org-s", "coach_id": "c", "source_channel": "app",
                                   "artifact_id": UUID.replace("-", "")}, False),
    ("voicepipe.pipeline.transcribe", {"artifact_id": str(uuid.uuid4())}, True),
    ("voicepipe.pipeline.transcribe", {"artifact_id": 7}, False),
    ("voicepipe.pipeline.transcribe", {}, False),
    ("voicepipe.retry.full_pipeline", {"artifact_id": UUID, "requested_by": "nobody", "reason": None}, True),
    ("voicepipe.retry.transcription", {"artifact_id": UUID, "requested_by": "nobody",
                                       "request_id": "r-1", "reason": "r" * 2000}, True),
    ("voicepipe.retry.transcription", {"artifact_id": UUID, "requested_by": "nobody", "reason": "r" * 2001}, False),
    ("voicepipe.retry.draft_generation", {"artifact_id": "not-a-uuid", "requested_by": "nobody"}, False),
    ("voicepipe.retry.draft_generation", {"artifact_id": UUID}, False),
    ("voicepipe.events.record", {"event_type": "artifact_received", "occurred_at": RECENT.isoformat()}, True),
    ("voicepipe.events.record", {"event_type": "artifact_received", "occurred_at": "2026-02-30T00:00:00Z"}, False),
    ("voicepipe.usage.record", {"organization_id": "o", "operation": "x", "model": "m", "cost": 1,
                                "input_tokens": None}, False),
]


def schema(name: str) -> dict[str, Any]:
    return dict(json.loads((REPO_ROOT / SCHEMA_DIR / f"{name}.schema.json").read_text()))


def outcome(result: AsyncResult, worker: Proc, timeout: float = 60) -> str:
    """"ok" once the worker ran the task, else the name of the error it stored."""
    def done() -> str | None:
        if result.state == "FAILURE":
            return type(result.result).__name__
        if f"[{result.id}] succeeded" in worker.log():
            return "ok"
        return None

    return str(wait_for(done, timeout=timeout, interval=0.2, what=f"task {result.id}"))


@pytest.fixture
def pipeline_worker(start_worker: Callable[..., Proc]) -> Proc:
    # Simulated stages at 1 % of their duration: an ingested artifact does not hold the worker.
    return start_worker(concurrency=2, VOICEPIPE_SIMULATOR_TIME_SCALE="0.01")


def test_schemas_and_tasks_agree_through_a_real_worker(broker_url: str, db_url: str, pipeline_worker: Proc) -> None:
    backend = "db+" + db_url if is_amqp(broker_url) else None
    with Producer(broker_url, result_backend=backend) as producer:
        sent = [(name, kwargs, accepted, producer.send(name, kwargs)) for name, kwargs, accepted in CASES]
        for name, kwargs, accepted, result in sent:
            assert jsonschema.Draft202012Validator(schema(name)).is_valid(kwargs) is accepted, (name, kwargs)
            answer = outcome(result, pipeline_worker)
            assert (answer != "InvalidInput") is accepted, (name, kwargs, answer)
        assert "PermissionDenied" in {outcome(r, pipeline_worker) for n, _, ok, r in sent if ok and "retry" in n}


def test_the_python_producer_sends_events_usage_batches_and_retries(
    broker_url: str, db_url: str, session: Session, pipeline_worker: Proc,
) -> None:
    add_user(session, "staff-py", staff=True)
    session.commit()
    backend = "db+" + db_url if is_amqp(broker_url) else None
    occurred = RECENT.isoformat()
    with Producer(broker_url, result_backend=backend) as producer:
        producer.send_event({"event_type": "artifact_received", "organization_id": "org-py", "occurred_at": occurred})
        producer.send_events([{"event_type": "artifact_received", "organization_id": "org-py",
                               "occurred_at": occurred} for _ in range(3)])
        producer.send_usage({"organization_id": "org-py", "operation": "transcribe", "model": "m", "cost": 0.5,
                             "occurred_at": occurred})
        producer.send_usage_batch([{"organization_id": "org-py", "operation": "o", "model": "m",
                                    "cost": 0.25, "occurred_at": occurred}] * 2)
        bad = producer.send_event({"event_type": "artifact_exploded"})
        with pytest.raises(Exception) as invalid:
            bad.get(timeout=60)
        assert type(invalid.value).__name__ == "InvalidInput" and "event_type" in str(invalid.value)
        refused = producer.retry("full_pipeline", str(uuid.uuid4()), requested_by="staff-py", reason="test")
        with pytest.raises(Exception) as excinfo:
            refused.get(timeout=60)
        assert type(excinfo.value).__name__ == "ArtifactNotFound"
        with pytest.raises(ValueError, match="not a public voicepipe task"):
            producer.send("voicepipe.nope")

    def rows() -> tuple[int, int]:
        session.rollback()
        return (int(session.scalar(select(func.count()).select_from(PipelineEvent)) or 0),
                int(session.scalar(select(func.count()).select_from(AiUsageLog)) or 0))

    assert wait_for(lambda: rows() == (4, 3) and rows(), timeout=60, what="events and usage rows") == (4, 3)


def test_the_node_example_drives_a_real_worker(
    broker_url: str, session: Session, pipeline_worker: Proc, tmp_path: Path,
) -> None:
    # Redis only (the example reads results from the Redis broker; .ci/run runs this file on Redis).
    example = tmp_path / "node"
    example.mkdir()
    for name in ("package.json", "package-lock.json", "producer.js"):
        shutil.copy(REPO_ROOT / "examples" / "node" / name, example / name)
    npm = shutil.which("npm")
    assert npm, "Node.js 18+ and npm are needed for the Node example (CI installs nodejs)"
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=example, check=True, timeout=300)
    started = time.monotonic()
    done = subprocess.run(["node", "producer.js"], check=False, cwd=example, capture_output=True, text=True,
                          timeout=120,
                          env={"PATH": "/usr/bin:/bin:/usr/local/bin", "BROKER_URL": broker_url,
                               "VOICEPIPE_EXAMPLE_ORG": "org-node", "VOICEPIPE_EXAMPLE_USER": "not-staff"})
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert time.monotonic() - started < 90
    # The retry's named refusal came back to Node: the user is not platform staff.
    assert printed["retry"]["refused"] == "PermissionDenied", printed
    assert "not-staff" in printed["retry"]["message"]
    artifact_id, event_id = uuid.UUID(printed["artifact_id"]), uuid.UUID(printed["event_id"])

    def stored() -> bool:
        session.rollback()
        return (session.get(Organization, "org-node") is not None and session.get(Artifact, artifact_id) is not None
                and session.get(PipelineEvent, event_id) is not None
                and session.get(User, "not-staff") is None)

    wait_for(stored, timeout=60, what="the organization, artifact and event sent from Node")
