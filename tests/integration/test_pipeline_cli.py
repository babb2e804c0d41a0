"""`voicepipe retry` and `voicepipe simulate` as subprocesses against a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
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
