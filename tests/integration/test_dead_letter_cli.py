"""`voicepipe dead-letters list|replay|discard` on real PostgreSQL and the test broker (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import DeadLetter
from tests.support.helpers import REPO_ROOT, service_env
from worker.deadletters import park


def cli(db_url: str, broker_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicepipe.cli", "dead-letters", *args], check=False,
                          env=service_env(db_url, broker_url, data_dir), cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)


def park_one(task_id: str) -> int:
    return park(task_name="voicepipe.usage.record", task_id=task_id, queue="pipeline", kwargs={"model": "m"},
                reason="retries_exhausted", error="OperationalError: boom", attempts=11).id


def test_list_discard_and_refusals_of_replay(
    db_url: str, broker_url: str, session: Session, service_data_dir: Path
) -> None:
    kept, dropped = park_one("task-a"), park_one("task-b")
    again = park_one("task-a")  # the same message parked again: one row, counted
    assert again == kept

    listed = cli(db_url, broker_url, service_data_dir, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["task_id"], r["status"], r["times_parked"], r["attempts"]) for r in rows] == [
        (kept, "task-a", "parked", 2, 22), (dropped, "task-b", "parked", 1, 11)]

    done = cli(db_url, broker_url, service_data_dir, "discard", "--id", str(dropped))
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in json.loads(cli(db_url, broker_url, service_data_dir, "list", "--json").stdout)] == [kept]
    assert len(json.loads(cli(db_url, broker_url, service_data_dir, "list", "--all", "--json").stdout)) == 2

    before = [(d.id, d.status, d.replays) for d in session.scalars(select(DeadLetter).order_by(DeadLetter.id))]
    refused = cli(db_url, broker_url, service_data_dir, "replay", "--id", str(dropped))
    assert refused.returncode == 1
    assert "InvalidInput" in refused.stderr and "discarded" in refused.stderr
    unknown = cli(db_url, broker_url, service_data_dir, "replay", "--id", "999999")
    assert unknown.returncode == 1 and "DeadLetterNotFound" in unknown.stderr
    missing = cli(db_url, broker_url, service_data_dir, "discard", "--id", "999999")
    assert missing.returncode == 1 and "DeadLetterNotFound" in missing.stderr
    session.rollback()
    assert [(d.id, d.status, d.replays) for d in session.scalars(select(DeadLetter).order_by(DeadLetter.id))] == before
    assert before == [(kept, "parked", 0), (dropped, "discarded", 0)]
