"""`voicepipe retry` and `voicepipe simulate` as subprocesses against a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import Artifact, Organization, PipelineEvent, StaffAudit, User
from tests.support.helpers import REPO_ROOT, Proc, service_env, wait_for
from tests.support.pipeline import FAST, add_artifact, add_user, fresh, status_of


def voicepipe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicepipe.cli", *args], check=False, env=env,
                          cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_voicepipe_retry_waits_for_the_outcome_or_names_the_refusal(
    start_worker: Callable[..., Proc], session: Session, db_url: str, broker_url: str, tmp_path: Path
) -> None:
    add_user(session, "staff-1")
    art_id = add_artifact(session, status="failed", failed_stage="draft_generation")
    start_worker(queues="pipeline,retry", **FAST)
    env = service_env(db_url, broker_url, tmp_path)

    refused = voicepipe(env, "retry", str(art_id), "--stage", "full", "--as", "intruder", "--wait")
    assert refused.returncode == 1 and "refused: PermissionDenied: user intruder is unknown" in refused.stderr

    done = voicepipe(env, "retry", str(art_id), "--stage", "draft_generation", "--as", "staff-1",
                     "--reason", "flaky provider", "--wait")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("task ") and '"attempt": 1' in done.stdout
    wait_for(lambda: status_of(session, art_id) == "completed", timeout=60, what="completion")
    history = voicepipe(env, "retry-history", str(art_id))
    assert history.returncode == 0, history.stderr
    refusal, attempt = json.loads(history.stdout)  # in the order they were asked
    assert (refusal["outcome"], refusal["requested_by"], refusal["stage"]) == ("refused", "intruder", "full_pipeline")
    assert refusal["refusal"].startswith("PermissionDenied: user intruder is unknown")
    assert (attempt["attempt"], attempt["requested_by"], attempt["reason"]) == (1, "staff-1", "flaky provider")
    wait_for(lambda: json.loads(voicepipe(env, "retry-history", str(art_id)).stdout)[1]["outcome"] == "succeeded",
             timeout=30, what="the outcome")


def test_voicepipe_simulate_drives_artifacts_and_records_history(
    start_worker: Callable[..., Proc], session: Session, db_url: str, broker_url: str, tmp_path: Path
) -> None:
    start_worker(queues="pipeline,retry", concurrency=2, **FAST)
    env = service_env(db_url, broker_url, tmp_path, **FAST)
    run = voicepipe(env, "simulate", "--artifacts", "4", "--organizations", "2", "--rate", "20",
                    "--seed", "1", "--history-hours", "2")
    assert run.returncode == 0, run.stderr
    assert "done, 4 artifacts ingested" in run.stdout

    def settled() -> bool:
        fresh(session)
        statuses = session.scalars(select(Artifact.status)).all()
        return len(statuses) == 4 and all(s in ("completed", "failed") for s in statuses)

    wait_for(settled, timeout=90, what="4 simulated artifacts to finish")
    assert set(session.scalars(select(Organization.id))) == {"sim-org-01", "sim-org-02"}
    # A real database keeps no simulated staff: without --grant-staff the user is created as
    # non-staff (an unsigned message cannot grant it), and nothing was audited.
    staff = session.get(User, "sim-staff")
    assert staff is not None and not staff.is_platform_staff
    assert session.scalar(select(func.count()).select_from(StaffAudit)) == 0
    # History: events from before the run, for the simulated organizations only.
    history = session.scalar(select(func.count()).select_from(PipelineEvent).where(
        PipelineEvent.artifact_id.not_in(select(Artifact.id))))
    assert history and history > 50
    assert set(session.scalars(select(PipelineEvent.organization_id).distinct())) <= {
        "sim-org-01", "sim-org-02", None}


def test_bulk_retry_run_twice_at_once_retries_each_artifact_once_and_all_complete(
    start_worker: Callable[..., Proc], session: Session, db_url: str, broker_url: str, tmp_path: Path
) -> None:
    add_user(session, "staff-1")
    since = datetime.now(UTC) - timedelta(hours=1)
    failed = {add_artifact(session, status="failed", failed_stage="transcription") for _ in range(150)}
    # Not selected: failed at another stage, or before the range.
    other = add_artifact(session, status="failed", failed_stage="claims_extraction")
    old = add_artifact(session, status="failed", updated_at=since - timedelta(minutes=1))
    env = service_env(db_url, broker_url, tmp_path)
    bulk = ["retry", "--failed-at", "transcription", "--since", since.isoformat(), "--as", "staff-1"]

    dry = voicepipe(env, *bulk, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0].startswith("150 artifacts failed at transcription from ")
    assert {uuid.UUID(line.split()[0]) for line in dry.stdout.splitlines()[1:]} == failed
    assert count_events(session, "retry_initiated") == 0  # a dry run sends nothing

    runs = [subprocess.Popen([sys.executable, "-m", "voicepipe.cli", *bulk, "--rate", "250"], env=env,
                             cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        assert "sent 150 retries" in out
    # The worker starts once both runs have selected and sent: started beside them, it
    # could retry an artifact before the slower run selected it (297 of 300 selected, when this test retried 300).
    start_worker(queues="pipeline,retry", concurrency=2, **FAST)

    def statuses() -> dict[uuid.UUID, str]:
        session.rollback()
        return dict(session.execute(select(Artifact.id, Artifact.status).where(Artifact.id.in_(failed))).all())

    wait_for(lambda: set(statuses().values()) == {"completed"}, timeout=180, what="all 150 completed")
    session.rollback()
    initiated = session.execute(select(PipelineEvent.artifact_id, func.count()).where(
        PipelineEvent.event_type == "retry_initiated").group_by(PipelineEvent.artifact_id)).all()
    assert dict(initiated) == {art: 1 for art in failed}
    assert status_of(session, other) == "failed" and status_of(session, old) == "failed"


def count_events(session: Session, event_type: str) -> int:
    session.rollback()
    return int(session.scalar(select(func.count()).select_from(PipelineEvent).where(
        PipelineEvent.event_type == event_type)) or 0)
